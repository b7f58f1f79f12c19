"""Server-Sent Events: the browser transport, on any path with ``Accept: text/event-stream``.

A stream's bytes are pre-encoded once per event (SSE frame plus HTTP/1.1 chunk framing) and
written straight to the socket by the hub's flush, one ``write`` per client per loop iteration.
Most streams are the first request of a fresh connection and are served by the lean
``SSEConnection`` protocol (``sse_connection.py``); a stream requested on a connection aiohttp
already serves (keep-alive after a page load), or a request that needs an error answer, goes
through ``SSETransport.handle``. Both end up as an ``SSESubscriber`` registered here.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
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

__all__ = [
    "SSESubscriber",
    "SSETransport",
    "encode_sse",
    "encode_sse_chunked",
    "query_values",
    "wants_sse",
]

log = logging.getLogger("plasma.transports.sse")

_HEARTBEAT = b":heartbeat\n\n"
_LAST_CHUNK = b"0\r\n\r\n"
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
    return any(part.split(";", 1)[0].strip() == "text/event-stream" for part in accept.split(","))


class SSESubscriber:
    """One SSE stream as the hub sees it: its socket and what is queued for it.

    ``close`` is the subclass's: the aiohttp path resolves a future its handler awaits, the
    lean path ends the response on the socket itself.
    """

    # The fan-out reads and writes the first six for every delivery, so they come first and
    # share one or two cache lines (slots are laid out in this order). At 100 spaced events/s
    # to 1,000 subscribers the caches are cold at every event, and the publish pass cost
    # ~400 ns a subscriber while it also touched a list per subscriber (docs/benchmarks.md).
    __slots__ = (  # noqa: RUF023 - hot first, see above
        "last_seq",
        "encoder",
        "events_sent",
        "_first",
        "_more",
        "transport",
        "close_reason",
        "_owner",
        "chunked",
    )

    def __init__(self, owner: SSETransport, transport: asyncio.Transport, chunked: bool) -> None:
        self.last_seq = 0
        self.encoder: Encoder = encode_sse_chunked if chunked else encode_sse
        self.events_sent = 0
        # What waits for the next flush: the first frame, then any more (a burst). Most
        # flushes carry one event, and most streams never see a burst: no list until then.
        self._first: bytes | None = None
        self._more: list[bytes] | None = None
        self.transport = transport
        self.close_reason = ""
        self._owner = owner
        self.chunked = chunked

    def push(self, data: bytes) -> SSESubscriber | None:
        self.events_sent += 1
        if self._first is None:
            self._first = data
            return self
        self._queue_more(data)
        return None

    def push_comment(self, frame: bytes) -> None:
        """Queue a frame that is not an event (a heartbeat); flushed with the next batch."""
        if self.chunked:
            frame = _chunk(frame)
        if self._first is None:
            self._first = frame
            self._owner.hub.mark_dirty(self)
        else:
            self._queue_more(frame)

    def _queue_more(self, data: bytes) -> None:
        if self._more is None:
            self._more = [data]
        else:
            self._more.append(data)

    def flush(self) -> None:
        data = self._first
        if data is None:
            return
        self._first = None
        more = self._more
        transport = self.transport
        metrics = self._owner.metrics
        if self.close_reason or transport.is_closing():
            metrics.events_dropped += 1 + len(more) if more else 1
            if more:
                more.clear()
            return
        if more:
            data = b"".join((data, *more))
            more.clear()
        transport.write(data)
        metrics.bytes_written += len(data)
        # A client that does not read fills its buffer: cut it, never wait for it. It gets a
        # retry: frame after what it has not read yet, so it reconnects and resumes from history.
        if transport.get_write_buffer_size() > self._owner.client_buffer:
            transport.write(self._owner.goodbye(self.chunked))
            self.close("slow")

    def close(self, reason: str) -> None:
        """End the stream; idempotent."""
        raise NotImplementedError


class _HandlerSubscriber(SSESubscriber):
    """A stream served by an aiohttp handler, which awaits ``done``."""

    __slots__ = ("done",)

    def __init__(self, owner: SSETransport, transport: asyncio.Transport, chunked: bool) -> None:
        super().__init__(owner, transport, chunked)
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def close(self, reason: str) -> None:
        if not self.done.done():
            self.close_reason = reason
            self.done.set_result(None)


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
    ) -> None:
        self.hub = hub
        self.metrics = metrics
        self.client_buffer = client_buffer
        self.limits = limits or LimitsConfig()
        self._config = config
        self._origin = origin
        self._subscribers: set[SSESubscriber] = set()
        self._heartbeat_task: asyncio.Task[None] | None = None
        self._retry_frame = b"retry: %d\n\n" % config.retry_ms
        self._goodbye = (self._retry_frame, _chunk(self._retry_frame))
        self._date = ("", 0)

    def start(self) -> None:
        self._heartbeat_task = asyncio.get_running_loop().create_task(self._heartbeat())

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(self._config.heartbeat)
            for sub in self._subscribers:
                sub.push_comment(_HEARTBEAT)

    # --- what every stream shares ----------------------------------------------------------

    def goodbye(self, chunked: bool) -> bytes:
        """The last frame of a stream the server ends: ``retry:``, so the client comes back."""
        return self._goodbye[chunked]

    def headers(self) -> dict[str, str]:
        headers = {
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-cache",
            "Connection": "keep-alive",
            "X-Accel-Buffering": "no",
        }
        if self._origin:
            headers["Access-Control-Allow-Origin"] = self._origin
        return headers

    def response_head(self, http10: bool) -> bytes:
        """Status line and headers of a stream served without aiohttp, plus the ``retry:``."""
        now = int(time.time())
        if self._date[1] != now:
            self._date = (email.utils.formatdate(now, usegmt=True), now)
        lines = [f"HTTP/1.{0 if http10 else 1} 200 OK", f"Date: {self._date[0]}"]
        lines += [f"{k}: {v}" for k, v in self.headers().items()]
        if not http10:
            lines.append("Transfer-Encoding: chunked")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        return head + (self._retry_frame if http10 else _chunk(self._retry_frame))

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

    def stream_ended(
        self, sub: SSESubscriber, *, types: tuple[str, ...], started: float, remote: str, path: str
    ) -> None:
        """Unsubscribe, count and log a stream that is over, whoever ended it."""
        self.hub.unsubscribe(sub)
        self._subscribers.discard(sub)
        reason = sub.close_reason or "client"
        self.metrics.connection_closed("sse", reason)
        if reason == "slow":
            self.metrics.clients_dropped["slow"] += 1
            log.warning(
                "dropped a slow SSE client", extra={"remote": remote, "limit": self.client_buffer}
            )
        log_stream_end(
            transport="sse",
            remote=remote,
            path=path,
            types=types,
            started=started,
            events=sub.events_sent,
            reason=reason,
        )

    # --- streams on connections aiohttp serves ------------------------------------------------

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        started = time.monotonic()
        try:
            types, last_event_id = self.parse_request(
                request.query_string, request.headers.get("Last-Event-ID")
            )
        except InvalidSubscription as exc:
            headers = {"Access-Control-Allow-Origin": self._origin} if self._origin else None
            log_request(request, 400, started)
            return web.Response(status=400, text=f"{exc}\n", headers=headers)
        if self.at_capacity():
            log_request(request, 503, started)
            return web.Response(
                status=503,
                text="too many connections; retry later\n",
                headers={"Retry-After": str(max(1, self._config.retry_ms // 1000))},
            )
        response = web.StreamResponse(status=200, headers=self.headers())
        await response.prepare(request)
        transport = request.transport
        if transport is None:  # the client left before we answered
            return response
        sub = _HandlerSubscriber(self, transport, request.version >= HttpVersion11)
        # Sent at once, so clients know they are subscribed before the first event.
        await response.write(self._retry_frame)
        self.begin_stream(sub)
        try:
            await self.hub.resume(sub, types, last_event_id)
            await sub.done
        except asyncio.CancelledError:
            sub.close("client")
            raise
        finally:
            self.stream_ended(
                sub,
                types=types,
                started=started,
                remote=remote_address(request),
                path=request.path,
            )
            if sub.close_reason != "client":
                # End the connection after this response; a client that never reads it is cut.
                response.force_close()
                asyncio.get_running_loop().call_later(_CLOSE_GRACE, transport.abort)
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

    @property
    def stream_count(self) -> int:
        return len(self._subscribers)


def end_stream(sub: SSESubscriber) -> None:
    """Finish a lean stream's response on its socket: last chunk, close, abort if stuck."""
    transport = sub.transport
    if transport.is_closing():
        return
    if sub.chunked:
        transport.write(_LAST_CHUNK)
    transport.close()
    asyncio.get_running_loop().call_later(_CLOSE_GRACE, transport.abort)
