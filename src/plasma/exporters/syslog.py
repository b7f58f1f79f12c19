"""A syslog client that never blocks or crashes the server: messages as Go's ``log/syslog``.

Messages look like Go's: over a network ``<PRI>2006-01-02T15:04:05Z07:00 host tag[pid]: msg``,
to the local socket (network empty: ``/dev/log``, ``/var/run/syslog``, ``/var/run/log``)
``<PRI>Jan _2 15:04:05 tag[pid]: msg``, each ending in a newline (the framing on TCP). PRI is
``facility * 8 + severity`` with Go's numbering (``LOG_KERN`` = 0 … ``LOG_LOCAL7`` = 23).

Every send is bounded: connecting has a timeout, a TCP receiver that stops reading makes us
drop lines instead of buffering without end, and a receiver that is down is retried on the
next line. Failures are logged once, and again only after the receiver came back.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import os
import socket
import time
from typing import Any

__all__ = ["LOCAL_SOCKETS", "SyslogWriter", "format_syslog_message"]

log = logging.getLogger("plasma.metrics")

LOCAL_SOCKETS = ("/dev/log", "/var/run/syslog", "/var/run/log")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_CONNECT_TIMEOUT = 2.0
# Lines waiting in a TCP connection's buffer past this are dropped, not queued.
_MAX_BUFFERED = 256 * 1024


def format_syslog_message(
    priority: int, tag: str, message: str, *, local: bool, now: float, hostname: str = ""
) -> bytes:
    """One message framed as Go's ``log/syslog`` frames it (``local``: the host's socket)."""
    nl = "" if message.endswith("\n") else "\n"
    if local:
        t = time.localtime(now)
        clock = f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d}"
        stamp = f"{_MONTHS[t.tm_mon - 1]} {t.tm_mday:2d} {clock}"
        text = f"<{priority}>{stamp} {tag}[{os.getpid()}]: {message}{nl}"
    else:
        stamp = datetime.datetime.fromtimestamp(int(now)).astimezone().isoformat()
        stamp = stamp.replace("+00:00", "Z")
        text = f"<{priority}>{stamp} {hostname} {tag}[{os.getpid()}]: {message}{nl}"
    return text.encode("utf-8", "replace")


class _Conn(asyncio.Protocol, asyncio.DatagramProtocol):
    """Notices a lost connection or an ICMP error; never reads what the receiver sends."""

    def __init__(self, writer: SyslogWriter) -> None:
        self._writer = writer
        self.lost = False

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True

    def error_received(self, exc: Exception) -> None:
        self._writer._failed(exc)

    def data_received(self, data: bytes) -> None:
        pass


class SyslogWriter:
    """Owns one connection to a syslog receiver; ``send`` never raises and never hangs."""

    def __init__(self, *, network: str, addr: str, tag: str, priority: int) -> None:
        self.network = network
        self.addr = addr
        self.tag = tag
        self.priority = priority
        if network in ("udp", "tcp"):
            _split_host_port(addr)  # a bad address is a startup error, not a silent drop
        elif network in ("unix", "unixgram") and not addr:
            raise ValueError(f"PLASMA_METRICS_SYSLOG_ADDR is empty: a {network} socket path")
        elif network not in ("", "unix", "unixgram"):
            raise ValueError(f"PLASMA_METRICS_SYSLOG_NETWORK={network!r} is not supported")
        self._hostname = socket.gethostname()
        # Neither asyncio's nor uvloop's UDP transport subclasses DatagramTransport: remember.
        self._transport: Any = None
        self._datagram = False
        self._conn: _Conn | None = None
        self._local = network == ""
        self._failing = False
        self.sent = 0
        self.dropped = 0

    async def send(self, message: str) -> bool:
        """Send one message; return whether it was handed to the socket."""
        data = format_syslog_message(
            self.priority,
            self.tag,
            message,
            local=self._local,
            now=time.time(),
            hostname=self._hostname,
        )
        if (self._transport is None or self._conn is None or self._conn.lost) and not (
            await self._connect()
        ):
            self.dropped += 1
            return False
        transport = self._transport
        try:
            if self._datagram:
                transport.sendto(data)
            else:
                if transport.get_write_buffer_size() > _MAX_BUFFERED:
                    self._failed(OSError("the syslog receiver does not read; dropping lines"))
                    self.dropped += 1
                    return False
                transport.write(data)
        except OSError as exc:
            self._failed(exc)
            self._drop_connection()
            self.dropped += 1
            return False
        self.sent += 1
        return True

    async def _connect(self) -> bool:
        self._drop_connection()
        loop = asyncio.get_running_loop()
        conn = _Conn(self)
        try:
            async with asyncio.timeout(_CONNECT_TIMEOUT):
                transport, datagram = await self._open(loop, conn)
        except (OSError, TimeoutError, ValueError) as exc:
            self._failed(exc)
            return False
        self._transport, self._conn, self._datagram = transport, conn, datagram
        if self._failing:
            self._failing = False
            log.info("metrics syslog reachable again", extra=self._where())
        return True

    async def _open(
        self, loop: asyncio.AbstractEventLoop, conn: _Conn
    ) -> tuple[asyncio.BaseTransport, bool]:
        """The connected transport, and whether it is a datagram one."""
        network = self.network
        if network == "":
            return await self._open_local(loop, conn)
        if network == "udp":
            host, port = _split_host_port(self.addr)
            transport, _ = await loop.create_datagram_endpoint(
                lambda: conn, remote_addr=(host, port)
            )
            return transport, True
        if network == "tcp":
            host, port = _split_host_port(self.addr)
            stream, _ = await loop.create_connection(lambda: conn, host, port)
            return stream, False
        if network == "unixgram":
            return await _open_unixgram(loop, conn, self.addr), True
        if network == "unix":
            unix, _ = await loop.create_unix_connection(lambda: conn, self.addr)
            return unix, False
        raise ValueError(f"unsupported syslog network {network!r}")

    async def _open_local(
        self, loop: asyncio.AbstractEventLoop, conn: _Conn
    ) -> tuple[asyncio.BaseTransport, bool]:
        # As Go's unixSyslog: each well-known path, as a datagram socket first, then a stream.
        paths = (self.addr,) if self.addr else LOCAL_SOCKETS
        error: OSError = FileNotFoundError("no local syslog socket: " + ", ".join(paths))
        for path in paths:
            try:
                return await _open_unixgram(loop, conn, path), True
            except OSError as exc:
                error = exc
            try:
                transport, _ = await loop.create_unix_connection(lambda: conn, path)
                return transport, False
            except OSError as exc:
                error = exc
        raise error

    def _failed(self, exc: BaseException) -> None:
        if not self._failing:
            self._failing = True
            log.warning(
                "metrics syslog unreachable; dropping lines until it answers",
                extra={**self._where(), "error": str(exc) or type(exc).__name__},
            )

    def _where(self) -> dict[str, str]:
        return {"network": self.network or "local", "addr": self.addr}

    def _drop_connection(self) -> None:
        transport, self._transport, self._conn = self._transport, None, None
        if transport is not None:
            with contextlib.suppress(Exception):
                transport.abort()

    async def aclose(self) -> None:
        """Close the connection without waiting for unsent lines; idempotent."""
        self._drop_connection()


async def _open_unixgram(
    loop: asyncio.AbstractEventLoop, conn: _Conn, path: str
) -> asyncio.BaseTransport:
    # uvloop takes no AF_UNIX remote_addr: connect the socket here (it never blocks) and wrap it.
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        sock.setblocking(False)
        sock.connect(path)
        transport, _ = await loop.create_datagram_endpoint(lambda: conn, sock=sock)
    except BaseException:
        sock.close()
        raise
    return transport


def _split_host_port(addr: str) -> tuple[str, int]:
    host, sep, port = addr.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"PLASMA_METRICS_SYSLOG_ADDR={addr!r}: expected host:port")
    return host.strip("[]") or "localhost", int(port)
