"""One SSE stream as the hub sees it: its socket and the frames waiting for the next flush.

A stream's bytes are pre-encoded once per event (SSE frame plus HTTP/1.1 chunk framing) and
written straight to the socket by the hub's flush, one ``write`` per client per loop iteration.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Protocol

from plasma.buffers import ClientBuffers
from plasma.events import Encoder
from plasma.hub import Flushable
from plasma.metrics import Metrics
from plasma.transports.sse.wire import chunk, encode_sse, encode_sse_chunked

__all__ = ["SSESubscriber", "StreamOwner"]


class StreamOwner(Protocol):
    """What a subscriber needs from the transport that registered it."""

    metrics: Metrics
    client_buffer: int
    """Bytes a client may leave unread before it is cut."""
    buffers: ClientBuffers
    """The budget of bytes queued for all clients together."""

    def goodbye(self, chunked: bool) -> bytes:
        """The last frame of a stream the server ends."""

    def mark_dirty(self, target: Flushable) -> None:
        """Have ``target`` flushed with the hub's next flush."""

    def unsubscribe(self, sub: SSESubscriber) -> None:
        """Deliver nothing more to ``sub`` (the server is ending its stream)."""


class SSESubscriber:
    """One SSE stream: what is queued for it, and who it is (for the access log).

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
        "types",
        "started",
        "remote",
        "path",
        "user_agent",
        "subject",
        "expiry",
        "counted",
    )

    def __init__(self, owner: StreamOwner, transport: asyncio.Transport, chunked: bool) -> None:
        self.last_seq = 0
        self.encoder: Encoder = encode_sse_chunked
        self.events_sent = 0
        # What waits for the next flush: the first frame, then any more (a burst). Most
        # flushes carry one event, and most streams never see a burst: no list until then.
        self._first: bytes | None = None
        self._more: list[bytes] | None = None
        self.transport = transport
        self.close_reason = ""
        self._owner = owner
        self.chunked = True
        self.types: tuple[str, ...] = ()
        self.started = 0.0
        self.remote = ""
        self.path = ""
        self.user_agent = ""
        self.subject: str | None = None
        """The token's ``sub`` (access control on), for the access log."""
        self.expiry: asyncio.TimerHandle | None = None
        """Ends the stream when its token expires; set at subscribe, cancelled at the end."""
        self.counted = 0
        """Bytes its socket buffer held at the last flush, as ``ClientBuffers`` counts them."""
        if not chunked:
            self.unchunked()

    def unchunked(self) -> None:
        """Send bare SSE frames: the response has no chunked framing (an HTTP/1.0 client)."""
        self.chunked = False
        self.encoder = encode_sse

    def describe(
        self,
        types: tuple[str, ...],
        started: float,
        remote: str,
        path: str,
        user_agent: str,
        subject: str | None = None,
    ) -> None:
        """Record what the access log says about this stream when it ends."""
        self.types = types
        self.started = started
        self.remote = remote
        self.path = path
        # Thousands of browsers send a handful of distinct strings: hold each once.
        self.user_agent = sys.intern(user_agent)
        self.subject = subject

    def push(self, data: bytes, count: int = 1) -> SSESubscriber | None:
        self.events_sent += count
        if self._first is None:
            self._first = data
            return self
        self._queue_more(data)
        return None

    def push_comment(self, frame: bytes) -> None:
        """Queue a frame that is not an event (a heartbeat); flushed with the next batch."""
        if self.chunked:
            frame = chunk(frame)
        if self._first is None:
            self._first = frame
            self._owner.mark_dirty(self)
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
        owner = self._owner
        held = transport.get_write_buffer_size()
        # A client that does not read fills its buffer: cut it, never wait for it. It gets a
        # retry: frame after what it has not read yet, so it reconnects and resumes from history.
        if held > owner.client_buffer:
            transport.write(owner.goodbye(self.chunked))
            self.close("slow")
        elif held or self.counted:  # ClientBuffers.update, inlined: it runs once per flush
            buffers = owner.buffers
            buffers.total += held - self.counted
            self.counted = held
            if buffers.total > buffers.limit:
                buffers.shed()

    def buffered_bytes(self) -> int:
        """What its socket buffer holds now (``ClientBuffers`` recounts with this)."""
        return self.transport.get_write_buffer_size()

    def cut(self, reason: str) -> None:
        """End the stream and drop its unwritten bytes now (the memory budget is exceeded)."""
        self.close(reason)
        self.transport.abort()

    def close(self, reason: str) -> None:
        """End the stream; idempotent."""
        raise NotImplementedError
