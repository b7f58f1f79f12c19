"""``/proto.StreamService/Events``: the gRPC event stream, for 2017 and bidirectional clients.

Both interfaces call the same path. Every ``Request`` that arrives on the stream replaces the
subscription set; an empty list unsubscribes (the very first Request must name a type);
``forceClose`` ends the stream with status OK; the client's half-close does not end it (a 2017
client half-closes right after its one Request). The response headers go out once the first
Request is applied, so a client that has them knows it is subscribed.

With access control on, every Request's types are checked against the call's token (its
``authorization`` metadata): a refusal ends the call with ``UNAUTHENTICATED`` or
``PERMISSION_DENIED``, nothing subscribed. A token that expires ends the call then, with
``UNAUTHENTICATED`` "token expired" (one timer per call, set at the first subscription).
"""

from __future__ import annotations

import asyncio
import collections
import functools
import logging
import time
from typing import Any, NamedTuple

from google.protobuf.message import DecodeError

from plasma.auth.authorizer import Authorizer
from plasma.auth.credentials import bearer_token
from plasma.auth.errors import AuthError
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
        "_authorization",
        "_authorizer",
        "_busy",
        "_expiry",
        "_hub",
        "_limits",
        "_metrics",
        "_requests",
        "_started",
        "_stream",
        "_subject",
        "_subscribed",
        "_types",
    )

    def __init__(
        self,
        stream: ServerStream,
        hub: Hub,
        metrics: Metrics,
        limits: LimitsConfig,
        *,
        authorizer: Authorizer | None = None,
        authorization: str | None = None,
    ) -> None:
        self._stream = stream
        self._authorizer = authorizer or Authorizer(None)
        self._authorization = authorization
        self._subject: str | None = None
        self._expiry: asyncio.TimerHandle | None = None
        self._hub = hub
        self._metrics = metrics
        self._limits = limits
        self._types: tuple[str, ...] = ()
        self._requests: collections.deque[Any] | None = None
        """Requests not applied yet (while a resume runs); made when needed, 760 bytes."""
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
        if self._requests is None:
            self._requests = collections.deque()
        self._requests.append(request)
        if not self._busy:
            self._apply_requests()

    def on_half_close(self) -> None:
        if not self._subscribed and not self._requests and not self._busy:
            self._stream.finish(Status.INVALID_ARGUMENT, "no Request was sent", reason="invalid")

    def _apply_requests(self) -> None:
        stream = self._stream
        hub = self._hub
        requests = self._requests
        while requests and not stream.ended:
            request = requests.popleft()
            if request.forceClose:
                stream.finish(Status.OK, reason="client")
                return
            if len(request.Events) > self._limits.max_types:
                # Counted as sent: 50,000 copies of one type are refused before any work.
                message = f"more than {self._limits.max_types} event types"
                stream.finish(Status.INVALID_ARGUMENT, message, reason="invalid")
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
            if not self._authorize(types):
                return
            self._types = types
            self._subscribed = True
            if request.lastEventId:
                self._busy = True
                stream.run(self._resume(types, request.lastEventId))
                return
            hub.subscribe(stream, types)
            stream.start()
        if not requests:
            self._requests = None  # an idle stream keeps no queue

    def _authorize(self, types: tuple[str, ...]) -> bool:
        """Whether the call's token may read ``types``; if not, end the call and say why."""
        authorizer = self._authorizer
        if not authorizer.enabled:
            return True
        try:
            token = bearer_token(self._authorization)
            identity = authorizer.check_subscribe(token, types, count=False)
        except AuthError as exc:
            authorizer.refused(exc)
            if exc.status == 403:
                self._stream.finish(Status.PERMISSION_DENIED, str(exc), reason="forbidden")
            else:
                self._stream.finish(Status.UNAUTHENTICATED, str(exc), reason="unauthenticated")
            return False
        if identity is not None:
            self._subject = identity.subject
            if identity.expires_at is not None and self._expiry is None:
                delay = max(0.0, identity.expires_at - time.time())
                self._expiry = asyncio.get_running_loop().call_later(delay, self._expired)
        return True

    def _expired(self) -> None:
        self._expiry = None
        self._stream.finish(Status.UNAUTHENTICATED, "token expired", reason="expired")

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
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
        stream = self._stream
        self._hub.unsubscribe(stream)
        self._metrics.connection_closed("grpc", reason)
        if reason in ("slow", "memory"):
            self._metrics.clients_dropped[reason] += 1
        if not stream.conn.may_log():
            return  # the connection's log budget is spent: counted, logged when it ends
        log_stream_end(
            transport="grpc",
            remote=stream.conn.remote,
            method="POST",
            path=stream.path,
            user_agent=stream.user_agent,
            types=self._types,
            started=self._started,
            events=stream.messages_sent,
            reason=reason,
            status=stream.status.name,
            subject=self._subject,
        )
