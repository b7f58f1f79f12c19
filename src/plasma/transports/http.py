"""The HTTP/1.1 side of the listener: aiohttp's low-level server with plasma's limits.

aiohttp parses requests (request line, headers, keep-alive, pipelining); plasma routes them
to SSE or the meta endpoints. Malformed requests are answered ``400`` by aiohttp; they are
logged here as one line, at warning level at most once a minute, never as a traceback per
request, so a scanner cannot flood the error log.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable

from aiohttp import web, web_server
from aiohttp.http_exceptions import HttpProcessingError

from plasma.config import LimitsConfig

__all__ = ["create_http_server"]

_protocol_log = logging.getLogger("plasma.transports.http")

# A warning about malformed requests at most this often; the rest go to debug.
_WARN_EVERY = 60.0


class _MalformedRequestFilter(logging.Filter):
    """Turns aiohttp's traceback per malformed request into one short, rate-limited line."""

    def __init__(self) -> None:
        super().__init__()
        self._last_warning = 0.0
        self._suppressed = 0

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if not isinstance(exc, HttpProcessingError):
            return True
        record.exc_info = None
        record.exc_text = None
        record.msg = "malformed HTTP request: %s"
        record.args = (str(exc.message).splitlines()[0][:200],)
        now = time.monotonic()
        if now - self._last_warning >= _WARN_EVERY:
            record.levelno, record.levelname = logging.WARNING, "WARNING"
            record.suppressed_since_last = self._suppressed
            self._last_warning = now
            self._suppressed = 0
        else:
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
            self._suppressed += 1
        return _protocol_log.isEnabledFor(record.levelno)


_protocol_log.addFilter(_MalformedRequestFilter())


def create_http_server(
    handler: Callable[[web.BaseRequest], Awaitable[web.StreamResponse]], limits: LimitsConfig
) -> web_server.Server:
    """A protocol factory for HTTP/1.1 connections handed over by the listener."""
    return web_server.Server(
        handler,
        handler_cancellation=True,
        access_log=None,
        logger=_protocol_log,
        # Also the time a client has to send a whole request: aiohttp closes a connection with
        # no complete request by then (the slow-loris bound).
        keepalive_timeout=limits.header_timeout,
        max_line_size=limits.max_request_line,
        max_field_size=limits.max_header_size,
        max_headers=limits.max_headers,
    )
