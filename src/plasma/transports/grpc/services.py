"""The standard gRPC extras on plasma's h2 layer: health checking and server reflection.

``grpc.health.v1.Health`` answers like ``GET /hc``, from the same health state (one probe per
interval for the whole process, ``plasma.health``): SERVING while the source's broker answers,
NOT_SERVING otherwise, for the service names ``""`` and ``proto.StreamService``. ``Watch``
streams are capped per connection and in total. Server
reflection (``grpc.reflection.v1`` and ``v1alpha``) lets grpcurl-style tools list the services
and describe ``proto.StreamService`` (the 2017 ``stream.proto``) without the .proto file.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any

from google.protobuf.message import DecodeError

from plasma.health import HealthMonitor
from plasma.transports.grpc import proto
from plasma.transports.grpc.stream import ServerStream, Status

__all__ = ["HEALTH_SERVICES", "SERVICE_NAMES", "HealthService", "ReflectionCall"]

log = logging.getLogger("plasma.transports.grpc")

HEALTH_SERVICES = ("", "proto.StreamService")
"""Service names the health service knows; both reflect the source's health."""
SERVICE_NAMES = (
    "proto.StreamService",
    "grpc.health.v1.Health",
    "grpc.reflection.v1.ServerReflection",
    "grpc.reflection.v1alpha.ServerReflection",
)
MAX_WATCHES = 1000
"""Concurrent ``Watch`` streams per process; more are refused with RESOURCE_EXHAUSTED."""
MAX_WATCHES_PER_CONNECTION = 16
"""Concurrent ``Watch`` streams per connection (a client needs one per service)."""

_SERVING = 1
_NOT_SERVING = 2
_SERVICE_UNKNOWN = 3


def _health(name: str) -> Any:
    """A message class of ``grpc.health.v1``."""
    return proto.get("health").message(f"grpc.health.v1.{name}")


def _reflection(name: str) -> Any:
    """A message class of ``grpc.reflection.v1``; v1alpha is the same on the wire, so the v1
    classes serve both paths."""
    return proto.get("reflection_v1").message(f"grpc.reflection.v1.{name}")


class _Call:
    """A call that parses one request type and reacts to each message."""

    __slots__ = ("_stream",)

    def __init__(self, stream: ServerStream) -> None:
        self._stream = stream

    def parse(self, message_class: Any, message: bytes) -> Any | None:
        try:
            return message_class.FromString(message)
        except DecodeError:
            self._stream.finish(Status.INVALID_ARGUMENT, "cannot parse request", reason="invalid")
            return None

    def on_message(self, message: bytes) -> None:
        raise NotImplementedError

    def on_half_close(self) -> None:
        pass

    def on_end(self, reason: str) -> None:
        pass


class HealthService:
    """Health calls, answered from the process's health monitor; ``Watch`` streams hear its
    changes."""

    def __init__(self, monitor: HealthMonitor) -> None:
        self._monitor = monitor
        self._watchers: dict[ServerStream, int] = {}
        self._per_connection: Counter[object] = Counter()
        monitor.add_listener(self._changed)

    async def status(self) -> int:
        return _SERVING if await self._monitor.current() else _NOT_SERVING

    def check(self, stream: ServerStream) -> _Call:
        return _Check(stream, self)

    def list(self, stream: ServerStream) -> _Call:
        return _List(stream, self)

    def watch(self, stream: ServerStream) -> _Call:
        return _Watch(stream, self)

    def add_watcher(self, stream: ServerStream) -> bool:
        """Count a new ``Watch``; ``False`` (and the stream refused) past either cap."""
        if len(self._watchers) >= MAX_WATCHES:
            refusal = f"more than {MAX_WATCHES} health watches"
        elif self._per_connection[stream.conn] >= MAX_WATCHES_PER_CONNECTION:
            refusal = f"more than {MAX_WATCHES_PER_CONNECTION} health watches on one connection"
        else:
            self._watchers[stream] = _SERVICE_UNKNOWN
            self._per_connection[stream.conn] += 1
            return True
        stream.finish(Status.RESOURCE_EXHAUSTED, refusal, reason="invalid")
        return False

    def watching(self, stream: ServerStream, status: int) -> None:
        """``stream`` was told ``status``; it hears of every change from now on."""
        if stream in self._watchers:
            self._watchers[stream] = status

    def remove_watcher(self, stream: ServerStream) -> None:
        if self._watchers.pop(stream, None) is not None:
            conn = stream.conn
            self._per_connection[conn] -= 1
            if self._per_connection[conn] <= 0:
                del self._per_connection[conn]

    def _changed(self, serving: bool) -> None:
        status = _SERVING if serving else _NOT_SERVING
        message = _health("HealthCheckResponse")(status=status).SerializeToString()
        for stream, last in list(self._watchers.items()):
            if last not in (status, _SERVICE_UNKNOWN):
                self._watchers[stream] = status
                stream.send(message)

    async def aclose(self) -> None:
        self._monitor.remove_listener(self._changed)
        self._watchers.clear()
        self._per_connection.clear()


class _Check(_Call):
    __slots__ = ("_health",)

    def __init__(self, stream: ServerStream, health: HealthService) -> None:
        super().__init__(stream)
        self._health = health

    def on_message(self, message: bytes) -> None:
        request = self.parse(_health("HealthCheckRequest"), message)
        if request is not None:
            self._stream.run(self._answer(request.service))

    async def _answer(self, service: str) -> None:
        stream = self._stream
        if service not in HEALTH_SERVICES:
            stream.finish(Status.NOT_FOUND, f"unknown service {service!r}")
            return
        stream.send(
            _health("HealthCheckResponse")(status=await self._health.status()).SerializeToString()
        )
        stream.finish(Status.OK)


class _List(_Check):
    __slots__ = ()

    def on_message(self, message: bytes) -> None:
        if self.parse(_health("HealthListRequest"), message) is not None:
            self._stream.run(self._answer_all())

    async def _answer_all(self) -> None:
        status = await self._health.status()
        response = _health("HealthListResponse")()
        for service in HEALTH_SERVICES:
            response.statuses[service].status = status
        self._stream.send(response.SerializeToString())
        self._stream.finish(Status.OK)


class _Watch(_Check):
    __slots__ = ()

    def on_message(self, message: bytes) -> None:
        request = self.parse(_health("HealthCheckRequest"), message)
        if request is not None and self._health.add_watcher(self._stream):
            self._stream.run(self._answer(request.service))

    async def _answer(self, service: str) -> None:
        stream = self._stream
        status = await self._health.status() if service in HEALTH_SERVICES else _SERVICE_UNKNOWN
        stream.send(_health("HealthCheckResponse")(status=status).SerializeToString())
        if status != _SERVICE_UNKNOWN:
            self._health.watching(stream, status)

    def on_end(self, reason: str) -> None:
        self._health.remove_watcher(self._stream)


def _find_file(request: Any) -> proto.ProtoFile | None:
    kind = request.WhichOneof("message_request")
    if kind == "file_by_filename":
        name = request.file_by_filename
        return next((f for f in proto.served_files() if f.name == name), None)
    symbol = request.file_containing_symbol
    if kind == "all_extension_numbers_of_type":
        symbol = request.all_extension_numbers_of_type
    return next((f for f in proto.served_files() if symbol in f.symbols), None)


REFLECTION_MAX_REQUEST = 4096
"""Largest reflection request: a host name and a file or symbol name fit many times over."""
MAX_HOST = 255
"""Longest ``host`` echoed back (a DNS name is at most 253 characters)."""


class ReflectionCall(_Call):
    """``ServerReflectionInfo``: one response per request, until the client half-closes."""

    __slots__ = ()
    max_request_bytes = REFLECTION_MAX_REQUEST

    def on_message(self, message: bytes) -> None:
        request = self.parse(_reflection("ServerReflectionRequest"), message)
        if request is None:
            return
        if len(request.host) > MAX_HOST:
            request.host = ""  # never echo what is no host name, least of all twice
        response = _reflection("ServerReflectionResponse")(
            valid_host=request.host, original_request=request
        )
        kind = request.WhichOneof("message_request")
        if kind == "list_services":
            for name in SERVICE_NAMES:
                response.list_services_response.service.add(name=name)
        elif kind in ("file_by_filename", "file_containing_symbol"):
            file = _find_file(request)
            if file is None:
                _not_found(response, f"{kind} not found")
            else:
                response.file_descriptor_response.file_descriptor_proto.append(file.serialized)
        elif kind == "all_extension_numbers_of_type":
            if _find_file(request) is None:
                _not_found(response, "type not found")
            else:  # plasma's messages declare no extensions
                response.all_extension_numbers_response.base_type_name = (
                    request.all_extension_numbers_of_type
                )
        elif kind == "file_containing_extension":
            _not_found(response, "plasma's messages declare no extensions")
        else:
            response.error_response.error_code = Status.INVALID_ARGUMENT
            response.error_response.error_message = "empty reflection request"
        self._stream.send(response.SerializeToString())

    def on_half_close(self) -> None:
        self._stream.finish(Status.OK)


def _not_found(response: Any, message: str) -> None:
    response.error_response.error_code = Status.NOT_FOUND
    response.error_response.error_message = message
