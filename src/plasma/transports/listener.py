"""One port for everything: each new connection is handed to the HTTP/1.1 or the gRPC side.

Cleartext: a connection whose first bytes are the HTTP/2 client preface goes to gRPC, anything
else to HTTP/1.1. TLS: the negotiated ALPN protocol decides (``http/1.1`` is listed before ``h2``
so browsers, which offer both, get HTTP/1.1 where SSE lives; grpcio offers only ``h2``). The
hand-over is ``transport.set_protocol`` plus a replay of the bytes already read: no proxy hop,
no second copy of the stream.

The listener accepts plain TCP even on a TLS port: the handshake starts when the client's first
bytes arrive, run by ``TLSHandshakes`` (a bounded number at a time, see ``handshakes.py``).
Near the file-descriptor limit new connections are refused by the kernel and the event loop
without a word (uvloop resets them), so each accepted connection's descriptor number is
compared with the limit and a warning says so, once a minute at most.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import resource
import socket
from collections.abc import Callable
from typing import cast

from plasma.logging import LogThrottle
from plasma.transports.handshakes import TLSHandshakes

__all__ = [
    "FD_RESERVE",
    "H2_PREFACE",
    "ProtocolFactory",
    "ProtocolSniffer",
    "SniffingFactory",
    "hand_over",
]

log = logging.getLogger("plasma.transports.listener")

H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

ProtocolFactory = Callable[[], asyncio.Protocol]


FD_RESERVE = 32
"""Descriptors a process keeps for itself (listener, event loop, source, logs, feed): the
warning below starts there, and the start-up log counts connections without them."""


def hand_over(transport: asyncio.Transport, factory: ProtocolFactory, buffer: bytes) -> None:
    """Give ``transport`` to a new protocol from ``factory``, replaying the bytes already read."""
    protocol = factory()
    transport.set_protocol(protocol)
    protocol.connection_made(transport)
    if buffer and not transport.is_closing():
        protocol.data_received(buffer)


def _keep_alive(sock: socket.socket) -> None:
    """TCP keepalive on every connection: a client that vanished is found even when idle."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        if hasattr(socket, "TCP_KEEPIDLE"):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 60)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, 10)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 6)


class ProtocolSniffer(asyncio.Protocol):
    """Reads just enough of a new connection to know which side should serve it."""

    __slots__ = ("_buffer", "_factory", "_timer", "_tls_pending", "_transport")

    def __init__(self, factory: SniffingFactory) -> None:
        self._factory = factory
        self._buffer = b""
        self._transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._tls_pending = factory.tls is not None
        """A TLS port: the first bytes start the handshake."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport = cast(asyncio.Transport, transport)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            _keep_alive(sock)
            self._factory.check_descriptor(sock.fileno())
        if self._tls_pending:
            self._start_timer(self._factory.first_bytes_timeout)
            return
        self._connected(transport)

    def _tls_ready(self, transport: asyncio.Transport) -> None:
        """The handshake is done: from here on ``transport`` carries the decrypted stream."""
        self._transport = transport
        self._connected(transport)

    def _connected(self, transport: asyncio.Transport) -> None:
        ssl_object = transport.get_extra_info("ssl_object")
        alpn = ssl_object.selected_alpn_protocol() if ssl_object is not None else None
        if alpn == "h2":
            self._hand_over(self._factory.grpc)
            return
        if alpn == "http/1.1":
            self._hand_over(self._factory.http)
            return
        self._start_timer(self._factory.first_bytes_timeout)

    def _start_timer(self, seconds: float) -> None:
        self._cancel_timer()
        self._timer = asyncio.get_running_loop().call_later(seconds, self._timed_out)

    def data_received(self, data: bytes) -> None:
        if self._tls_pending:
            tls, transport = self._factory.tls, self._transport
            assert tls is not None and transport is not None
            self._tls_pending = False
            self._cancel_timer()  # the handshake has a timeout of its own
            tls.start(transport, self, data, self._tls_ready)
            return
        buffer = self._buffer + data
        self._buffer = buffer
        if buffer.startswith(H2_PREFACE):
            self._hand_over(self._factory.grpc)
        elif H2_PREFACE.startswith(buffer):
            # A prefix of the preface: wait for the rest, but not long (clients send it whole).
            if len(buffer) == len(data):
                self._start_timer(self._factory.partial_timeout)
            return
        else:
            self._hand_over(self._factory.http)

    def eof_received(self) -> bool | None:
        return None  # close the connection: nothing was asked

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timer()
        self._transport = None

    def _timed_out(self) -> None:
        self._timer = None
        if self._transport is not None:
            log.debug(
                "closing a connection that sent no request", extra={"bytes": len(self._buffer)}
            )
            self._transport.abort()

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _hand_over(self, factory: ProtocolFactory | None) -> None:
        self._cancel_timer()
        transport = self._transport
        assert transport is not None
        if factory is None:  # e.g. gRPC requested where only HTTP is served
            transport.abort()
            return
        buffer, self._buffer = self._buffer, b""
        self._transport = None
        hand_over(transport, factory, buffer)


class SniffingFactory:
    """The protocol factory given to ``loop.create_server``: makes a sniffer per connection."""

    def __init__(
        self,
        *,
        http: ProtocolFactory | None,
        grpc: ProtocolFactory | None,
        first_bytes_timeout: float = 10.0,
        partial_timeout: float = 3.0,
        tls: TLSHandshakes | None = None,
    ) -> None:
        self.http = http
        self.grpc = grpc
        self.first_bytes_timeout = first_bytes_timeout
        self.partial_timeout = partial_timeout
        """Seconds to wait for the rest of a connection that sent part of the HTTP/2 preface."""
        self.tls = tls
        self._fd_log = LogThrottle()

    def check_descriptor(self, fd: int) -> None:
        """Warn when a new connection's descriptor is close to the process's limit."""
        limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        if limit == resource.RLIM_INFINITY or fd < limit - FD_RESERVE:
            return
        level, suppressed = self._fd_log.level()
        log.log(
            level,
            "open connections are near the file-descriptor limit; beyond it new connections "
            "are refused (raise the limit: ulimit -n, LimitNOFILE)",
            extra={"limit": limit, "open": fd + 1, "suppressed_since_last": suppressed},
        )

    def __call__(self) -> asyncio.Protocol:
        return ProtocolSniffer(self)
