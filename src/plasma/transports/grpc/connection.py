"""gRPC over HTTP/2 on the ``h2`` library: one connection, its streams, and their flushing.

``h2`` runs the HTTP/2 state machine, flow control and HPACK; this module and ``stream.py``
add what gRPC puts on top: the 5-byte message framing, the content-type check, and
``grpc-status`` / ``grpc-message`` trailers. A call's behaviour lives in a ``CallHandler``
its ``ConnectionHost`` chooses by path.

Sending follows the hub's rule (one socket write per connection per loop iteration, see
``plasma.hub``): streams have the connection queue them when they become dirty; its ``flush``
turns each dirty stream's pending messages into one DATA frame and does one socket ``write``
for all of its streams. The flush state (``dirty``, ``out``, ``flush_coming``) is written only
here.

Reading is where one client could stall everyone, so the read path bounds it (``guard``): a
read is fed to h2 in turns of at most ``WORK_PER_TURN`` frames and request messages, reading
paused until the rest is done a loop turn later; resets and control frames draw on token
buckets, and a connection that empties one gets GOAWAY ``ENHANCE_YOUR_CALM``.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Callable
from typing import Any, Protocol, cast

import h2.connection
import h2.errors
import h2.events
import h2.exceptions

from plasma.buffers import ClientBuffers
from plasma.config import LimitsConfig
from plasma.hub import Flushable
from plasma.metrics import Metrics
from plasma.transports.access import log_lines_suppressed
from plasma.transports.grpc.guard import LINGER, TINY_WINDOW, WORK_PER_TURN, ReadGuard
from plasma.transports.grpc.h2state import new_connection
from plasma.transports.grpc.stream import (
    CallHandler,
    Metadata,
    ServerStream,
    Status,
    parse_timeout,
)
from plasma.transports.listener import H2_PREFACE

__all__ = ["HANDSHAKE_TIMEOUT", "ConnectionHost", "GrpcConnection"]

log = logging.getLogger("plasma.transports.grpc")

HANDSHAKE_TIMEOUT = 3.0
"""Seconds a new connection has to send its SETTINGS frame after the preface."""


class ConnectionHost(Protocol):
    """What a connection asks of the transport that owns it: limits, routing and the hub."""

    limits: LimitsConfig
    metrics: Metrics
    client_buffer: int
    buffers: ClientBuffers

    def open_call(
        self, stream: ServerStream, path: bytes, metadata: Metadata
    ) -> CallHandler | None:
        """The handler of a new call, or ``None`` once the stream is finished (refused)."""

    def mark_dirty(self, target: Flushable) -> None:
        """Have ``target`` flushed with the hub's next flush."""

    def add_connection(self, conn: GrpcConnection) -> None:
        """A connection started (shutdown must reach it)."""

    def discard_connection(self, conn: GrpcConnection) -> None:
        """A connection is gone."""


class GrpcConnection(asyncio.Protocol):
    """One HTTP/2 connection: its h2 state, its streams, and the streams waiting to flush."""

    __slots__ = (
        "_handshake_timer",
        "_header",
        "_skip",
        "backlog",
        "budget",
        "closing",
        "counted",
        "dirty",
        "flush_coming",
        "guard",
        "h2",
        "host",
        "limit",
        "out",
        "remote",
        "streams",
        "transport",
    )

    def __init__(self, host: ConnectionHost) -> None:
        self.host = host
        self.limit = host.client_buffer
        limits = host.limits
        self.h2: h2.connection.H2Connection = new_connection(
            limits.grpc_max_streams, limits.grpc_max_frame_size
        )
        self.transport: asyncio.Transport | None = None
        self.streams: dict[int, ServerStream] = {}
        self.dirty: list[ServerStream] = []
        self.out: list[bytes] = []
        """Bytes for the next socket write, in order: h2's output, then DATA frames."""
        self.flush_coming = False
        """A flush will run (the hub's, or the one ending ``data_received``): ask for no other."""
        self.closing = False
        self.backlog = 0
        """Bytes its streams keep pending for a flow-control window (kept by the streams)."""
        self.counted = 0
        """Bytes it held at the last flush, as ``ClientBuffers`` counts them."""
        self.remote = ""
        self._handshake_timer: asyncio.TimerHandle | None = None
        self.guard = ReadGuard(len(H2_PREFACE))
        """The read path's state and budgets."""
        self.budget = WORK_PER_TURN
        """Work left in this turn (a frame costs 1, a request message ``MESSAGE_COST``)."""

    # --- asyncio.Protocol ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        self.remote = str(peer[0]) if isinstance(peer, tuple) else ""
        self.host.add_connection(self)
        self._handshake_timer = asyncio.get_running_loop().call_later(
            HANDSHAKE_TIMEOUT, self._handshake_timed_out
        )
        self.h2.initiate_connection()
        self.take_h2_output()
        self._write_out()

    def data_received(self, data: bytes) -> None:
        guard = self.guard
        if guard.lingering:
            return  # told to go away: read and dropped until the linger ends
        if guard.turn_coming:
            guard.inbound += data  # (a TLS transport may deliver a little after the pause)
            return
        self._turn(data)

    def _turn(self, data: bytes) -> None:
        """One loop turn of this connection's work: messages left over from the last turn,
        then the next frames of ``data``, ``WORK_PER_TURN`` units in all; the rest of ``data``
        waits for the next turn, with reading paused meanwhile."""
        self._flush_at_end_of_callback()
        guard = self.guard
        self.budget = WORK_PER_TURN
        if guard.waiting:
            self._receive_deferred()
        rest = data
        if data and self.budget > 0:
            cut = guard.split(data, self.budget, self.h2.max_inbound_frame_size)
            if cut < 0:
                # h2 would buffer the whole frame before refusing it: refuse it by its header.
                self.h2.close_connection(error_code=h2.errors.ErrorCodes.FRAME_SIZE_ERROR)
                self._hang_up("frame larger than SETTINGS_MAX_FRAME_SIZE")
                return
            if cut == len(data):
                chunk, rest = data, b""
            else:
                chunk, rest = data[:cut], data[cut:]
            if not self._feed(chunk):
                return
        self.take_h2_output()  # acks, window updates, headers of refused calls
        self.flush()
        transport = self.transport
        if transport is None or guard.lingering or transport.is_closing():
            return
        if rest or guard.waiting:
            guard.inbound = rest
            if not guard.paused:
                guard.paused = True
                transport.pause_reading()
            guard.turn_coming = True
            asyncio.get_running_loop().call_soon(self._next_turn)
        elif guard.paused:
            guard.paused = False
            transport.resume_reading()

    def _next_turn(self) -> None:
        guard = self.guard
        guard.turn_coming = False
        if self.transport is None or guard.lingering:
            return
        data, guard.inbound = guard.inbound, b""
        self._turn(data)

    def _feed(self, chunk: bytes) -> bool:
        """Hand whole frames to h2 and dispatch its events; False once the connection ends."""
        try:
            events = self.h2.receive_data(chunk)
        except h2.exceptions.ProtocolError as exc:
            # h2 has queued a GOAWAY with the right error code; send it and hang up.
            self._hang_up(str(exc))
            return False
        for event in events:
            handle = _DISPATCH.get(type(event))
            if handle is not None:
                handle(self, event)
                if self.guard.lingering:
                    return False
        return True

    def _receive_deferred(self) -> None:
        guard = self.guard
        waiting, guard.waiting = guard.waiting, []
        for i, stream in enumerate(waiting):
            if self.budget <= 0:
                guard.waiting.extend(waiting[i:])  # still deferred: the turn after
                return
            if not stream.ended:
                stream.receive_deferred()

    def defer(self, stream: ServerStream) -> None:
        self.guard.waiting.append(stream)

    def may_log(self) -> bool:
        return self.guard.log_line()

    def _control_frame(self, what: str) -> bool:
        """Count one control frame; False (and GOAWAY) once the client sends too many."""
        if self.guard.control_frame():
            return True
        self._calm(f"{what} flood")
        return False

    def eof_received(self) -> bool | None:
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        if self._handshake_timer is not None:
            self._handshake_timer.cancel()
            self._handshake_timer = None
        guard = self.guard
        if guard.linger_timer is not None:
            guard.linger_timer.cancel()
            guard.linger_timer = None
        self._close_streams("client", Status.CANCELLED)
        self.dirty.clear()
        guard.waiting.clear()
        guard.inbound = b""
        self.transport = None
        self.host.buffers.release(self)
        self.host.discard_connection(self)
        if guard.lines_suppressed:
            log_lines_suppressed(transport="grpc", remote=self.remote, lines=guard.lines_suppressed)

    # --- h2 events ---------------------------------------------------------------------------

    def _on_settings(self, event: h2.events.RemoteSettingsChanged) -> None:
        if self._handshake_timer is not None:
            self._handshake_timer.cancel()
            self._handshake_timer = None
        elif not self._control_frame("SETTINGS"):  # the first SETTINGS is the handshake
            return
        self._queue(self._backlogged(None))  # a new initial window size may unblock streams

    def _on_request(self, event: h2.events.RequestReceived) -> None:
        sid = event.stream_id
        headers = dict(event.headers or ())
        path = headers.get(b":path", b"")
        if self.closing:
            self.h2.reset_stream(sid, h2.errors.ErrorCodes.REFUSED_STREAM)
            return
        if headers.get(b":method") != b"POST":
            self.h2.send_headers(sid, [(b":status", b"405")], end_stream=True)
            return
        if not headers.get(b"content-type", b"").startswith(b"application/grpc"):
            self.h2.send_headers(sid, [(b":status", b"415")], end_stream=True)
            return
        stream = ServerStream(
            self,
            sid,
            sys.intern(path.decode("utf-8", "replace")),  # a few distinct paths, held once
            headers.get(b"user-agent", b"").decode("latin-1"),
        )
        self.streams[sid] = stream
        encoding = headers.get(b"grpc-encoding", b"identity")
        if encoding != b"identity":
            stream.finish(
                Status.UNIMPLEMENTED, f"grpc-encoding {encoding.decode(errors='replace')!r}"
            )
            return
        timeout = headers.get(b"grpc-timeout")
        try:
            seconds = None if timeout is None else parse_timeout(timeout)
        except ValueError as exc:
            stream.finish(Status.INTERNAL, str(exc))  # what grpc-go answers
            return
        handler = self.host.open_call(stream, path, headers)
        if handler is not None:
            stream.attach(handler)
            if seconds is not None:
                stream.expire_in(seconds)

    def _on_data(self, event: h2.events.DataReceived) -> None:
        empty = not event.flow_controlled_length and event.stream_ended is None
        if empty and not self._control_frame("empty DATA"):  # they carry nothing but work
            return
        # Messages are consumed within a turn or two (and bounded), so the window is returned
        # at once: reading stays paused while any are left.
        self.h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
        stream = self.streams.get(event.stream_id)
        if stream is not None and not stream.ended and event.data:
            stream.receive(event.data)

    def _on_stream_ended(self, event: h2.events.StreamEnded) -> None:
        stream = self.streams.get(event.stream_id)
        if stream is not None and not stream.ended:
            stream.half_close()

    def _on_reset(self, event: h2.events.StreamReset) -> None:
        if event.remote_reset and not self.guard.reset():
            self._calm("too many stream resets")
            return
        stream = self.streams.get(event.stream_id)
        if stream is not None:
            stream.abort("client")

    def _on_window(self, event: h2.events.WindowUpdated) -> None:
        backlog = self._backlogged(event.stream_id or None)
        # A small opening where data waits buys a send from the backlog: counted, so 1-byte
        # openings are the abuse they are. One where nothing waits costs nothing more than h2's
        # own bookkeeping, and grpcio sends many as it reads many small responses: not counted.
        if backlog and event.delta < TINY_WINDOW and not self._control_frame("tiny WINDOW_UPDATE"):
            return
        self._queue(backlog)

    def _on_control(self, event: h2.events.Event) -> None:
        """PING (h2 has queued the ack), PRIORITY, unknown frames: only their count matters."""
        self._control_frame(type(event).__name__)

    def _on_goaway(self, event: h2.events.ConnectionTerminated) -> None:
        self._close_streams("client", Status.CANCELLED)
        if self.transport is not None:
            self.transport.close()

    # --- flushing ------------------------------------------------------------------------------

    def queue(self, stream: ServerStream) -> GrpcConnection | None:
        """Put ``stream`` on the next flush; return this connection if the caller must have
        the hub flush it (the fan-out collects it; ``mark`` asks the hub itself)."""
        stream.queued = True
        self.dirty.append(stream)
        if self.flush_coming:
            return None
        self.flush_coming = True
        return self

    def mark(self, stream: ServerStream) -> None:
        """Put ``stream`` on the next flush and make sure one is scheduled."""
        if not stream.queued:
            stream.queued = True
            self.dirty.append(stream)
        if not self.flush_coming:
            self.flush_coming = True
            self.host.mark_dirty(self)

    def _flush_at_end_of_callback(self) -> None:
        """``data_received`` ends with a flush: what handlers queue meanwhile needs no other."""
        self.flush_coming = True

    def _backlogged(self, stream_id: int | None) -> list[ServerStream]:
        """The streams (all, or one) whose data or trailers wait for window."""
        streams = self.streams.values() if stream_id is None else (self.streams.get(stream_id),)
        return [s for s in streams if s is not None and (s.pending or s.trailers)]

    def _queue(self, streams: list[ServerStream]) -> None:
        """Flush these streams at the next flush (each once)."""
        for stream in streams:
            if not stream.queued:
                stream.queued = True
                self.dirty.append(stream)

    def flush(self) -> None:
        """One DATA frame per dirty stream, then one socket write; never awaits or raises."""
        self.flush_coming = False
        dirty = self.dirty
        if dirty:
            self.dirty = []
            out = self.out
            for stream in dirty:
                stream.queued = False
                stream.send_pending(out)
        self._write_out()

    def take_h2_output(self) -> None:
        """Move what h2 has queued to ``out`` (call after every h2 send, to keep the order)."""
        data = self.h2.data_to_send()
        if data:
            self.out.append(data)

    def _write_out(self) -> None:
        """Write ``out`` in one call. h2's own output must have been taken: every h2 call is
        followed by ``take_h2_output``, so h2's buffer is empty between callbacks."""
        out = self.out
        if not out:
            return
        data = out[0] if len(out) == 1 else b"".join(out)
        out.clear()
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        transport.write(data)
        host = self.host
        host.metrics.bytes_written += len(data)
        written = transport.get_write_buffer_size()
        # A client that does not read fills the socket buffer: cut it, never wait for it.
        if written > self.limit:
            log.info("dropping a slow gRPC connection", extra={"remote": self.remote})
            self.cut("slow")
            return
        held = written + self.backlog
        if held or self.counted:
            host.buffers.update(self, held)

    def buffered_bytes(self) -> int:
        """Its socket buffer and its streams' pending bytes (``ClientBuffers`` recounts)."""
        transport = self.transport
        return self.backlog + (transport.get_write_buffer_size() if transport else 0)

    def cut(self, reason: str) -> None:
        """End every call with RESOURCE_EXHAUSTED and drop the connection and its bytes now."""
        self._close_streams(reason, Status.RESOURCE_EXHAUSTED)
        if self.transport is not None:
            self.transport.abort()

    # --- closing -------------------------------------------------------------------------------

    def _hang_up(self, error: str) -> None:
        log.debug("closing gRPC connection after a protocol error", extra={"error": error})
        self.flush_coming = False
        self.take_h2_output()
        self._write_out()
        self._close_streams("protocol", Status.INTERNAL)
        if self.transport is not None:
            self.transport.close()

    def _calm(self, why: str) -> None:
        """GOAWAY ENHANCE_YOUR_CALM for a client that abuses the protocol; then read and drop
        what it sends for ``LINGER`` seconds, so the GOAWAY arrives before the cut (closing
        with unread input would send a reset that can overtake it). Every stream is over by
        then, so nothing is written after the GOAWAY."""
        log.warning(
            "closing an abusive gRPC connection", extra={"remote": self.remote, "error": why}
        )
        self.closing = True
        self._close_streams("abuse", Status.CANCELLED)
        self.h2.close_connection(
            error_code=h2.errors.ErrorCodes.ENHANCE_YOUR_CALM, additional_data=why.encode()
        )
        self.take_h2_output()
        self.flush()
        guard = self.guard
        guard.lingering = True
        guard.inbound = b""
        guard.waiting.clear()
        transport = self.transport
        if transport is None:
            return
        if guard.paused:
            guard.paused = False
            transport.resume_reading()
        guard.linger_timer = asyncio.get_running_loop().call_later(LINGER, self.abort)

    def _close_streams(self, reason: str, status: Status) -> None:
        for stream in list(self.streams.values()):
            stream.abort(reason, status)

    def _handshake_timed_out(self) -> None:
        self._handshake_timer = None
        if self.transport is not None:
            log.debug("closing a silent gRPC connection", extra={"remote": self.remote})
            self.transport.abort()

    def shutdown(self, reason: str) -> None:
        """End every call with UNAVAILABLE, say GOAWAY, and close once that is written."""
        self.closing = True
        for stream in list(self.streams.values()):
            stream.drop_pending()
            stream.finish(Status.UNAVAILABLE, "server shutting down", reason=reason)
        self.flush()
        self.h2.close_connection()
        self.take_h2_output()
        self._write_out()
        if self.transport is not None:
            self.transport.close()

    def forget(self, stream_id: int) -> None:
        """Stop routing frames to a stream that is closed on the wire."""
        self.streams.pop(stream_id, None)

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()


_DISPATCH: dict[type, Callable[[GrpcConnection, Any], None]] = {
    h2.events.RemoteSettingsChanged: GrpcConnection._on_settings,
    h2.events.RequestReceived: GrpcConnection._on_request,
    h2.events.DataReceived: GrpcConnection._on_data,
    h2.events.StreamEnded: GrpcConnection._on_stream_ended,
    h2.events.StreamReset: GrpcConnection._on_reset,
    h2.events.WindowUpdated: GrpcConnection._on_window,
    h2.events.ConnectionTerminated: GrpcConnection._on_goaway,
    h2.events.PingReceived: GrpcConnection._on_control,
    h2.events.PriorityUpdated: GrpcConnection._on_control,
    h2.events.UnknownFrameReceived: GrpcConnection._on_control,
}
