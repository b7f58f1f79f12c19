"""The HTTP/1.1 side of the listener: aiohttp's low-level server with plasma's limits.

aiohttp parses requests (request line, headers, keep-alive, pipelining); plasma routes them
to SSE or the meta endpoints. Malformed requests are answered ``400`` by aiohttp; they are
logged here as one line, at warning level at most once a minute, never as a traceback per
request, so a scanner cannot flood the error log. Every answer says ``Server: plasma``, never
the versions of Python and aiohttp (aiohttp's default). aiohttp's ``400`` body quotes the
start of the line it refused (a header too long: ``b'Bearer eyJ...'``), so tokens are redacted
from it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from aiohttp import hdrs, web, web_protocol, web_server
from aiohttp.abc import AbstractStreamWriter
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.http_parser import RawRequestMessage
from aiohttp.streams import StreamReader

from plasma.auth.credentials import redact
from plasma.config import LimitsConfig
from plasma.logging import LogThrottle

__all__ = ["create_http_server", "setup_http_logging"]

_protocol_log = logging.getLogger("plasma.transports.http")

# A warning about malformed requests at most this often; the rest go to debug.
_WARN_EVERY = 60.0


class _MalformedRequestFilter(logging.Filter):
    """Turns aiohttp's traceback per malformed request into one short, rate-limited line."""

    def __init__(self) -> None:
        super().__init__()
        self._throttle = LogThrottle(_WARN_EVERY)

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if not isinstance(exc, HttpProcessingError):
            return True
        record.exc_info = None
        record.exc_text = None
        record.msg = "malformed HTTP request: %s"
        record.args = (str(exc.message).splitlines()[0][:200],)
        record.levelno, suppressed = self._throttle.level()
        record.levelname = logging.getLevelName(record.levelno)
        if suppressed:
            record.suppressed_since_last = suppressed
        return _protocol_log.isEnabledFor(record.levelno)


def setup_http_logging() -> None:
    """Install the malformed-request filter on aiohttp's protocol log (once; the server's
    start calls this)."""
    if not any(isinstance(f, _MalformedRequestFilter) for f in _protocol_log.filters):
        _protocol_log.addFilter(_MalformedRequestFilter())


class _Request(web.BaseRequest):
    """A request whose answer, whoever builds it (plasma or aiohttp's error path), names plasma."""

    async def _prepare_hook(self, response: web.StreamResponse) -> None:
        # Runs after aiohttp's own headers are set and before any is written.
        response.headers[hdrs.SERVER] = "plasma"


def _make_request(
    message: RawRequestMessage,
    payload: StreamReader,
    protocol: web_protocol.RequestHandler,
    writer: AbstractStreamWriter,
    task: asyncio.Task[None],
) -> web.BaseRequest:
    return _Request(message, payload, protocol, writer, task, asyncio.get_running_loop())


class _RequestHandler(web_protocol.RequestHandler):
    """aiohttp's connection handler, whose error answers never quote a token."""

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        return super().handle_error(request, status, exc, redact(message) if message else message)


class _Server(web_server.Server):
    def __call__(self) -> web_protocol.RequestHandler:
        return _RequestHandler(self, loop=self._loop, **self._kwargs)


def create_http_server(
    handler: Callable[[web.BaseRequest], Awaitable[web.StreamResponse]], limits: LimitsConfig
) -> web_server.Server:
    """A protocol factory for HTTP/1.1 connections handed over by the listener."""
    return _Server(
        handler,
        handler_cancellation=True,
        request_factory=_make_request,
        access_log=None,
        logger=_protocol_log,
        tcp_keepalive=False,  # the listener already set it on every connection
        # Also the time a client has to send a whole request: aiohttp closes a connection with
        # no complete request by then (the slow-loris bound).
        keepalive_timeout=limits.header_timeout,
        max_line_size=limits.max_request_line,
        max_field_size=limits.max_header_size,
        max_headers=limits.max_headers,
    )
