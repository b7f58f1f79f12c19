"""The lean SSE path: a fresh connection whose first request is an SSE subscription.

An SSE stream lives for hours and is idle most of that time, so what it holds matters: served
through aiohttp it keeps a request handler, request, response, handler task and future (about
11 KB of RSS per idle stream, measured with ``./scripts/bench``). This protocol parses the
request head with ``httptools``, answers with one write (status, headers and ``retry:``), and
is itself the hub's subscriber: one small object per stream.

Anything else — another method, no ``Accept: text/event-stream``, a body, a request aiohttp
must refuse (bad types, limits, capacity) — is handed to aiohttp with the bytes read so far,
so every error answer and every other endpoint has a single implementation.

Only the first request is parsed: bytes pipelined behind an SSE request are never read (a
stream does not end, so nothing after it could be answered). A request head that is not
complete within the configured request-line and header limits (plus a small margin) is refused
here with ``431`` and the connection closed at once (handed to aiohttp with half a megabyte
read, its parser took ~20 ms per further read until it answered); the bytes read are kept as a
list, never re-copied.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import cast

import httptools

from plasma.auth.errors import AuthError
from plasma.subscription import InvalidSubscription
from plasma.transports.access import client_address
from plasma.transports.listener import ProtocolFactory, hand_over
from plasma.transports.sse.subscriber import SSESubscriber
from plasma.transports.sse.transport import SSETransport, abort_after_grace
from plasma.transports.sse.wire import LAST_CHUNK, is_sse_request

__all__ = ["SSEConnection"]

log = logging.getLogger("plasma.transports.sse")

_HEAD_TOO_LARGE = (
    b"HTTP/1.1 431 Request Header Fields Too Large\r\nContent-Type: text/plain; charset=utf-8\r\n"
    b"Content-Length: 26\r\nConnection: close\r\n\r\nrequest head is too large\n"
)
# Headers the lean path reads; everything else is skipped while parsing.
_WANTED = {
    b"accept",
    b"last-event-id",
    b"x-forwarded-for",
    b"content-length",
    b"transfer-encoding",
    b"user-agent",
    b"authorization",
    b"cookie",
}


def _text(value: bytes | None) -> str | None:
    return value.decode("latin-1") if value is not None else None


class _HandOver(Exception):
    """This request is not one for the lean path: give the connection to aiohttp."""


class SSEConnection(SSESubscriber, asyncio.Protocol):
    """One connection: parses its first request, then streams it or hands it to aiohttp."""

    __slots__ = (
        "_buffer",
        "_buffered",
        "_complete",
        "_fallback",
        "_header_count",
        "_headers",
        "_parser",
        "_resume",
        "_timer",
        "_url",
    )

    def __init__(self, owner: SSETransport, fallback: ProtocolFactory) -> None:
        super().__init__(owner, cast(asyncio.Transport, None), chunked=True)
        self._fallback = fallback
        self._parser: httptools.HttpRequestParser | None = httptools.HttpRequestParser(self)
        self._buffer: list[bytes] = []
        self._buffered = 0
        self._url = b""
        self._headers: dict[bytes, bytes] = {}
        self._header_count = 0
        self._complete = False
        self._timer: asyncio.TimerHandle | None = None
        self._resume: asyncio.Task[bool] | None = None

    @property
    def _sse(self) -> SSETransport:
        # The owner, typed as what registered this stream (no second slot for it per stream).
        return cast(SSETransport, self._owner)

    # --- asyncio.Protocol ----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self._timer = asyncio.get_running_loop().call_later(
            self._sse.limits.header_timeout, self.transport.abort
        )

    def data_received(self, data: bytes) -> None:
        parser = self._parser
        if parser is None:
            return  # streaming: a subscriber has nothing more to say
        self._buffer.append(data)
        self._buffered += len(data)
        if self._buffered > self._sse.head_limit:
            self._refuse_head()
            return
        try:
            parser.feed_data(data)
            if self._complete:
                self._serve(parser)
        except (_HandOver, httptools.HttpParserError, httptools.HttpParserUpgrade):
            self._hand_over()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timer()
        if self._resume is not None:
            self._resume.cancel()
        if self._parser is None and self.types:
            self.close_reason = self.close_reason or "client"
            self._sse.stream_ended(self)

    # --- httptools callbacks -----------------------------------------------------------------

    def on_url(self, url: bytes) -> None:
        if self._complete:
            return  # a pipelined request: only the first one is read
        self._url += url
        if len(self._url) > self._sse.limits.max_request_line:
            raise _HandOver

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._complete:
            return
        limits = self._sse.limits
        self._header_count += 1
        if (
            self._header_count > limits.max_headers
            or len(name) + len(value) > limits.max_header_size
        ):
            raise _HandOver
        name = name.lower()
        if name in _WANTED:
            self._headers[name] = value

    def on_headers_complete(self) -> None:
        self._complete = True

    # --- serving ------------------------------------------------------------------------------

    def _serve(self, parser: httptools.HttpRequestParser) -> None:
        owner = self._sse
        headers = self._headers
        if (
            not is_sse_request(
                parser.get_method().decode("latin-1"),
                headers.get(b"accept", b"").decode("latin-1"),
            )
            or b"content-length" in headers
            or b"transfer-encoding" in headers
            or not self._url.isascii()
            or owner.at_capacity()
        ):
            raise _HandOver
        url = httptools.parse_url(self._url)
        query = (url.query or b"").decode("ascii")
        last_event_id = headers.get(b"last-event-id", b"").decode("latin-1") or None
        try:
            types, last_event_id = owner.parse_request(query, last_event_id)
        except InvalidSubscription:
            raise _HandOver from None  # aiohttp answers the 400, with its reason
        try:
            identity = owner.authorize(
                types,
                authorization=_text(headers.get(b"authorization")),
                cookie=_text(headers.get(b"cookie")),
                query_string=query,
                count=False,
            )
        except AuthError:
            raise _HandOver from None  # aiohttp answers (and counts) the 401 or 403
        http10 = parser.get_http_version() == "1.0"
        self._cancel_timer()
        self._parser = None
        self._buffer = []
        self._url = b""
        peer = self.transport.get_extra_info("peername")
        self.describe(
            types,
            time.monotonic(),
            client_address(
                headers.get(b"x-forwarded-for", b"").decode("latin-1"), peer[0] if peer else ""
            ),
            (url.path or b"/").decode("latin-1"),
            headers.get(b"user-agent", b"").decode("latin-1"),
            identity.subject if identity is not None else None,
        )
        self._headers = {}
        if http10:
            self.unchunked()
        self.transport.write(owner.head.encode(http10))
        owner.begin_stream(self, identity)
        if last_event_id is None:
            owner.hub.subscribe(self, types)
            return
        # Resuming may wait for the source's archive; a client that leaves meanwhile cancels it.
        task = asyncio.get_running_loop().create_task(owner.hub.resume(self, types, last_event_id))
        self._resume = task
        task.add_done_callback(self._resumed)

    def _resumed(self, task: asyncio.Task[bool]) -> None:
        self._resume = None
        if not task.cancelled() and task.exception() is not None:
            log.error("resuming an SSE stream failed", exc_info=task.exception())
            self.close("error")

    def _refuse_head(self) -> None:
        """A request head larger than any the limits allow: answer 431 and stop reading."""
        self._cancel_timer()
        self._parser = None
        self._buffer = []
        log.debug("refusing a request head over %d bytes", self._sse.head_limit)
        self.transport.write(_HEAD_TOO_LARGE)
        self.transport.close()
        abort_after_grace(self.transport)

    def _hand_over(self) -> None:
        self._cancel_timer()
        buffer, self._buffer = b"".join(self._buffer), []
        self._parser = None
        hand_over(self.transport, self._fallback, buffer)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def close(self, reason: str) -> None:
        """End the response on the socket: last chunk, close, abort if the client is stuck."""
        if self.close_reason:
            return
        self.close_reason = reason
        self._sse.hub.unsubscribe(self)  # no more deliveries; only the last bytes drain
        transport = self.transport
        if transport.is_closing():
            return
        if self.chunked:
            transport.write(LAST_CHUNK)
        transport.close()
        abort_after_grace(transport)
