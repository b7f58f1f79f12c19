"""gRPC on ``h2``: connections, streams, the Events call, health and reflection, and the protos."""
