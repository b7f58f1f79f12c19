"""``POST /publish``: events over HTTP, through the configured source, all or nothing.

The body is one event object, a JSON array of events (``application/json``), or one event a
line (``application/x-ndjson``): the envelope Redis publishers send. Every event is checked by
the source's own parser (``plasma.events.parse_event``) before anything is published, then the
whole batch goes to the source in one call (one Redis ``MULTI``/``EXEC``), so every plasma
process and node sees it.

The body is bounded before it is read: a ``Content-Length`` over the limit is refused at once
and a chunked body is cut off at the limit (``413``, connection closed); a body that takes
longer than the header timeout to arrive gets ``408``.

A page on another origin may publish (with a token) under the rules SSE streams follow: the
answers, and the CORS preflight (``OPTIONS``) this endpoint answers itself, carry the
headers of ``SSETransport.cors_headers`` (``PLASMA_ORIGIN``). Every answer is counted in
``Metrics``: events published, or the refusal by status.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import orjson
from aiohttp import web

from plasma.errors import InvalidEvent, SourceError
from plasma.events import CheckedBatch, parse_batch, parse_event
from plasma.metrics import Metrics

__all__ = ["AuthorizePublish", "PublishEndpoint", "allow_all"]

AuthorizePublish = Callable[[web.BaseRequest, Sequence[str]], "web.Response | None"]
"""Checks that the request may publish every one of these types: ``None`` to allow, or the
refusal to send (``401``/``403``). The seam access control plugs into; it runs after the body
is parsed and before anything is published, once per request."""

JSON_TYPES = frozenset({"application/json"})
NDJSON_TYPES = frozenset({"application/x-ndjson", "application/ndjson", "application/jsonl"})
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_METHODS = "POST, OPTIONS"


def allow_all(request: web.BaseRequest, types: Sequence[str]) -> web.Response | None:
    """The default when access control is off: anyone who reaches the port may publish."""
    return None


def _error(status: int, message: str, **extra: Any) -> web.Response:
    body = orjson.dumps({"error": message, **extra})
    return web.Response(status=status, body=body, content_type="application/json")


class _Refused(Exception):
    def __init__(self, response: web.Response) -> None:
        self.response = response


class PublishEndpoint:
    """Answers requests for ``path`` (the caller routes only that path here)."""

    def __init__(
        self,
        publish_many: Callable[[list[bytes], str | None], Awaitable[list[str | None]]],
        *,
        path: str,
        max_body: int,
        max_event_bytes: int,
        channels: Sequence[str],
        body_timeout: float,
        retry_after: float,
        metrics: Metrics,
        cors: Mapping[str, str] | None = None,
        authorize: AuthorizePublish = allow_all,
    ) -> None:
        self._publish_many = publish_many
        self.path = path
        self._max_body = max_body
        self._max_event_bytes = max_event_bytes
        self._channels = frozenset(channels)
        self._body_timeout = body_timeout
        self._retry_after = str(max(1, round(retry_after)))
        self._authorize = authorize
        self._metrics = metrics
        self._cors = dict(cors or {})
        # A token travels in ``Authorization``; a JSON body needs ``Content-Type`` allowed.
        allowed = "Content-Type" + ("" if authorize is allow_all else ", Authorization")
        self._preflight_headers = {
            "Access-Control-Allow-Methods": _METHODS,
            "Access-Control-Allow-Headers": allowed,
            "Access-Control-Max-Age": "600",
            "Allow": _METHODS,
            **self._cors,
        }

    @property
    def open_to_all(self) -> bool:
        """Whether no access check is plugged in: anyone who reaches the port may publish."""
        return self._authorize is allow_all

    async def handle(self, request: web.BaseRequest) -> web.Response:
        if request.method == "OPTIONS":  # a CORS preflight (MetaEndpoints logs it)
            return web.Response(status=204, headers=self._preflight_headers)
        response = await self._publish(request)
        if self._cors:
            response.headers.update(self._cors)
        if response.status != 200:
            self._metrics.publish_rejected[str(response.status)] += 1
        return response

    async def _publish(self, request: web.BaseRequest) -> web.Response:
        if request.method != "POST":
            return web.Response(
                status=405, text="405 method not allowed\n", headers={"Allow": _METHODS}
            )
        try:
            channel = self._channel(request)
            ndjson = self._content_kind(request)
            body = await self._read_body(request)
            batch = self._parse(body, ndjson)
        except _Refused as refused:
            return refused.response
        refusal = self._authorize(request, batch.types)
        if refusal is not None:
            return refusal
        try:
            ids = await self._publish_many(batch.bodies, channel)
        except SourceError as exc:
            return web.Response(
                status=503,
                body=orjson.dumps({"error": f"{exc}; nothing was published"}),
                content_type="application/json",
                headers={
                    "Retry-After": self._retry_after,
                    "Access-Control-Expose-Headers": "Retry-After",
                },
            )
        self._metrics.events_published_api += len(ids)
        return web.Response(
            body=orjson.dumps({"published": len(ids), "ids": ids}),
            content_type="application/json",
        )

    def _channel(self, request: web.BaseRequest) -> str | None:
        channel = request.query.get("channel")
        if channel is None:
            return None
        if channel not in self._channels:
            allowed = ", ".join(sorted(self._channels)) or "none with this source"
            raise _Refused(
                _error(400, f"channel {channel[:100]!r} is not one plasma reads ({allowed})")
            )
        return channel

    @staticmethod
    def _content_kind(request: web.BaseRequest) -> bool:
        """Whether the body is NDJSON (else JSON); ``415`` for anything else."""
        content_type = request.content_type.lower()
        charset = request.charset
        if charset is not None and charset.lower() not in ("utf-8", "utf8"):
            raise _Refused(_error(415, f"charset {charset[:40]!r}: events are UTF-8"))
        if content_type in JSON_TYPES:
            return False
        if content_type in NDJSON_TYPES:
            return True
        raise _Refused(
            _error(
                415,
                f"Content-Type {content_type[:100]!r}: send application/json (an event or an "
                "array of events) or application/x-ndjson (one event a line)",
            )
        )

    async def _read_body(self, request: web.BaseRequest) -> bytes:
        limit = self._max_body
        length = request.content_length
        if length is not None and length > limit:
            raise _Refused(self._too_large(request))
        if request.headers.get("Expect", "").lower() == "100-continue":
            await request.writer.write(_CONTINUE)
        chunks: list[bytes] = []
        size = 0
        try:
            async with asyncio.timeout(self._body_timeout):
                while chunk := await request.content.readany():
                    size += len(chunk)
                    if size > limit:
                        raise _Refused(self._too_large(request))
                    chunks.append(chunk)
        except TimeoutError:
            response = _error(408, f"the body did not arrive within {self._body_timeout:g}s")
            response.force_close()
            raise _Refused(response) from None
        if not size:
            raise _Refused(_error(400, "the body is empty: send an event or an array of events"))
        return b"".join(chunks)

    def _too_large(self, request: web.BaseRequest) -> web.Response:
        response = _error(413, f"the body is larger than {self._max_body} bytes")
        response.force_close()  # the rest of the body is never read
        return response

    def _parse(self, body: bytes, ndjson: bool) -> CheckedBatch:
        """Every event of the body, or ``400`` naming the first invalid one; nothing partial."""
        max_bytes = self._max_event_bytes
        try:
            if ndjson:
                batch = CheckedBatch([], [])
                for index, line in enumerate(x for x in body.split(b"\n") if x.strip()):
                    try:
                        event = parse_event(line, max_bytes)
                    except InvalidEvent as exc:
                        raise InvalidEvent(exc.reason, f"event {index}: {exc}", index) from None
                    batch.types.append(event.type)
                    batch.bodies.append(event.body)
            elif body.lstrip()[:1] == b"[":
                batch = parse_batch(body, max_bytes)
            else:
                event = parse_event(body, max_bytes)
                batch = CheckedBatch([event.type], [event.body])
        except InvalidEvent as exc:
            extra = {"index": exc.index} if exc.index is not None else {}
            raise _Refused(_error(400, str(exc), reason=exc.reason, **extra)) from None
        if not batch.bodies:
            raise _Refused(_error(400, "the body holds no events"))
        return batch
