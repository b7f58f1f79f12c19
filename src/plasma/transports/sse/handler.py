"""SSE streams on connections aiohttp serves: a stream after another request on a kept-alive
connection, and every refusal (``400`` bad types, ``401``/``403`` access control, ``503`` at
capacity) and CORS preflight.
"""

from __future__ import annotations

import asyncio
import time

from aiohttp import web
from aiohttp.http import HttpVersion11

from plasma.auth.authorizer import refusal_response
from plasma.auth.errors import AuthError
from plasma.subscription import InvalidSubscription
from plasma.transports.access import log_request, remote_address
from plasma.transports.sse.subscriber import SSESubscriber, StreamOwner
from plasma.transports.sse.transport import SSETransport, abort_after_grace

__all__ = ["preflight", "serve_stream"]


class _HandlerSubscriber(SSESubscriber):
    """A stream served by an aiohttp handler, which awaits ``done``."""

    __slots__ = ("done",)

    def __init__(self, owner: StreamOwner, transport: asyncio.Transport, chunked: bool) -> None:
        super().__init__(owner, transport, chunked)
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def close(self, reason: str) -> None:
        if not self.done.done():
            self.close_reason = reason
            self._owner.unsubscribe(self)  # no more deliveries from now on
            self.done.set_result(None)


async def serve_stream(sse: SSETransport, request: web.BaseRequest) -> web.StreamResponse:
    """Answer an SSE request: the stream until it ends, or why there is none."""
    started = time.monotonic()
    try:
        types, last_event_id = sse.parse_request(
            request.query_string, request.headers.get("Last-Event-ID")
        )
    except InvalidSubscription as exc:
        log_request(request, 400, started)
        return web.Response(status=400, text=f"{exc}\n", headers=sse.cors_headers())
    try:
        identity = sse.authorize(
            types,
            authorization=request.headers.get("Authorization"),
            cookie=request.headers.get("Cookie"),
            query_string=request.query_string,
        )
    except AuthError as exc:
        log_request(request, exc.status, started)
        return refusal_response(exc, text=True, headers=sse.cors_headers())
    if sse.at_capacity():
        log_request(request, 503, started)
        return web.Response(
            status=503,
            text="too many connections; retry later\n",
            headers={"Retry-After": sse.retry_after},
        )
    response = web.StreamResponse(status=200, headers=sse.head.headers)
    await response.prepare(request)
    transport = request.transport
    if transport is None:  # the client left before we answered
        return response
    sub = _HandlerSubscriber(sse, transport, request.version >= HttpVersion11)
    sub.describe(
        types,
        started,
        remote_address(request),
        request.path,
        request.headers.get("User-Agent", ""),
        identity.subject if identity is not None else None,
    )
    await response.write(sse.head.retry)  # aiohttp frames it (a chunk, unless HTTP/1.0)
    sse.begin_stream(sub, identity)
    try:
        await sse.hub.resume(sub, types, last_event_id)
        await sub.done
    except asyncio.CancelledError:
        sub.close("client")
        raise
    finally:
        sse.stream_ended(sub)
        if sub.close_reason != "client":
            # End the connection after this response; a client that never reads it is cut.
            response.force_close()
            abort_after_grace(transport)
    return response


def preflight(sse: SSETransport, request: web.BaseRequest) -> web.Response:
    """Answer a CORS preflight (``OPTIONS``) for a cross-origin ``EventSource``."""
    headers = {
        "Access-Control-Allow-Methods": "GET, HEAD, OPTIONS",
        "Access-Control-Allow-Headers": "Accept, Cache-Control, Last-Event-ID"
        + (", Authorization" if sse.authorizer.enabled else ""),
        "Access-Control-Max-Age": "600",
        "Allow": "GET, HEAD, OPTIONS",
    }
    headers.update(sse.cors_headers())
    log_request(request, 204, time.monotonic())
    return web.Response(status=204, headers=headers)
