"""gRPC placeholder: replaced by the h2-based transport."""

from __future__ import annotations

import asyncio

from plasma.hub import Hub
from plasma.metrics import Metrics
from plasma.sources.base import Source

__all__ = ["GrpcTransport"]


class GrpcTransport:
    def __init__(self, hub: Hub, metrics: Metrics, source: Source, *, client_buffer: int) -> None:
        self._hub = hub

    def protocol_factory(self) -> asyncio.Protocol:
        raise NotImplementedError

    def close_all(self, reason: str) -> None:
        pass

    async def aclose(self) -> None:
        pass
