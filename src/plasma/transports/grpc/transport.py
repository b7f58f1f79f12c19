"""gRPC: the native-app transport, on the same port as SSE (HTTP/2 preface or ALPN ``h2``).

The listener hands each HTTP/2 connection to ``GrpcTransport.protocol_factory()``; the rest is
plasma's own thin layer on ``h2`` (``connection.py``, ``stream.py``), with one handler per
method path: ``/proto.StreamService/Events`` (``events.py``), the standard health service and
server reflection (``services.py``). Messages come from ``proto.py``; grpcio is not needed.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass

from plasma.auth.authorizer import Authorizer
from plasma.buffers import ClientBuffers
from plasma.config import LimitsConfig, setting_default
from plasma.health import HealthMonitor
from plasma.hub import Flushable, Hub
from plasma.metrics import Metrics
from plasma.transports.grpc import proto
from plasma.transports.grpc.connection import GrpcConnection
from plasma.transports.grpc.events import EVENTS_PATH, EventsCall
from plasma.transports.grpc.services import HealthService, ReflectionCall
from plasma.transports.grpc.stream import (
    CallHandler,
    HandlerFactory,
    Metadata,
    ServerStream,
    Status,
)

__all__ = ["GrpcTransport"]

_CLOSE_TIMEOUT = 1.0


CallFactory = Callable[[ServerStream, Metadata], CallHandler]
"""Makes the handler of a call from its stream and metadata."""


def _plain(factory: HandlerFactory) -> CallFactory:
    """A call whose handler does not read the metadata."""
    return lambda stream, _metadata: factory(stream)


@dataclass(frozen=True, slots=True)
class _Route:
    factory: CallFactory
    counted: bool = False
    """An event stream: counts against ``PLASMA_MAX_CONNECTIONS`` and is refused at capacity."""


class GrpcTransport:
    """Owns every gRPC connection and routes each call to its handler by path."""

    def __init__(
        self,
        hub: Hub,
        metrics: Metrics,
        health: HealthMonitor,
        *,
        client_buffer: int,
        limits: LimitsConfig | None = None,
        authorizer: Authorizer | None = None,
        buffers: ClientBuffers | None = None,
    ) -> None:
        self.hub = hub
        self.authorizer = authorizer or Authorizer(None)
        self.limits = limits or LimitsConfig()
        self.metrics = metrics
        self.client_buffer = client_buffer
        self.buffers = buffers or ClientBuffers(
            setting_default("PLASMA_MAX_BUFFERED_BYTES"), metrics
        )
        self.connections: set[GrpcConnection] = set()
        self.buffers.watch(lambda: self.connections)
        self.health = HealthService(health)
        self._routes: dict[bytes, _Route] = {
            EVENTS_PATH.encode(): _Route(self._events, counted=True),
            b"/grpc.health.v1.Health/Check": _Route(_plain(self.health.check)),
            b"/grpc.health.v1.Health/List": _Route(_plain(self.health.list)),
            b"/grpc.health.v1.Health/Watch": _Route(_plain(self.health.watch)),
            b"/grpc.reflection.v1.ServerReflection/ServerReflectionInfo": _Route(
                _plain(ReflectionCall)
            ),
            b"/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo": _Route(
                _plain(ReflectionCall)
            ),
        }
        proto.load_all()  # here, not at import, and not on the first client's call

    def _events(self, stream: ServerStream, metadata: Metadata) -> EventsCall:
        authorization = metadata.get(b"authorization")
        return EventsCall(
            stream,
            self.hub,
            self.metrics,
            self.limits,
            authorizer=self.authorizer,
            authorization=authorization.decode("latin-1") if authorization is not None else None,
        )

    def at_capacity(self) -> bool:
        """Whether a new stream would pass ``PLASMA_MAX_CONNECTIONS`` (SSE and gRPC together)."""
        return self.metrics.connection_count >= self.limits.max_connections

    def protocol_factory(self) -> asyncio.Protocol:
        """A protocol for one HTTP/2 connection whose preface the listener has seen (or will)."""
        return GrpcConnection(self)

    # --- what a connection asks of its host (``ConnectionHost``) -----------------------------

    def open_call(
        self, stream: ServerStream, path: bytes, metadata: Metadata
    ) -> CallHandler | None:
        route = self._routes.get(path)
        if route is None:
            stream.finish(Status.UNIMPLEMENTED, f"unknown method {stream.path}")
            return None
        if route.counted and self.at_capacity():
            stream.finish(Status.RESOURCE_EXHAUSTED, "too many connections; retry later")
            return None
        return route.factory(stream, metadata)

    def mark_dirty(self, target: Flushable) -> None:
        self.hub.mark_dirty(target)

    def add_connection(self, conn: GrpcConnection) -> None:
        self.connections.add(conn)

    def discard_connection(self, conn: GrpcConnection) -> None:
        self.connections.discard(conn)

    # --- lifecycle ------------------------------------------------------------------------------

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
