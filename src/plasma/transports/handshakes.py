"""TLS for the one port, started after accept: a bounded number of handshakes at a time.

Listening with ``ssl=`` lets the loop start a handshake for every connection it accepts.
2,000 peers that open TLS and send nothing (or half a ClientHello) then hold about 40 KB of
OpenSSL state each until the handshake timeout, and once they have failed glibc keeps the freed
heap: measured RSS 53 -> 154 -> 239 -> 318 -> 385 -> 433 MB over five such rounds, back to
~60 MB after one ``malloc_trim``. So the listener accepts plain TCP and upgrades each
connection with ``loop.start_tls`` here:

- at most ``limit`` handshakes run at once; a newcomer beyond that evicts the oldest one
  still running (a flood of stalled peers cannot lock real clients out, they finish in a few
  milliseconds while stalled ones are the oldest);
- after handshakes have failed, the heap is trimmed ``trim_delay`` seconds later (so at most
  once per ``trim_delay`` during a sustained flood, and once more after it).
"""

from __future__ import annotations

import asyncio
import ctypes
import functools
import logging
import ssl
from collections.abc import Callable
from typing import cast

from plasma.logging import LogThrottle

__all__ = ["TLSHandshakes", "trim_heap"]

log = logging.getLogger("plasma.transports.tls")

Done = Callable[[asyncio.Transport], None]


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim``, or ``None`` on a C library without it (musl, macOS)."""
    try:
        return ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None


def trim_heap() -> None:
    """Give freed heap memory back to the operating system, where the C library can."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


def _replay(transport: asyncio.Transport, data: bytes) -> None:
    """Give ``data`` to the transport's (TLS) protocol as if it had just been read."""
    protocol = transport.get_protocol()
    # uvloop's TLS protocol has the buffered-protocol methods without subclassing it.
    if transport.is_closing() or not hasattr(protocol, "buffer_updated"):
        transport.abort()
        return
    protocol = cast(asyncio.BufferedProtocol, protocol)
    view = memoryview(data)
    while view:
        buffer = memoryview(protocol.get_buffer(len(view)))
        n = min(len(buffer), len(view))
        buffer[:n] = view[:n]
        protocol.buffer_updated(n)
        view = view[n:]


class TLSHandshakes:
    """Runs the server side of TLS handshakes on accepted connections, ``limit`` at a time."""

    def __init__(
        self,
        context: ssl.SSLContext,
        *,
        timeout: float,
        limit: int = 512,
        trim_delay: float = 2.0,
    ) -> None:
        self.context = context
        self.timeout = timeout
        self.limit = limit
        self.trim_delay = trim_delay
        self.failed = 0
        """Handshakes that failed, timed out or were evicted (all time)."""
        # Insertion order: the oldest handshake first. The tasks are kept here until they end.
        self._running: dict[asyncio.Transport, asyncio.Task[None]] = {}
        self._trim: asyncio.TimerHandle | None = None
        self._evict_log = LogThrottle()

    @property
    def running(self) -> int:
        return len(self._running)

    def start(
        self, transport: asyncio.Transport, protocol: asyncio.Protocol, first: bytes, done: Done
    ) -> None:
        """Upgrade ``transport`` for ``protocol``; ``done(tls_transport)`` runs if it succeeds.

        Call from ``protocol.data_received`` with the bytes it got (the start of the
        ClientHello): TLS starts only once the client speaks, so a silent connection holds no
        TLS state. Reading pauses until the TLS layer takes over and is given ``first``.
        """
        transport.pause_reading()
        running = self._running
        if len(running) >= self.limit:
            self._evict(next(iter(running)))
        loop = asyncio.get_running_loop()
        running[transport] = loop.create_task(self._handshake(transport, protocol, first, done))

    def _evict(self, oldest: asyncio.Transport) -> None:
        del self._running[oldest]
        oldest.abort()
        level, suppressed = self._evict_log.level()
        log.log(
            level,
            "too many TLS handshakes at once; closing the oldest",
            extra={"limit": self.limit, "suppressed_since_last": suppressed},
        )

    async def _handshake(
        self, transport: asyncio.Transport, protocol: asyncio.Protocol, first: bytes, done: Done
    ) -> None:
        loop = asyncio.get_running_loop()
        try:
            if transport.is_closing():
                raise ConnectionAbortedError("closed before the handshake")
            # start_tls swaps the transport's protocol for its TLS protocol now and calls that
            # protocol's connection_made at the next turn of the loop; this callback, queued
            # first, runs between the two and hands it the bytes already read (both asyncio's
            # and uvloop's TLS protocol keep bytes given before connection_made for the
            # handshake that connection_made starts).
            loop.call_soon(_replay, transport, first)
            tls = await loop.start_tls(
                transport,
                protocol,
                self.context,
                server_side=True,
                ssl_handshake_timeout=self.timeout,
            )
        except (OSError, ssl.SSLError, EOFError, RuntimeError) as exc:
            log.debug("TLS handshake failed: %s", exc or type(exc).__name__)
            transport.abort()
            self._ended(transport, failed=True)
            return
        except BaseException:
            transport.abort()
            self._ended(transport, failed=True)
            raise
        if tls is None or tls.is_closing() or tls.get_extra_info("ssl_object") is None:
            # The peer left as the handshake finished: nothing to serve.
            transport.abort()
            self._ended(transport, failed=True)
            return
        self._ended(transport, failed=False)
        done(tls)

    def _ended(self, transport: asyncio.Transport, *, failed: bool) -> None:
        self._running.pop(transport, None)
        if failed:
            self.failed += 1
            if self._trim is None:
                self._trim = asyncio.get_running_loop().call_later(self.trim_delay, self._trimmed)

    def close(self) -> None:
        """Abort every handshake still running (shutdown)."""
        for transport in list(self._running):
            transport.abort()
        if self._trim is not None:
            self._trim.cancel()
            self._trim = None

    def _trimmed(self) -> None:
        self._trim = None
        trim_heap()
