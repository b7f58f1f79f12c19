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
import time

from plasma.auth.authorizer import Authorizer
from plasma.auth.credentials import QUERY_PARAMETER, request_token
from plasma.auth.errors import AuthError
from plasma.auth.policy import Identity
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


# Bytes a request head may take beyond its configured limits (line ends, "GET", " HTTP/1.1").
_HEAD_MARGIN = 1024


def head_limit(limits: LimitsConfig) -> int:
    """The most bytes a complete request head can take within ``limits``."""
    line = limits.max_header_size + 4  # ": " and CRLF
    return limits.max_request_line + limits.max_headers * line + _HEAD_MARGIN


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
        authorizer: Authorizer | None = None,
        buffers: ClientBuffers | None = None,
    ) -> None:
        self.hub = hub
        self.metrics = metrics
        self.client_buffer = client_buffer
        self.buffers = buffers or ClientBuffers(
            setting_default("PLASMA_MAX_BUFFERED_BYTES"), metrics
        )
        self.limits = limits or LimitsConfig()
        self.head_limit = head_limit(self.limits)
        """Bytes a request head may take on the lean path before it is refused."""
        self.origin = origin
        self.authorizer = authorizer or Authorizer(None)
        # A cookie-carrying EventSource from PLASMA_ORIGIN may read its answer only when the
        # server allows credentials; only for one named origin, never for "*".
        self.allow_credentials = self.authorizer.enabled and origin not in ("", "*")
        self.head = StreamHead(
            retry_ms=config.retry_ms, origin=origin, credentials=self.allow_credentials
        )
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

    def unsubscribe(self, sub: SSESubscriber) -> None:
        self.hub.unsubscribe(sub)

    # --- what both ways of serving a stream share ----------------------------------------------

    def parse_request(
        self, query_string: str, last_event_id: str | None
    ) -> tuple[tuple[str, ...], str | None]:
        """The requested types and resume id; raise ``InvalidSubscription``."""
        name = self._config.event_query
        values = query_values(query_string, name)
        if not values:
            raise InvalidSubscription(f"missing query parameter {name!r}")
        # Counted as sent, before repeats are dropped: a list of one type 50,000 times costs
        # as much to check as 50,000 types.
        max_types = self.limits.max_types
        if sum(value.count(",") + 1 for value in values) > max_types:
            raise InvalidSubscription(f"more than {max_types} event types")
        types = parse_types(
            (t for value in values for t in split_types(value)),
            max_types=self.limits.max_types,
            max_length=self.limits.max_type_length,
        )
        if not last_event_id:
            resume = query_values(query_string, "lastEventId")
            last_event_id = resume[0] if resume else None
        return types, last_event_id or None

    def cors_headers(self) -> dict[str, str]:
        """The CORS headers of every SSE answer, refusals included (so a page can read why)."""
        headers: dict[str, str] = {}
        if self.origin:
            headers["Access-Control-Allow-Origin"] = self.origin
        if self.allow_credentials:
            headers["Access-Control-Allow-Credentials"] = "true"
        return headers

    def authorize(
        self,
        types: tuple[str, ...],
        *,
        authorization: str | None,
        cookie: str | None,
        query_string: str,
        count: bool = True,
    ) -> Identity | None:
        """Whether the request's token may read every one of ``types``; raise ``AuthError``.

        ``None`` when access control is off or no token was needed (public types). The query
        string was already checked by ``parse_request``.
        """
        authorizer = self.authorizer
        if not authorizer.enabled:
            return None
        try:
            token = request_token(
                authorization=authorization,
                query_tokens=query_values(query_string, QUERY_PARAMETER),
                cookie_header=cookie,
                cookie_name=authorizer.cookie,
            )
        except AuthError as exc:
            raise (authorizer.refused(exc) if count else exc) from None
        return authorizer.check_subscribe(token, types, count=count)

    def at_capacity(self) -> bool:
        return self.metrics.connection_count >= self.limits.max_connections

    def begin_stream(self, sub: SSESubscriber, identity: Identity | None = None) -> None:
        """Count a stream whose response has started; ``stream_ended`` undoes it.

        A stream opened with a token that expires gets one timer, which ends it then.
        """
        self._subscribers.add(sub)
        self.metrics.connection_opened("sse")
        if identity is not None and identity.expires_at is not None:
            delay = max(0.0, identity.expires_at - time.time())
            sub.expiry = asyncio.get_running_loop().call_later(delay, self._expired, sub)

    def _expired(self, sub: SSESubscriber) -> None:
        """The stream's token expired: write what is queued, then ``retry:``, and end it."""
        sub.expiry = None
        if sub.close_reason or sub.transport.is_closing():
            return
        sub.flush()
        if sub.close_reason:  # the flush cut a slow client
            return
        sub.transport.write(self.goodbye(sub.chunked))
        sub.close("expired")

    def stream_ended(self, sub: SSESubscriber) -> None:
        """Unsubscribe, count and log a stream that is over, whoever ended it."""
        if sub.expiry is not None:
            sub.expiry.cancel()
            sub.expiry = None
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
            method="GET",
            path=sub.path,
            user_agent=sub.user_agent,
            types=sub.types,
            started=sub.started,
            events=sub.events_sent,
            reason=reason,
            subject=sub.subject,
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
