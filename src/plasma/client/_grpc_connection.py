"""Subscribing over gRPC with grpcio (the ``grpc`` extra: ``pip install 'plasma-push[grpc]'``).

The call is always the bidirectional form of ``/proto.StreamService/Events``
(``stream_v2.proto``): the request side stays open, so ``resubscribe`` can send a new
``Request`` on the same stream. Each connection gets a fresh channel, so reconnect timing is
this client's back-off alone, not grpcio's own channel back-off on top of it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from plasma.client._connection import Lost, item_from
from plasma.client._errors import ClientError, SubscribeError
from plasma.client._models import Event, Gap, loads
from plasma.client._wire import WireError, decode_payload, encode_request

if TYPE_CHECKING:
    import grpc
    import grpc.aio

__all__ = ["METHOD", "GrpcConnection", "import_grpc"]

METHOD = "/proto.StreamService/Events"

# Statuses that a new attempt cannot fix: the request itself is refused.
_REFUSED = frozenset(
    {
        "INVALID_ARGUMENT",
        "UNAUTHENTICATED",
        "PERMISSION_DENIED",
        "UNIMPLEMENTED",
        "NOT_FOUND",
        "FAILED_PRECONDITION",
    }
)


def import_grpc() -> Any:
    """grpcio, or a ``ClientError`` saying how to install it."""
    try:
        import grpc
        import grpc.aio
    except ImportError:
        raise ClientError(
            "transport='grpc' needs grpcio: pip install 'plasma-push[grpc]'"
        ) from None
    return grpc


def grpc_target(url: str) -> tuple[str, bool]:
    """``host:port`` and whether to use TLS, from ``http://h:p``, ``https://h:p`` or ``h:p``."""
    for scheme, secure in (
        ("https://", True),
        ("http://", False),
        ("grpcs://", True),
        ("grpc://", False),
    ):
        if url.startswith(scheme):
            return url[len(scheme) :].split("/", 1)[0], secure
    return url.split("/", 1)[0], False


class GrpcConnection:
    """One ``Events`` call on its own channel."""

    __slots__ = ("_call", "_channel", "_closing", "retry_hint")

    def __init__(self, channel: grpc.aio.Channel, call: Any) -> None:
        self._channel = channel
        self._call = call
        self._closing = False
        self.retry_hint: float | None = None

    @classmethod
    async def open(
        cls,
        url: str,
        types: Sequence[str],
        *,
        last_event_id: str | None,
        token: str | None,
        root_certificates: bytes | None,
    ) -> GrpcConnection:
        """Start the call; return once the server's response headers say it is subscribed."""
        grpc = import_grpc()
        target, secure = grpc_target(url)
        options = [("grpc.keepalive_time_ms", 30_000), ("grpc.keepalive_timeout_ms", 10_000)]
        if secure or root_certificates is not None:
            credentials = grpc.ssl_channel_credentials(root_certificates)
            channel = grpc.aio.secure_channel(target, credentials, options=options)
        else:
            channel = grpc.aio.insecure_channel(target, options=options)
        metadata = (("authorization", f"Bearer {token}"),) if token else ()
        call = channel.stream_stream(METHOD)(metadata=metadata)
        connection = cls(channel, call)
        try:
            await call.write(encode_request(types, last_event_id or ""))
            await call.initial_metadata()
            if call.done():
                await connection._raise_status()
        except grpc.aio.AioRpcError as exc:
            await connection.aclose()
            raise _classify(exc.code().name, exc.details(), url) from None
        except BaseException:
            await connection.aclose()
            raise
        return connection

    async def _raise_status(self) -> None:
        code = await self._call.code()
        raise _classify(code.name, await self._call.details(), "")

    async def next(self) -> Event | Gap | None:
        grpc = import_grpc()
        try:
            message = await self._call.read()
        except grpc.aio.AioRpcError as exc:
            raise _classify(exc.code().name, exc.details(), "") from None
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if self._closing and task is not None and not task.cancelling():
                return None  # aclose() cancelled the call under us
            raise
        if message is grpc.aio.EOF:
            if (await self._call.code()).name != "OK":
                await self._raise_status()
            return None
        try:
            event_type, data, event_id = decode_payload(message)
            value = loads(data) if data else None
        except (WireError, ValueError) as exc:
            raise Lost(f"the server sent a payload that cannot be read: {exc}") from None
        return item_from(event_id, event_type, value)

    async def resubscribe(self, types: Sequence[str]) -> None:
        grpc = import_grpc()
        try:
            await self._call.write(encode_request(types))
        except (grpc.aio.AioRpcError, asyncio.InvalidStateError) as exc:
            raise Lost(f"cannot resubscribe on this stream: {exc}") from None

    async def aclose(self) -> None:
        if self._closing:
            return
        self._closing = True
        self._call.cancel()
        await self._channel.close()


def _classify(code: str, details: str | None, url: str) -> Exception:
    where = f" ({url})" if url else ""
    reason = f"gRPC {code}{where}: {details}" if details else f"gRPC {code}{where}"
    if code in _REFUSED:
        return SubscribeError(reason, code)
    return Lost(reason)
