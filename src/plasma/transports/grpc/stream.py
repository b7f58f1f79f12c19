"""One gRPC call's HTTP/2 stream: gRPC message framing in and out, status trailers, and the
pending messages a flush turns into DATA frames.

A ``ServerStream`` is also the hub's ``Subscriber`` for an Events call: ``push`` only appends to
its pending list and has its connection queue it when it becomes dirty (O(1), never awaits).
The connection's flush then calls ``send_pending``, which joins the pending messages into one
DATA frame. DATA frames are framed here rather than by ``h2.send_data`` (it was half the cost
of a delivery in 10-event bursts), against h2's own flow-control windows; h2 sends every
HEADERS frame, so its stream states hold. A stream whose window is short keeps the rest pending
until the client's WINDOW_UPDATE, and is cut with RESOURCE_EXHAUSTED once that backlog passes
the client buffer; each window opening sends from the pending list without copying what stays.

Receiving is worked off in the connection's turns (``plasma.transports.grpc.guard``): each
request message draws on the connection's budget, and a stream whose budget ran out keeps its
messages (and a half-close that came after them) for the next turn.

A stream knows its connection only through ``StreamConnection``: the few things it asks of it.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import sys
from collections.abc import Callable, Coroutine, Mapping
from typing import Any, Protocol

import h2.connection
import h2.exceptions

from plasma.events import Encoder, Event
from plasma.hub import Flushable
from plasma.transports.grpc.guard import MESSAGE_COST

__all__ = [
    "MAX_REQUEST_BYTES",
    "RESPONSE_HEADERS",
    "CallHandler",
    "HandlerFactory",
    "Metadata",
    "ServerStream",
    "Status",
    "StreamConnection",
    "frame_message",
    "parse_timeout",
]

log = logging.getLogger("plasma.transports.grpc")

MAX_REQUEST_BYTES = 256 * 1024
"""Largest request message accepted (128 types of 256 characters fit easily)."""


class Status(enum.IntEnum):
    """gRPC status codes (the ones plasma sends, plus their neighbours for logs)."""

    OK = 0
    CANCELLED = 1
    UNKNOWN = 2
    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    NOT_FOUND = 5
    PERMISSION_DENIED = 7
    RESOURCE_EXHAUSTED = 8
    UNIMPLEMENTED = 12
    INTERNAL = 13
    UNAVAILABLE = 14
    UNAUTHENTICATED = 16


def frame_message(message: bytes) -> bytes:
    """A gRPC length-prefixed message: flag 0 (not compressed), 4-byte big-endian length."""
    return b"\x00" + len(message).to_bytes(4, "big") + message


_TIMEOUT_UNITS = {b"H": 3600.0, b"M": 60.0, b"S": 1.0, b"m": 1e-3, b"u": 1e-6, b"n": 1e-9}


def parse_timeout(value: bytes) -> float:
    """Seconds in a ``grpc-timeout`` header (1 to 8 digits and a unit); ``ValueError`` if not."""
    digits, unit = value[:-1], _TIMEOUT_UNITS.get(value[-1:])
    if unit is None or not 1 <= len(digits) <= 8 or not digits.isdigit():
        raise ValueError(f"malformed grpc-timeout {value.decode('latin-1')!r}")
    return int(digits) * unit


def _percent_encode(text: str) -> bytes:
    """``grpc-message`` is percent-encoded UTF-8 (printable ASCII except ``%`` stays)."""
    raw = text.encode("utf-8", "replace")
    return b"".join(bytes((b,)) if 0x20 <= b <= 0x7E and b != 0x25 else b"%%%02X" % b for b in raw)


def _status_headers(status: Status, message: str) -> list[tuple[bytes, bytes]]:
    headers = [(b"grpc-status", b"%d" % status)]
    if message:
        headers.append((b"grpc-message", _percent_encode(message)))
    return headers


RESPONSE_HEADERS = [
    (b":status", b"200"),
    (b"content-type", b"application/grpc"),
    (b"grpc-accept-encoding", b"identity"),
]


def _not_an_event_stream(event: Event) -> bytes:
    raise TypeError("only an Events call sets the encoder of its stream")


class CallHandler(Protocol):
    """What one call does with its stream; every method runs on the loop and never awaits."""

    def on_message(self, message: bytes) -> None:
        """A whole request message arrived; may send, or end the stream with ``finish``."""

    def on_half_close(self) -> None:
        """The client sent END_STREAM: it will send no more messages."""

    def on_end(self, reason: str) -> None:
        """The stream is over (finished, reset, or its connection lost); release everything."""


class StreamConnection(Protocol):
    """What a stream asks of its HTTP/2 connection, which owns the flush and the socket."""

    h2: h2.connection.H2Connection
    remote: str
    limit: int
    """Bytes a client may leave unsent (its window shut) or unread before it is cut."""
    budget: int
    """Work this connection may still do in the current loop turn (``guard.WORK_PER_TURN``)."""

    def defer(self, stream: ServerStream) -> None:
        """``stream`` has messages left for the next turn: call ``receive_deferred`` then."""

    def may_log(self) -> bool:
        """Whether one more access-log line fits this connection's log budget."""

    backlog: int
    """What all its streams keep pending after their last flush (each stream adds its own)."""

    def queue(self, stream: ServerStream) -> Flushable | None:
        """Put ``stream`` on the next flush; return what the hub must flush, if anything."""

    def mark(self, stream: ServerStream) -> None:
        """Put ``stream`` on the next flush and make sure that flush is scheduled."""

    def take_h2_output(self) -> None:
        """Move what h2 has queued to the next socket write (after every h2 send)."""

    def forget(self, stream_id: int) -> None:
        """The stream is closed on the wire: the connection stops routing frames to it."""


class ServerStream:
    """One HTTP/2 stream of a call: what is pending for it and how it ends.

    It is also the hub's ``Subscriber`` for an Events call (``encoder``, ``last_seq``, ``push``).
    """

    __slots__ = (
        "_data_suffix",
        "_half_closed",
        "_inbox",
        "_offset",
        "closed",
        "conn",
        "counted",
        "deadline",
        "deferred",
        "encoder",
        "ended",
        "handler",
        "headers_sent",
        "last_seq",
        "max_request",
        "messages_sent",
        "path",
        "pending",
        "pending_bytes",
        "queued",
        "reason",
        "status",
        "stream_id",
        "task",
        "trailers",
        "user_agent",
    )

    def __init__(
        self, conn: StreamConnection, stream_id: int, path: str, user_agent: str = ""
    ) -> None:
        self.conn = conn
        self.stream_id = stream_id
        self.path = path
        self.user_agent = sys.intern(user_agent)  # a handful of distinct strings, held once
        self.encoder: Encoder = _not_an_event_stream
        self.last_seq = 0
        self.messages_sent = 0
        self.pending: list[bytes] = []
        self.pending_bytes = 0
        self._offset = 0  # bytes of pending[0] already sent (a window opened part of it)
        self.counted = 0
        """``pending_bytes`` as last added to the connection's ``backlog``."""
        self.queued = False
        """Set and cleared by the connection: this stream is on its next flush."""
        self.headers_sent = False
        self.trailers: list[tuple[bytes, bytes]] | None = None
        self.ended = False
        """No more messages: the call is over (its trailers may still be waiting to go out)."""
        self.closed = False
        """Nothing more goes out: trailers sent, or the stream was reset or lost."""
        self.status = Status.OK
        self.reason = ""
        self.handler: CallHandler | None = None
        self.task: asyncio.Task[Any] | None = None
        self.deadline: asyncio.TimerHandle | None = None
        self._inbox: bytearray | None = None
        """Request bytes not yet split into messages; none between messages."""
        self.max_request = MAX_REQUEST_BYTES
        self.deferred = False
        """Messages wait in the inbox for the connection's next turn."""
        self._half_closed = False  # END_STREAM arrived behind deferred messages
        self._data_suffix = b"\x00\x00" + stream_id.to_bytes(4, "big")  # DATA, no flags, id

    def attach(self, handler: CallHandler) -> None:
        """Give the call its behaviour (chosen by path); the stream reports to it from now on.
        A handler may declare a smaller ``max_request_bytes``."""
        self.handler = handler
        self.max_request = getattr(handler, "max_request_bytes", MAX_REQUEST_BYTES)

    def expire_in(self, seconds: float) -> None:
        """End the call with DEADLINE_EXCEEDED ``seconds`` from now (the client's
        ``grpc-timeout``), as gRPC servers do: one timer per call, cancelled when it ends."""
        self.deadline = asyncio.get_running_loop().call_later(seconds, self._deadline_passed)

    def _deadline_passed(self) -> None:
        self.deadline = None
        self.finish(Status.DEADLINE_EXCEEDED, "deadline exceeded", reason="deadline")

    # --- sending (the hot path) ------------------------------------------------------------

    def push(self, data: bytes, count: int = 1) -> Flushable | None:
        """Queue framed bytes (``count`` messages); return the connection if it just became
        dirty. O(1), no await."""
        self.pending.append(data)
        self.pending_bytes += len(data)
        self.messages_sent += count
        if self.queued:
            return None
        return self.conn.queue(self)

    def send(self, message: bytes) -> None:
        """Queue one response message (outside the hub's fan-out) and schedule a flush."""
        if not self.ended:
            data = frame_message(message)
            self.pending.append(data)
            self.pending_bytes += len(data)
            self.messages_sent += 1
            self.conn.mark(self)

    def start(self) -> None:
        """Send the response headers at the next flush, even with no message yet."""
        self.conn.mark(self)

    def finish(self, status: Status, message: str = "", *, reason: str = "") -> None:
        """End the call: trailers follow what is pending; ``on_end`` runs now. Idempotent."""
        if self.ended:
            return
        self.trailers = _status_headers(status, message)
        self.conn.mark(self)
        self._end(reason or ("client" if status == Status.OK else "error"), status)

    def drop_pending(self) -> None:
        """Forget the messages not sent yet (the call is cut; its trailers still go out)."""
        self.pending.clear()
        self.pending_bytes = 0
        self._offset = 0
        self._settle()

    def _settle(self) -> None:
        """Tell the connection what stays pending after a flush (the memory budget counts it)."""
        if self.pending_bytes != self.counted:
            self.conn.backlog += self.pending_bytes - self.counted
            self.counted = self.pending_bytes

    def abort(self, reason: str, status: Status = Status.CANCELLED) -> None:
        """The stream is gone (reset by the client, or its connection lost): drop everything."""
        self.drop_pending()
        self.trailers = None
        self._close()
        self._end(reason, status)

    def _close(self) -> None:
        if not self.closed:
            self.closed = True
            self.conn.forget(self.stream_id)

    def _end(self, reason: str, status: Status) -> None:
        if self.ended:
            return
        self.ended = True
        self.reason = reason
        self.status = status
        if self.deadline is not None:
            self.deadline.cancel()
            self.deadline = None
        if self.task is not None and not self.task.done():
            self.task.cancel()
        handler, self.handler = self.handler, None
        if handler is not None:
            handler.on_end(reason)

    def run(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run ``coro`` for this call; it is cancelled when the stream ends."""
        self.task = asyncio.get_running_loop().create_task(coro)

    def send_pending(self, out: list[bytes]) -> None:
        """Frame what is pending as DATA (one frame unless the window is short) onto ``out``,
        the connection's next socket write, which it lends to each stream as it flushes."""
        if self.closed:
            self.drop_pending()
            return
        conn = self.conn
        h2c = conn.h2
        sid = self.stream_id
        try:
            if not self.headers_sent:
                self.headers_sent = True
                if self.trailers is not None and not self.pending:  # trailers-only response
                    h2c.send_headers(sid, RESPONSE_HEADERS[:2] + self.trailers, end_stream=True)
                    conn.take_h2_output()
                    self._close()
                    return
                h2c.send_headers(sid, RESPONSE_HEADERS)
                conn.take_h2_output()
            if self.pending and not self._send_data(h2c, out):
                return
            if self.trailers is not None:
                h2c.send_headers(sid, self.trailers, end_stream=True)
                conn.take_h2_output()
                self._close()
        except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError) as exc:
            log.debug("stream %d closed while sending: %s", sid, exc)
            self.abort("client")

    def _send_data(self, h2c: h2.connection.H2Connection, out: list[bytes]) -> bool:
        """Write DATA frames for what is pending; False if some of it must wait.

        The frames are built here instead of by ``h2.send_data`` (~5.5 us a call; A/B on 1000
        streams: 10-event bursts 5.0 -> 2.5 us per delivery, single events about 3x cheaper,
        docs/benchmarks.md). Flow control stays h2's: the same two windows ``send_data``
        decrements are decremented here, and WINDOW_UPDATE and SETTINGS keep adjusting them.
        h2 still sends every HEADERS frame, so its stream states hold.
        """
        stream = h2c.streams.get(self.stream_id)
        if stream is None or stream.closed:
            self.abort("client")
            return False
        window = min(h2c.outbound_flow_control_window, stream.outbound_flow_control_window)
        if window <= 0:
            self._settle()
            self._check_backlog()
            return False
        pending = self.pending
        size = self.pending_bytes
        max_frame = h2c.max_outbound_frame_size
        if size <= window and size <= max_frame and not self._offset:
            data = pending[0] if len(pending) == 1 else b"".join(pending)
            pending.clear()
            out.append(size.to_bytes(3, "big") + self._data_suffix)
            out.append(data)
            sent = size
        else:
            sent = self._send_slices(out, min(size, window), max_frame)
        h2c.outbound_flow_control_window -= sent
        stream.outbound_flow_control_window -= sent
        self.pending_bytes = size - sent
        if self.counted or sent < size:
            self._settle()
        if pending:
            self._check_backlog()
            return False
        return True

    def _send_slices(self, out: list[bytes], total: int, max_frame: int) -> int:
        """Frame the first ``total`` pending bytes; copy only what is sent, never the rest
        (a window opened a byte at a time must not copy the whole backlog each time)."""
        pending = self.pending
        suffix = self._data_suffix
        offset = self._offset
        if not offset and total == self.pending_bytes:
            # The whole backlog goes (a burst larger than one frame): join it once and cut
            # frames from that, as before the window guard; per-buffer slicing below is for a
            # window that opens part of it, and costs a Python step per message.
            data = pending[0] if len(pending) == 1 else b"".join(pending)
            pending.clear()
            for start in range(0, total, max_frame):
                chunk = data[start : start + max_frame]
                out.append(len(chunk).to_bytes(3, "big") + suffix)
                out.append(chunk)
            return total
        taken = 0  # whole buffers sent
        sent = 0
        while sent < total:
            n = min(total - sent, max_frame)
            out.append(n.to_bytes(3, "big") + suffix)
            need = n
            while need:
                buf = pending[taken]
                left = len(buf) - offset
                if left <= need:
                    out.append(buf[offset:] if offset else buf)
                    need -= left
                    taken += 1
                    offset = 0
                else:
                    out.append(buf[offset : offset + need])
                    offset += need
                    need = 0
            sent += n
        del pending[:taken]
        self._offset = offset
        return sent

    def _check_backlog(self) -> None:
        # A client that stops reading leaves its window shut: cut it, never wait for it.
        if self.pending_bytes > self.conn.limit and not self.ended:
            unsent = self.pending_bytes
            self.drop_pending()
            self.finish(
                Status.RESOURCE_EXHAUSTED,
                f"client too slow: {unsent} bytes unsent",
                reason="slow",
            )

    # --- receiving ---------------------------------------------------------------------------

    def receive(self, data: bytes) -> None:
        """Split DATA into gRPC messages and hand each to the handler, as long as the
        connection's budget for this turn lasts; the rest waits for its next turn."""
        inbox = self._inbox
        if inbox is None:
            inbox = self._inbox = bytearray(data)
        else:
            inbox += data
        if self.deferred:
            return
        conn = self.conn
        limit = self.max_request
        while len(inbox) >= 5 and not self.ended:
            length = int.from_bytes(inbox[1:5], "big")
            if length > limit:
                self.finish(
                    Status.RESOURCE_EXHAUSTED,
                    f"request message of {length} bytes exceeds {limit}",
                    reason="invalid",
                )
                return
            if len(inbox) < 5 + length:
                return
            if conn.budget <= 0:
                self.deferred = True
                conn.defer(self)
                return
            conn.budget -= MESSAGE_COST
            if inbox[0]:
                self.finish(Status.INTERNAL, "compressed message without grpc-encoding")
                return
            message = bytes(inbox[5 : 5 + length])
            del inbox[: 5 + length]
            if self.handler is not None:
                self.handler.on_message(message)
        if not inbox:
            self._inbox = None  # an idle stream keeps no read buffer

    def receive_deferred(self) -> None:
        """The connection's next turn: go on with the messages left in the inbox."""
        self.deferred = False
        self.receive(b"")
        if not self.deferred and self._half_closed and not self.ended:
            self._half_closed = False
            self.half_close()

    def half_close(self) -> None:
        if self.deferred:
            self._half_closed = True  # after the messages still waiting
        elif self._inbox and not self.ended:
            self.finish(Status.INTERNAL, "stream ended inside a message", reason="invalid")
        elif self.handler is not None:
            self.handler.on_half_close()


HandlerFactory = Callable[[ServerStream], CallHandler]

Metadata = Mapping[bytes, bytes]
"""A call's request headers (its metadata), names lower-case."""
