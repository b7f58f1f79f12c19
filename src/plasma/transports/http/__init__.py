"""The HTTP/1.1 side: aiohttp's server with plasma's limits, and the meta endpoints."""
