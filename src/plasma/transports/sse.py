"""Server-Sent Events: the browser transport, on any path with ``Accept: text/event-stream``.

aiohttp parses the request and sends the headers and the first ``retry:`` frame; from then on
the stream's bytes are pre-encoded once per event (SSE frame plus HTTP/1.1 chunk framing) and
written straight to the socket by the hub's flush, one ``write`` per client per loop iteration.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from urllib.parse import parse_qsl

from aiohttp import web
from aiohttp.http import HttpVersion11

from plasma.config import LimitsConfig, SSEConfig
from plasma.events import Encoder, Event
from plasma.hub import Hub
from plasma.metrics import Metrics
from plasma.subscription import InvalidSubscription, parse_types, split_types
from plasma.transports.access import log_request, log_stream_end, remote_address

__all__ = ["SSESubscriber", "SSETransport", "encode_sse", "encode_sse_chunked", "wants_sse"]

log = logging.getLogger("plasma.transports.sse")

_HEARTBEAT = b":heartbeat\n\n"
# How long a server-ended stream may take to drain before the socket is aborted.
_CLOSE_GRACE = 5.0


_BAD_PERCENT = re.compile(r"%(?![0-9A-Fa-f]{2})")


def query_values(query_string: str, name: str) -> list[str]:
    """Every value of ``name`` in a raw query string, strictly decoded.

    Malformed percent-encoding or bytes that are not UTF-8 raise ``InvalidSubscription``
    instead of being guessed at (a lenient decoder would subscribe to a mangled type).
    """
    if _BAD_PERCENT.search(query_string):
        raise InvalidSubscription("malformed percent-encoding in the query string")
    try:
        pairs = parse_qsl(query_string, keep_blank_values=True, errors="strict")
    except UnicodeDecodeError:
        raise InvalidSubscription("query string is not UTF-8") from None
    return [value for key, value in pairs if key == name]


def _last_event_id(request: web.BaseRequest) -> str | None:
    """The standard ``Last-Event-ID`` header (browsers), else the ``lastEventId`` parameter."""
    header = request.headers.get("Last-Event-ID")
    if header:
        return header
    values = query_values(request.query_string, "lastEventId")
    return values[0] if values and values[0] else None


def encode_sse(event: Event) -> bytes:
    """The SSE frame of an event: its hub id and the whole event as compact JSON."""
    frame = b"id: " + event.id.encode() + b"\ndata: " + event.body + b"\n\n"
    if event.name:  # a signal (gap): named, so plain onmessage handlers never see it
        return b"event: " + event.name.encode() + b"\n" + frame
    return frame


def _chunk(frame: bytes) -> bytes:
    return b"%x\r\n%b\r\n" % (len(frame), frame)


def encode_sse_chunked(event: Event) -> bytes:
    """The SSE frame wrapped as one HTTP/1.1 chunk (what every HTTP/1.1 client gets)."""
    return _chunk(event.encode(encode_sse))


def wants_sse(accept: str) -> bool:
    """Whether an ``Accept`` header names ``text/event-stream`` (parameters and lists allowed)."""
    accept = accept.lower()
    if "text/event-stream" not in accept:
        return False
    return any(
        part.split(";", 1)[0].strip().lower() == "text/event-stream" for part in accept.split(",")
    )


class SSESubscriber:
    """One SSE stream: its socket, what is queued for it, and how it ended."""

    __slots__ = (
        "_chunked",
        "_goodbye",
        "_hub",
        "_limit",
        "_metrics",
        "_pending",
        "close_reason",
        "done",
        "encoder",
        "events_sent",
        "last_seq",
        "transport",
    )

    def __init__(
        self,
        transport: asyncio.Transport,
        *,
        chunked: bool,
        hub: Hub,
        metrics: Metrics,
        limit: int,
        goodbye: bytes,
    ) -> None:
        self.transport = transport
        self._goodbye = _chunk(goodbye) if chunked else goodbye
        self.encoder: Encoder = encode_sse_chunked if chunked else encode_sse
        self._chunked = chunked
        self.last_seq = 0
        self.events_sent = 0
        self._pending: list[bytes] = []
        self._hub = hub
        self._metrics = metrics
        self._limit = limit
        self.close_reason = ""
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def push(self, data: bytes) -> SSESubscriber | None:
        pending = self._pending
        pending.append(data)
        self.events_sent += 1
        return self if len(pending) == 1 else None

    def push_comment(self, frame: bytes) -> None:
        """Queue a frame that is not an event (a heartbeat); flushed with the next batch."""
        self._pending.append(_chunk(frame) if self._chunked else frame)
        if len(self._pending) == 1:
            self._hub.mark_dirty(self)

    def flush(self) -> None:
        pending = self._pending
        if not pending:
            return
        transport = self.transport
        if self.done.done() or transport.is_closing():
            self._metrics.events_dropped += len(pending)
            pending.clear()
            return
        data = pending[0] if len(pending) == 1 else b"".join(pending)
        pending.clear()
        transport.write(data)
        self._metrics.bytes_written += len(data)
        # A client that does not read fills its buffer: cut it, never wait for it. It gets a
        # retry: frame after what it has not read yet, so it reconnects and resumes from history.
        if transport.get_write_buffer_size() > self._limit:
            transport.write(self._goodbye)
            self.close("slow")

    def close(self, reason: str) -> None:
        """End the stream (the handler returns and the response is finished); idempotent."""
        if not self.done.done():
            self.close_reason = reason
            self.done.set_result(None)


class SSETransport:
    """Accepts SSE requests, registers their subscribers with the hub, and sends heartbeats."""

    def __init__(
        self,
        hub: Hub,
        config: SSEConfig,
        *,
        origin: str,
        metrics: Metrics,
        client_buffer: int,
        limits: LimitsConfig | None = None,
    ) -> None:
        self._hub = hub
        self._limits = limits or LimitsConfig()
        self._config = config
        self._origin = origin
        self._metrics = metrics
        self._client_buffer = client_buffer
        self._subscribers: set[SSESubscriber] = set()
        self._heartbeat_task: asyncio.Task[None] | None = None
        self._retry_frame = b"retry: %d\n\n" % config.retry_ms

    def start(self) -> None:
        self._heartbeat_task = asyncio.get_running_loop().create_task(self._heartbeat())

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(self._config.heartbeat)
            for sub in self._subscribers:
                sub.push_comment(_HEARTBEAT)

    def _headers(self) -> dict[str, str]:
        headers = {
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-cache",
            "Connection": "keep-alive",
            "X-Accel-Buffering": "no",
        }
        if self._origin:
            headers["Access-Control-Allow-Origin"] = self._origin
        return headers

    def requested_types(self, request: web.BaseRequest) -> tuple[str, ...]:
        """The types named by the event query parameter; raise ``InvalidSubscription``."""
        name = self._config.event_query
        values = query_values(request.query_string, name)
        if not values:
            raise InvalidSubscription(f"missing query parameter {name!r}")
        return parse_types(
            (t for value in values for t in split_types(value)),
            max_types=self._limits.max_types,
            max_length=self._limits.max_type_length,
        )

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        started = time.monotonic()
        try:
            types = self.requested_types(request)
            last_event_id = _last_event_id(request)
        except InvalidSubscription as exc:
            headers = {"Access-Control-Allow-Origin": self._origin} if self._origin else None
            log_request(request, 400, started)
            return web.Response(status=400, text=f"{exc}\n", headers=headers)
        if self._metrics.connection_count >= self._limits.max_connections:
            log_request(request, 503, started)
            return web.Response(
                status=503,
                text="too many connections; retry later\n",
                headers={"Retry-After": str(max(1, self._config.retry_ms // 1000))},
            )
        response = web.StreamResponse(status=200, headers=self._headers())
        await response.prepare(request)
        transport = request.transport
        if transport is None:  # the client left before we answered
            return response
        sub = SSESubscriber(
            transport,
            chunked=request.version >= HttpVersion11,
            hub=self._hub,
            metrics=self._metrics,
            limit=self._client_buffer,
            goodbye=self._retry_frame,
        )
        # Sent at once, so clients know they are subscribed before the first event.
        await response.write(self._retry_frame)
        self._subscribers.add(sub)
        self._metrics.connection_opened("sse")
        try:
            await self._hub.resume(sub, types, last_event_id)
            await sub.done
        except asyncio.CancelledError:
            sub.close("client")
            raise
        finally:
            self._hub.unsubscribe(sub)
            self._subscribers.discard(sub)
            self._metrics.connection_closed("sse", sub.close_reason or "client")
            if sub.close_reason == "slow":
                self._metrics.clients_dropped["slow"] += 1
                log.warning(
                    "dropped a slow SSE client",
                    extra={"remote": remote_address(request), "limit": self._client_buffer},
                )
            if sub.close_reason:
                # End the connection after this response; a client that never reads it is cut.
                response.force_close()
                asyncio.get_running_loop().call_later(_CLOSE_GRACE, transport.abort)
            log_stream_end(
                transport="sse",
                remote=remote_address(request),
                path=request.path,
                types=types,
                started=started,
                events=sub.events_sent,
                reason=sub.close_reason or "client",
            )
        return response

    def preflight(self, request: web.BaseRequest) -> web.Response:
        """Answer a CORS preflight (``OPTIONS``) for a cross-origin ``EventSource``."""
        headers = {
            "Access-Control-Allow-Methods": "GET, HEAD, OPTIONS",
            "Access-Control-Allow-Headers": "Accept, Cache-Control, Last-Event-ID",
            "Access-Control-Max-Age": "600",
            "Allow": "GET, HEAD, OPTIONS",
        }
        if self._origin:
            headers["Access-Control-Allow-Origin"] = self._origin
        log_request(request, 204, time.monotonic())
        return web.Response(status=204, headers=headers)

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

    @property
    def stream_count(self) -> int:
        return len(self._subscribers)
