"""HTTP routes. Versioned routers carry their full prefix themselves (not via ``include_router``),
so the route template the metrics middleware sees is the path a client sees."""

API_V1 = "/api/v1"
