"""``Publisher``: send events to plasma, over its HTTP publish API or straight into Redis.

``Publisher("http://host:8080")`` posts to ``/publish`` (the API is on when the server has
``PLASMA_PUBLISH_API=true``); ``Publisher("redis://host:6379/0", channel="events")`` sends
``PUBLISH`` to the channel, or ``XADD <stream> * event <json>`` with ``stream=True`` (the
``redis-stream`` source). A batch is one request or one ``MULTI``/``EXEC`` transaction: all of
it is published, or none.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import orjson

from plasma.client._errors import ClosedError, PublishError
from plasma.client._sse_connection import retry_after_seconds

__all__ = ["EventLike", "Publisher", "encode_event", "publish", "publish_many"]

EventLike = tuple[str, Any] | Mapping[str, Any]
"""``(type, data)``, or a whole event ``{"meta": {"type": ...}, "data": ...}``."""

_STREAM_FIELD = "event"


def encode_event(event: EventLike) -> bytes:
    """The event as compact JSON, checked as plasma checks it; raises ``ValueError``."""
    if isinstance(event, Mapping):
        meta = event.get("meta")
        event_type = meta.get("type") if isinstance(meta, Mapping) else None
        data = event.get("data")
    else:
        event_type, data = event
    if not isinstance(event_type, str) or not event_type:
        raise ValueError("an event needs a non-empty string type (meta.type)")
    try:
        return orjson.dumps({"meta": {"type": event_type}, "data": data})
    except TypeError as exc:
        raise ValueError(f"the data of {event_type!r} is not JSON: {exc}") from None


class Publisher:
    """Publishes events; use ``async with`` or call ``aclose()``.

    ```python
    async with Publisher("http://localhost:8080") as pub:
        await pub.publish("program:1234:views", {"views": 42})
        ids = await pub.publish_many([("a", 1), ("b", 2)])
    ```

    ``publish`` returns the event's id where the server assigns one up front (the stream entry
    id with ``redis-stream``), else ``None`` (pub/sub ids are given by each plasma on receipt).
    """

    def __init__(
        self,
        target: str,
        *,
        token: str | None = None,
        channel: str | None = None,
        stream: bool = False,
        timeout: float = 10.0,
        ca_file: str | None = None,
    ) -> None:
        scheme = urlsplit(target).scheme
        self._redis_mode = scheme in ("redis", "rediss", "unix")
        if not self._redis_mode and scheme not in ("http", "https"):
            raise ValueError(
                f"publish target {target!r} must be an http(s):// URL of plasma or a "
                "redis:// URL of Redis"
            )
        if self._redis_mode and not channel:
            raise ValueError("publishing to Redis needs a channel (or stream) name")
        self._target = target
        self._token = token
        self._channel = channel
        self._stream = stream
        self._timeout = timeout
        self._ca_file = ca_file
        self._session: aiohttp.ClientSession | None = None
        self._redis: Any = None
        self._closed = False

    @property
    def publish_url(self) -> str:
        """Where HTTP publishes go: the URL as given, or ``/publish`` when it has no path."""
        parts = urlsplit(self._target)
        path = parts.path if parts.path not in ("", "/") else "/publish"
        return urlunsplit((parts.scheme, parts.netloc, path, parts.query, ""))

    async def __aenter__(self) -> Publisher:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def publish(self, type: str, data: Any = None) -> str | None:
        """Publish one event; return its id when the server assigns one up front."""
        return (await self.publish_many([(type, data)]))[0]

    async def publish_many(self, events: Iterable[EventLike]) -> list[str | None]:
        """Publish a batch, all or nothing; return an id (or ``None``) per event."""
        if self._closed:
            raise ClosedError("this publisher is closed")
        bodies = []
        for index, event in enumerate(events):
            try:
                bodies.append(encode_event(event))
            except ValueError as exc:
                raise PublishError(f"event {index}: {exc}") from None
        if not bodies:
            return []
        if self._redis_mode:
            return await self._publish_redis(bodies)
        return await self._publish_http(bodies)

    async def _publish_http(self, bodies: list[bytes]) -> list[str | None]:
        if self._session is None:
            self._session = aiohttp.ClientSession()
        headers = {"Content-Type": "application/json"}
        if self._token:
            headers["Authorization"] = f"Bearer {self._token}"
        params = {"channel": self._channel} if self._channel else {}
        body = b"[" + b",".join(bodies) + b"]"
        context = ssl.create_default_context(cafile=self._ca_file) if self._ca_file else True
        url = self.publish_url
        try:
            async with self._session.post(
                url,
                data=body,
                params=params,
                headers=headers,
                ssl=context,
                timeout=aiohttp.ClientTimeout(total=self._timeout),
            ) as response:
                answer = await response.read()
                status = response.status
                retry_after = retry_after_seconds(response.headers.get("Retry-After"))
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise PublishError(
                f"cannot reach {url}: {str(exc) or type(exc).__name__} "
                "(the batch may or may not have been published)"
            ) from exc
        if status != 200:
            message = _error_text(status, answer)
            if status in (404, 405):
                message += f" (is {url} plasma's publish API, with PLASMA_PUBLISH_API=true?)"
            raise PublishError(message, status, retry_after)
        try:
            ids = orjson.loads(answer)["ids"]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            raise PublishError(
                f"{url} answered 200 without a list of ids: is it plasma?", status
            ) from None
        if not isinstance(ids, list) or len(ids) != len(bodies):
            raise PublishError(f"{url} answered {len(ids)} ids for {len(bodies)} events")
        return [i if isinstance(i, str) else None for i in ids]

    async def _publish_redis(self, bodies: list[bytes]) -> list[str | None]:
        import redis.asyncio as aioredis
        from redis.exceptions import RedisError

        if self._redis is None:
            self._redis = aioredis.Redis.from_url(
                self._target, socket_timeout=self._timeout, socket_connect_timeout=self._timeout
            )
        channel = self._channel
        assert channel is not None
        try:
            async with self._redis.pipeline(transaction=True) as pipe:
                for body in bodies:
                    if self._stream:
                        pipe.xadd(channel, {_STREAM_FIELD: body})
                    else:
                        pipe.publish(channel, body)
                replies = await pipe.execute()
        except (RedisError, OSError, TimeoutError) as exc:
            raise PublishError(f"redis: {str(exc) or type(exc).__name__}") from exc
        if not self._stream:
            return [None] * len(bodies)
        return [r.decode() if isinstance(r, bytes) else str(r) for r in replies]

    async def aclose(self) -> None:
        """Close connections; idempotent."""
        self._closed = True
        session, self._session = self._session, None
        if session is not None:
            await session.close()
        client, self._redis = self._redis, None
        if client is not None:
            await client.aclose()


def _error_text(status: int, body: bytes) -> str:
    try:
        message = orjson.loads(body).get("error")
    except (orjson.JSONDecodeError, AttributeError):
        message = None
    if not isinstance(message, str):
        lines = body.decode("utf-8", "replace").strip().splitlines()
        message = lines[0][:300] if lines else ""
    return f"HTTP {status}: {message}" if message else f"HTTP {status}"


def publish(target: str, type: str, data: Any = None, **options: Any) -> str | None:
    """Publish one event from a script (no event loop needed); see ``Publisher``."""
    return publish_many(target, [(type, data)], **options)[0]


def publish_many(target: str, events: Iterable[EventLike], **options: Any) -> list[str | None]:
    """Publish a batch from a script, all or nothing; see ``Publisher``."""

    async def run() -> list[str | None]:
        async with Publisher(target, **options) as publisher:
            return await publisher.publish_many(events)

    return asyncio.run(run())
