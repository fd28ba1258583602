"""Outside services the workflow calls (LLM, web search): real HTTP clients and honest offline ones."""
