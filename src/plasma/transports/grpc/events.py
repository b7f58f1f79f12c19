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
import functools
import logging
import time
from typing import Any, NamedTuple

from google.protobuf.message import DecodeError

from plasma.config import LimitsConfig
from plasma.events import Event
from plasma.hub import Hub
from plasma.metrics import Metrics
from plasma.subscription import InvalidSubscription, parse_types
from plasma.transports.access import log_stream_end
from plasma.transports.grpc import proto
from plasma.transports.grpc.stream import ServerStream, Status, frame_message

__all__ = ["EVENTS_PATH", "EventsCall", "encode_payload"]

log = logging.getLogger("plasma.transports.grpc")

EVENTS_PATH = "/proto.StreamService/Events"


class _Messages(NamedTuple):
    Request: Any
    """The bidirectional Request: a superset of the 2017 one (it adds forceClose = 2)."""
    Payload: Any
    EventType: Any


@functools.cache
def _messages() -> _Messages:
    return _Messages(
        proto.get("stream_v2").message("proto.Request"),
        proto.get("stream").message("proto.Payload"),
        proto.get("stream").message("proto.EventType"),
    )


def encode_payload(event: Event) -> bytes:
    """An event as one framed gRPC ``Payload`` message; the hub calls this once per event."""
    messages = _messages()
    payload = messages.Payload(
        eventType=messages.EventType(type=event.type),
        data=event.data_text(),
        id=event.id,
    )
    return frame_message(payload.SerializeToString())


class EventsCall:
    """One Events stream: applies each Request to its subscription, and reports its end."""

    __slots__ = (
        "_busy",
        "_hub",
        "_limits",
        "_metrics",
        "_requests",
        "_started",
        "_stream",
        "_subscribed",
        "_types",
    )

    def __init__(
        self, stream: ServerStream, hub: Hub, metrics: Metrics, limits: LimitsConfig
    ) -> None:
        self._stream = stream
        self._hub = hub
        self._metrics = metrics
        self._limits = limits
        self._types: tuple[str, ...] = ()
        self._requests: collections.deque[Any] = collections.deque()
        self._busy = False
        self._subscribed = False
        self._started = time.monotonic()
        stream.encoder = encode_payload
        metrics.connection_opened("grpc")

    def on_message(self, message: bytes) -> None:
        try:
            request = _messages().Request.FromString(message)
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
        hub = self._hub
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
                limits = self._limits
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
            await self._hub.resume(stream, types, last_event_id)
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
        self._hub.unsubscribe(stream)
        self._metrics.connection_closed("grpc", reason)
        if reason in ("slow", "memory"):
            self._metrics.clients_dropped[reason] += 1
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
