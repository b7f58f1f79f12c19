"""SSE streams on connections aiohttp serves: a stream after another request on a kept-alive
connection, and every refusal (``400`` bad types, ``503`` at capacity) and CORS preflight.
"""

from __future__ import annotations

import asyncio
import time

from aiohttp import web
from aiohttp.http import HttpVersion11

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
        headers = {"Access-Control-Allow-Origin": sse.origin} if sse.origin else None
        log_request(request, 400, started)
        return web.Response(status=400, text=f"{exc}\n", headers=headers)
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
        types, started, remote_address(request), request.path, request.headers.get("User-Agent", "")
    )
    await response.write(sse.head.retry)  # aiohttp frames it (a chunk, unless HTTP/1.0)
    sse.begin_stream(sub)
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
        "Access-Control-Allow-Headers": "Accept, Cache-Control, Last-Event-ID",
        "Access-Control-Max-Age": "600",
        "Allow": "GET, HEAD, OPTIONS",
    }
    if sse.origin:
        headers["Access-Control-Allow-Origin"] = sse.origin
    log_request(request, 204, time.monotonic())
    return web.Response(status=204, headers=headers)
