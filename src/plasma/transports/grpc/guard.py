"""What one HTTP/2 connection may cost everyone else: budgets for its read path.

One event loop serves every client, so no connection may hold it for long or make it work
without end. A connection's reads are worked off in turns of ``WORK_PER_TURN`` units (a frame
is one unit, a gRPC request message ``MESSAGE_COST``); what is left waits for the next loop
turn with reading paused. Frames that cost the server work but carry nothing for a call
(client resets, PING, SETTINGS, PRIORITY, unknown frames, empty DATA, tiny WINDOW_UPDATEs) are
drawn from token buckets; a connection that empties one is told GOAWAY ``ENHANCE_YOUR_CALM``
(nginx's "http2 flood detected", Go's and h2o's rapid-reset guards do the same). Access-log
lines are drawn from a bucket too, so one connection cannot fill the log.

The rates are far above what gRPC clients send: grpcio pings at most a few times a second,
acks SETTINGS once, cancels calls one at a time, and opens windows by kilobytes.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from plasma.transports.grpc.stream import ServerStream

__all__ = [
    "CONTROL_BURST",
    "CONTROL_RATE",
    "LINGER",
    "LOG_BURST",
    "LOG_RATE",
    "MESSAGE_COST",
    "RESET_BURST",
    "RESET_RATE",
    "TINY_WINDOW",
    "WORK_PER_TURN",
    "FrameSplitter",
    "ReadGuard",
    "TokenBucket",
]

WORK_PER_TURN = 100
"""Units of work one connection may do per loop turn (a frame is 1, a request message 5)."""
MESSAGE_COST = 5
"""A request message (a re-subscription, a health check) costs this many frames' worth."""
RESET_BURST = 200
RESET_RATE = 20.0
"""Streams a client may reset at once, and per second after that."""
CONTROL_BURST = 1000
CONTROL_RATE = 100.0
"""PING, SETTINGS, PRIORITY, unknown and empty frames a client may send at once, per second."""
TINY_WINDOW = 1024
"""A WINDOW_UPDATE opening fewer bytes than this is a control frame, not flow control."""
LOG_BURST = 100
LOG_RATE = 10.0
"""Access-log lines one connection's streams may write at once, and per second after that."""
LINGER = 1.0
"""Seconds a connection told GOAWAY is read (and discarded) before it is cut, so the GOAWAY
arrives instead of being lost to the reset that closing with unread input sends."""


class TokenBucket:
    """``burst`` tokens, refilled at ``rate`` per second; ``take`` is O(1) and reads the clock
    only when the bucket is empty."""

    __slots__ = ("_rate", "_stamp", "burst", "tokens")

    def __init__(self, burst: int, rate: float) -> None:
        self.burst = burst
        self.tokens = float(burst)
        self._rate = rate
        self._stamp = time.monotonic()

    def take(self) -> bool:
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        now = time.monotonic()
        self.tokens = min(float(self.burst), self.tokens + (now - self._stamp) * self._rate)
        self._stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


class FrameSplitter:
    """Follows HTTP/2 frame boundaries in what a connection receives (after the preface).

    ``split`` says how much of a read holds at most ``frames`` frame starts, so h2 is fed a
    bounded slice; it also refuses a frame by its header when the frame announces more than
    the connection's maximum size, before h2 buffers the whole of it.
    """

    __slots__ = ("_header", "_skip")

    def __init__(self, preface: int) -> None:
        self._skip = preface  # the preface is not a frame
        self._header = b""

    def split(self, data: bytes | bytearray, frames: int, max_size: int) -> int:
        """Bytes of ``data`` to feed now: -1 if a frame is too large."""
        skip = self._skip
        header = self._header
        size = len(data)
        pos = 0
        while pos < size:
            if skip:
                n = min(skip, size - pos)
                skip -= n
                pos += n
                continue
            if not header:
                if frames <= 0:
                    break
                frames -= 1
            n = min(9 - len(header), size - pos)
            header += data[pos : pos + n]
            pos += n
            if len(header) == 9:
                skip = int.from_bytes(header[:3], "big")
                header = b""
                if skip > max_size:
                    return -1
        self._skip = skip
        self._header = header
        return pos


class ReadGuard(FrameSplitter):
    """One connection's read-path state, apart from the connection so that the fields its
    flush touches on every delivery stay together: the frame boundary, what waits for the
    next turn, and the budgets (made at first use: most connections never need them)."""

    __slots__ = (
        "_control",
        "_log_lines",
        "_resets",
        "inbound",
        "lines_suppressed",
        "linger_timer",
        "lingering",
        "paused",
        "turn_coming",
        "waiting",
    )

    def __init__(self, preface: int) -> None:
        super().__init__(preface)
        self.inbound = b""
        """What was read but not yet fed to h2: the next turn's work (reading is paused)."""
        self.waiting: list[ServerStream] = []
        """Streams with request messages left for the next turn."""
        self.turn_coming = False
        self.paused = False
        self._resets: TokenBucket | None = None
        self._control: TokenBucket | None = None
        self._log_lines: TokenBucket | None = None
        self.lines_suppressed = 0
        self.lingering = False
        """Told GOAWAY ENHANCE_YOUR_CALM: what arrives is dropped until the linger ends."""
        self.linger_timer: asyncio.TimerHandle | None = None

    def reset(self) -> bool:
        """Count one stream the client reset; False once it resets too many."""
        if self._resets is None:
            self._resets = TokenBucket(RESET_BURST, RESET_RATE)
        return self._resets.take()

    def control_frame(self) -> bool:
        """Count one control frame; False once the client sends too many."""
        if self._control is None:
            self._control = TokenBucket(CONTROL_BURST, CONTROL_RATE)
        return self._control.take()

    def log_line(self) -> bool:
        """Whether one more access-log line fits; the ones that do not are counted."""
        if self._log_lines is None:
            self._log_lines = TokenBucket(LOG_BURST, LOG_RATE)
        if self._log_lines.take():
            return True
        self.lines_suppressed += 1
        return False
