"""gRPC: the native-app transport, on the same port as SSE (HTTP/2 preface or ALPN ``h2``).

The listener hands each HTTP/2 connection to ``GrpcTransport.protocol_factory()``; the rest is
plasma's own thin layer on ``h2`` (``grpc_connection``), with one handler per method path:
``/proto.StreamService/Events`` (``grpc_events``), the standard health service and server
reflection (``grpc_services``). Messages come from ``grpc_proto``; grpcio is not needed.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

from plasma.config import LimitsConfig
from plasma.hub import Hub
from plasma.metrics import Metrics
from plasma.sources.base import Source
from plasma.transports.grpc.connection import GrpcConnection
from plasma.transports.grpc.events import EVENTS_PATH, EventsCall, encode_payload
from plasma.transports.grpc.services import HealthService, ReflectionCall
from plasma.transports.grpc.stream import HandlerFactory, ServerStream

__all__ = ["GrpcTransport", "encode_payload"]

_CLOSE_TIMEOUT = 1.0


class GrpcTransport:
    """Owns every gRPC connection and routes each call to its handler by path."""

    def __init__(
        self,
        hub: Hub,
        metrics: Metrics,
        source: Source,
        *,
        client_buffer: int,
        limits: LimitsConfig | None = None,
    ) -> None:
        self.hub = hub
        self.limits = limits or LimitsConfig()
        self.metrics = metrics
        self.source = source
        self.client_buffer = client_buffer
        self.connections: set[GrpcConnection] = set()
        self.health = HealthService(self)
        self.routes: dict[bytes, HandlerFactory] = {
            EVENTS_PATH.encode(): self.events_factory,
            b"/grpc.health.v1.Health/Check": self.health.check,
            b"/grpc.health.v1.Health/List": self.health.list,
            b"/grpc.health.v1.Health/Watch": self.health.watch,
            b"/grpc.reflection.v1.ServerReflection/ServerReflectionInfo": ReflectionCall,
            b"/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo": ReflectionCall,
        }

    def events_factory(self, stream: ServerStream) -> EventsCall:
        return EventsCall(stream, self)

    def at_capacity(self) -> bool:
        """Whether a new stream would pass ``PLASMA_MAX_CONNECTIONS`` (SSE and gRPC together)."""
        return self.metrics.connection_count >= self.limits.max_connections

    def protocol_factory(self) -> asyncio.Protocol:
        """A protocol for one HTTP/2 connection whose preface the listener has seen (or will)."""
        return GrpcConnection(self)

    def close_all(self, reason: str) -> None:
        """End every call (status UNAVAILABLE) and send GOAWAY on every connection."""
        for conn in list(self.connections):
            conn.shutdown(reason)

    async def aclose(self) -> None:
        """Close every connection; bounded by about a second, then abort what is left."""
        await self.health.aclose()
        self.close_all("shutdown")
        deadline = time.monotonic() + _CLOSE_TIMEOUT
        while self.connections and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        for conn in list(self.connections):
            with contextlib.suppress(Exception):
                conn.abort()

    @property
    def stream_count(self) -> int:
        return self.metrics.connections["grpc"]
