"""Server-Sent Events: the browser transport, on any path with ``Accept: text/event-stream``.

Most streams are the first request of a fresh connection and are served by the lean
``SSEConnection`` protocol (``connection.py``); a stream requested on a connection aiohttp
already serves (keep-alive after a page load), or a request that needs an error answer, goes
through the aiohttp handler (``handler.py``). Both validate the request, register, count, log
and end their streams here, and take every byte of the response head from ``wire.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from plasma.buffers import ClientBuffers
from plasma.config import LimitsConfig, SSEConfig, setting_default
from plasma.hub import Flushable, Hub
from plasma.metrics import Metrics
from plasma.subscription import InvalidSubscription, parse_types, split_types
from plasma.transports.access import log_stream_end
from plasma.transports.sse.subscriber import SSESubscriber
from plasma.transports.sse.wire import HEARTBEAT, StreamHead, query_values

__all__ = ["SSETransport", "abort_after_grace"]

log = logging.getLogger("plasma.transports.sse")

# How long a server-ended stream may take to drain before the socket is aborted.
_CLOSE_GRACE = 5.0


def abort_after_grace(transport: asyncio.Transport) -> None:
    """Abort ``transport`` if it is still open a few seconds from now (a client not reading)."""
    asyncio.get_running_loop().call_later(_CLOSE_GRACE, transport.abort)


class SSETransport:
    """Validates SSE requests, registers their subscribers with the hub, sends heartbeats."""

    def __init__(
        self,
        hub: Hub,
        config: SSEConfig,
        *,
        origin: str,
        metrics: Metrics,
        client_buffer: int,
        limits: LimitsConfig | None = None,
        buffers: ClientBuffers | None = None,
    ) -> None:
        self.hub = hub
        self.metrics = metrics
        self.client_buffer = client_buffer
        self.buffers = buffers or ClientBuffers(
            setting_default("PLASMA_MAX_BUFFERED_BYTES"), metrics
        )
        self.limits = limits or LimitsConfig()
        self.origin = origin
        self.head = StreamHead(retry_ms=config.retry_ms, origin=origin)
        self.retry_after = str(max(1, config.retry_ms // 1000))
        """``Retry-After`` seconds of a refusal at capacity: the client's own retry delay."""
        self._config = config
        self._subscribers: set[SSESubscriber] = set()
        self.buffers.watch(lambda: self._subscribers)
        self._heartbeat_task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._heartbeat_task = asyncio.get_running_loop().create_task(self._heartbeat())

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(self._config.heartbeat)
            for sub in self._subscribers:
                sub.push_comment(HEARTBEAT)

    # --- what a subscriber asks of its transport ---------------------------------------------

    def goodbye(self, chunked: bool) -> bytes:
        """The last frame of a stream the server ends: ``retry:``, so the client comes back."""
        return self.head.retry_frame(chunked)

    def mark_dirty(self, target: Flushable) -> None:
        self.hub.mark_dirty(target)

    # --- what both ways of serving a stream share ----------------------------------------------

    def parse_request(
        self, query_string: str, last_event_id: str | None
    ) -> tuple[tuple[str, ...], str | None]:
        """The requested types and resume id; raise ``InvalidSubscription``."""
        name = self._config.event_query
        values = query_values(query_string, name)
        if not values:
            raise InvalidSubscription(f"missing query parameter {name!r}")
        types = parse_types(
            (t for value in values for t in split_types(value)),
            max_types=self.limits.max_types,
            max_length=self.limits.max_type_length,
        )
        if not last_event_id:
            resume = query_values(query_string, "lastEventId")
            last_event_id = resume[0] if resume else None
        return types, last_event_id or None

    def at_capacity(self) -> bool:
        return self.metrics.connection_count >= self.limits.max_connections

    def begin_stream(self, sub: SSESubscriber) -> None:
        """Count a stream whose response has started; ``stream_ended`` undoes it."""
        self._subscribers.add(sub)
        self.metrics.connection_opened("sse")

    def stream_ended(self, sub: SSESubscriber) -> None:
        """Unsubscribe, count and log a stream that is over, whoever ended it."""
        self.hub.unsubscribe(sub)
        self._subscribers.discard(sub)
        self.buffers.release(sub)
        reason = sub.close_reason or "client"
        self.metrics.connection_closed("sse", reason)
        if reason in ("slow", "memory"):  # ClientBuffers logs a round of memory cuts
            self.metrics.clients_dropped[reason] += 1
        if reason == "slow":
            log.warning(
                "dropped a slow SSE client",
                extra={"remote": sub.remote, "limit": self.client_buffer},
            )
        log_stream_end(
            transport="sse",
            remote=sub.remote,
            path=sub.path,
            types=sub.types,
            started=sub.started,
            events=sub.events_sent,
            reason=reason,
        )

    # --- lifecycle ------------------------------------------------------------------------------

    def close_all(self, reason: str) -> None:
        """End every stream (shutdown)."""
        for sub in list(self._subscribers):
            sub.close(reason)

    async def aclose(self) -> None:
        if self._heartbeat_task is not None:
            self._heartbeat_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._heartbeat_task
        self.close_all("shutdown")
