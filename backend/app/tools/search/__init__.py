"""Web search providers and the router that chooses a Tavily key for them."""
