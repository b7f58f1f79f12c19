"""One port for everything: each new connection is handed to the HTTP/1.1 or the gRPC side.

Cleartext: a connection whose first bytes are the HTTP/2 client preface goes to gRPC, anything
else to HTTP/1.1. TLS: the negotiated ALPN protocol decides (``http/1.1`` is listed before ``h2``
so browsers, which offer both, get HTTP/1.1 where SSE lives; grpcio offers only ``h2``). The
hand-over is ``transport.set_protocol`` plus a replay of the bytes already read: no proxy hop,
no second copy of the stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Callable
from typing import cast

__all__ = ["H2_PREFACE", "ProtocolFactory", "ProtocolSniffer", "SniffingFactory", "hand_over"]

log = logging.getLogger("plasma.transports.listener")

H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

ProtocolFactory = Callable[[], asyncio.Protocol]


def hand_over(transport: asyncio.Transport, factory: ProtocolFactory, buffer: bytes) -> None:
    """Give ``transport`` to a new protocol from ``factory``, replaying the bytes already read."""
    protocol = factory()
    transport.set_protocol(protocol)
    protocol.connection_made(transport)
    if buffer and not transport.is_closing():
        protocol.data_received(buffer)


def _keep_alive(transport: asyncio.Transport) -> None:
    """TCP keepalive on every connection: a client that vanished is found even when idle."""
    sock = transport.get_extra_info("socket")
    if sock is None:
        return
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        if hasattr(socket, "TCP_KEEPIDLE"):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 60)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, 10)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 6)


class ProtocolSniffer(asyncio.Protocol):
    """Reads just enough of a new connection to know which side should serve it."""

    __slots__ = ("_buffer", "_factory", "_timer", "_transport")

    def __init__(self, factory: SniffingFactory) -> None:
        self._factory = factory
        self._buffer = b""
        self._transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport = cast(asyncio.Transport, transport)
        _keep_alive(transport)
        ssl_object = transport.get_extra_info("ssl_object")
        alpn = ssl_object.selected_alpn_protocol() if ssl_object is not None else None
        if alpn == "h2":
            self._hand_over(self._factory.grpc)
            return
        if alpn == "http/1.1":
            self._hand_over(self._factory.http)
            return
        self._timer = asyncio.get_running_loop().call_later(
            self._factory.first_bytes_timeout, self._timed_out
        )

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer + data
        self._buffer = buffer
        if buffer.startswith(H2_PREFACE):
            self._hand_over(self._factory.grpc)
        elif H2_PREFACE.startswith(buffer):
            # A prefix of the preface: wait for the rest, but not long (clients send it whole).
            if len(buffer) == len(data):
                self._cancel_timer()
                self._timer = asyncio.get_running_loop().call_later(
                    self._factory.partial_timeout, self._timed_out
                )
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
    ) -> None:
        self.http = http
        self.grpc = grpc
        self.first_bytes_timeout = first_bytes_timeout
        self.partial_timeout = partial_timeout
        """Seconds to wait for the rest of a connection that sent part of the HTTP/2 preface."""

    def __call__(self) -> asyncio.Protocol:
        return ProtocolSniffer(self)
