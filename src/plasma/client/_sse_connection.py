"""Subscribing over Server-Sent Events with aiohttp's HTTP client."""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from collections.abc import Mapping, Sequence

import aiohttp

from plasma.client._connection import Lost, envelope, item_from
from plasma.client._errors import ClientError, ClosedError, SubscribeError
from plasma.client._models import Event, Gap
from plasma.client._sse import SSEFrame, SSEParser, StreamTooLong

__all__ = ["SSEConnection", "retry_after_seconds"]

_READ_SIZE = 1 << 16


def retry_after_seconds(value: str | None) -> float | None:
    """``Retry-After`` in seconds (the delay form; an HTTP date is ignored)."""
    if value and value.strip().isdigit():
        return float(value.strip())
    return None


def _reason(status: int, body: bytes) -> str:
    text = body.decode("utf-8", "replace").strip().splitlines()
    return f"HTTP {status}: {text[0][:200]}" if text else f"HTTP {status}"


class SSEConnection:
    """One ``GET`` with ``Accept: text/event-stream``, parsed as it arrives."""

    __slots__ = ("_frames", "_parser", "_response", "retry_hint")

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self._response = response
        self._parser = SSEParser()
        self._frames: deque[SSEFrame] = deque()
        self.retry_hint: float | None = None

    @classmethod
    async def open(
        cls,
        session: aiohttp.ClientSession,
        url: str,
        types: Sequence[str],
        *,
        last_event_id: str | None,
        event_query: str,
        headers: Mapping[str, str],
        ssl_context: ssl.SSLContext | None,
        read_timeout: float | None,
    ) -> SSEConnection:
        """Open the stream; return once its first bytes (plasma's ``retry:``) have arrived."""
        request_headers = {"Accept": "text/event-stream", "Cache-Control": "no-cache", **headers}
        if last_event_id:
            request_headers["Last-Event-ID"] = last_event_id
        try:
            response = await session.get(
                url,
                params={event_query: ",".join(types)},
                headers=request_headers,
                ssl=ssl_context if ssl_context is not None else True,
                timeout=aiohttp.ClientTimeout(total=None, connect=10, sock_read=read_timeout),
            )
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise Lost(f"cannot connect to {url}: {str(exc) or type(exc).__name__}") from exc
        try:
            await cls._check(response)
            connection = cls(response)
            await connection._fill()
        except BaseException:
            response.close()
            raise
        return connection

    @staticmethod
    async def _check(response: aiohttp.ClientResponse) -> None:
        status = response.status
        if status == 200:
            if response.content_type != "text/event-stream":
                raise SubscribeError(
                    f"the server answered {response.content_type or 'no content type'}, "
                    "not text/event-stream: is this a plasma URL?",
                    status,
                )
            return
        body = await _read_some(response)
        if status == 204:
            raise ClosedError("the server asked the client to stop (HTTP 204)")
        if status in (408, 429) or status >= 500:
            raise Lost(
                _reason(status, body), retry_after_seconds(response.headers.get("Retry-After"))
            )
        raise SubscribeError(_reason(status, body), status)

    async def _fill(self) -> bool:
        """Read one chunk into the parser; ``False`` at the end of the stream."""
        try:
            chunk = await self._response.content.readany()
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise Lost(f"the stream broke: {str(exc) or type(exc).__name__}") from exc
        if not chunk:
            return False
        try:
            self._frames.extend(self._parser.feed(chunk))
        except StreamTooLong as exc:
            raise Lost(str(exc)) from None
        if self._parser.retry is not None:
            self.retry_hint = self._parser.retry / 1000
        return True

    async def next(self) -> Event | Gap | None:
        while not self._frames:
            if not await self._fill():
                return None
        frame = self._frames.popleft()
        event_type, data = envelope(frame.data)
        return item_from(frame.id, event_type, data)

    async def resubscribe(self, types: Sequence[str]) -> None:
        raise ClientError("resubscribe needs transport='grpc' (an SSE stream's types are fixed)")

    async def aclose(self) -> None:
        self._response.close()


async def _read_some(response: aiohttp.ClientResponse) -> bytes:
    try:
        async with asyncio.timeout(5):
            return (await response.content.readany())[:4096]
    except (aiohttp.ClientError, OSError, TimeoutError):
        return b""
