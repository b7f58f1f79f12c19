"""Transports: how events leave. SSE and gRPC streams and the meta endpoints, on one listener."""
