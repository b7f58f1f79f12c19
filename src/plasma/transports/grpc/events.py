"""``/proto.StreamService/Events``: the gRPC event stream, for 2017 and bidirectional clients.

Both interfaces call the same path. Every ``Request`` that arrives on the stream replaces the
subscription set; an empty list unsubscribes (the very first Request must name a type);
``forceClose`` ends the stream with status OK; the client's half-close does not end it (a 2017
client half-closes right after its one Request). The response headers go out once the first
Request is applied, so a client that has them knows it is subscribed.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from typing import TYPE_CHECKING, Any

from google.protobuf.message import DecodeError

from plasma.events import Event
from plasma.subscription import InvalidSubscription, parse_types
from plasma.transports.access import log_stream_end
from plasma.transports.grpc import proto as grpc_proto
from plasma.transports.grpc.stream import ServerStream, Status, frame_message

if TYPE_CHECKING:
    from plasma.transports.grpc.transport import GrpcTransport

__all__ = ["EVENTS_PATH", "EventsCall", "encode_payload"]

log = logging.getLogger("plasma.transports.grpc")

EVENTS_PATH = "/proto.StreamService/Events"

# The bidirectional Request is a superset of the 2017 one (it adds forceClose = 2).
_Request: Any = grpc_proto.stream_v2.message("proto.Request")
_Payload: Any = grpc_proto.stream.message("proto.Payload")
_EventType: Any = grpc_proto.stream.message("proto.EventType")


def encode_payload(event: Event) -> bytes:
    """An event as one framed gRPC ``Payload`` message; the hub calls this once per event."""
    payload = _Payload(
        eventType=_EventType(type=event.type),
        data=event.data.decode("utf-8", "replace"),
        id=event.id,
    )
    return frame_message(payload.SerializeToString())


class EventsCall:
    """One Events stream: applies each Request to its subscription, and reports its end."""

    __slots__ = ("_busy", "_grpc", "_requests", "_started", "_stream", "_subscribed", "_types")

    def __init__(self, stream: ServerStream, grpc: GrpcTransport) -> None:
        self._stream = stream
        self._grpc = grpc
        self._types: tuple[str, ...] = ()
        self._requests: collections.deque[Any] = collections.deque()
        self._busy = False
        self._subscribed = False
        self._started = time.monotonic()
        stream.encoder = encode_payload
        grpc.metrics.connection_opened("grpc")

    def on_message(self, message: bytes) -> None:
        try:
            request = _Request.FromString(message)
        except DecodeError:
            self._stream.finish(Status.INVALID_ARGUMENT, "cannot parse Request", reason="invalid")
            return
        self._requests.append(request)
        if not self._busy:
            self._apply_requests()

    def on_half_close(self) -> None:
        if not self._subscribed and not self._requests and not self._busy:
            self._stream.finish(Status.INVALID_ARGUMENT, "no Request was sent", reason="invalid")

    def _apply_requests(self) -> None:
        stream = self._stream
        hub = self._grpc.hub
        while self._requests and not stream.ended:
            request = self._requests.popleft()
            if request.forceClose:
                stream.finish(Status.OK, reason="client")
                return
            names = [e.type for e in request.Events]
            first = not self._subscribed
            if not any(name.strip() for name in names) and not first:
                hub.unsubscribe(stream)  # an empty list on a live stream unsubscribes
                self._types = ()
                continue
            try:
                limits = self._grpc.limits
                types = parse_types(
                    names, max_types=limits.max_types, max_length=limits.max_type_length
                )
            except InvalidSubscription as exc:
                stream.finish(Status.INVALID_ARGUMENT, str(exc), reason="invalid")
                return
            self._types = types
            self._subscribed = True
            if request.lastEventId:
                self._busy = True
                stream.run(self._resume(types, request.lastEventId))
                return
            hub.subscribe(stream, types)
            stream.start()

    async def _resume(self, types: tuple[str, ...], last_event_id: str) -> None:
        stream = self._stream
        try:
            await self._grpc.hub.resume(stream, types, last_event_id)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("resuming a gRPC stream failed")
            stream.finish(Status.INTERNAL, "resume failed", reason="error")
            return
        self._busy = False
        stream.start()
        self._apply_requests()

    def on_end(self, reason: str) -> None:
        stream = self._stream
        grpc = self._grpc
        grpc.hub.unsubscribe(stream)
        grpc.metrics.connection_closed("grpc", reason)
        if reason == "slow":
            grpc.metrics.clients_dropped["slow"] += 1
        log_stream_end(
            transport="grpc",
            remote=stream.conn.remote,
            path=stream.path,
            types=self._types,
            started=self._started,
            events=stream.messages_sent,
            reason=reason,
            status=stream.status.name,
        )
