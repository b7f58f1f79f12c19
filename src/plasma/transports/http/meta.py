"""The meta endpoints on the HTTP side: ``/hc``, ``/metrics`` and (when enabled) the ``/debug``
console with its ``/debug/stats`` figures."""

from __future__ import annotations

import importlib.resources
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web

from plasma.errors import InvalidEvent, SourceError
from plasma.events import parse_event
from plasma.exporters.prometheus import render_exposition, wants_exposition
from plasma.exporters.sender import SnapshotSource
from plasma.metrics import Metrics
from plasma.sources.base import Source
from plasma.transports.access import log_request

__all__ = ["MetaEndpoints"]


def _json(body: object, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        status=status, body=orjson.dumps(body), content_type="application/json", headers=headers
    )


class MetaEndpoints:
    """Answers every HTTP request that is not an SSE subscription."""

    def __init__(
        self,
        source: Source,
        metrics: Metrics,
        *,
        debug: bool,
        origin: str,
        event_query: str,
        snapshot: SnapshotSource | None = None,
        peers_healthy: Callable[[], bool] | None = None,
    ) -> None:
        self._source = source
        self._peers_healthy = peers_healthy or (lambda: True)
        self._event_query = event_query
        self._metrics = metrics
        self._snapshot: SnapshotSource = snapshot or metrics.snapshot
        self._debug = debug
        self._origin = origin
        self._debug_page: bytes | None = None

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        started = time.monotonic()
        response = await self._route(request)
        if self._origin and "Access-Control-Allow-Origin" not in response.headers:
            response.headers["Access-Control-Allow-Origin"] = self._origin
        log_request(request, response.status, started)
        return response

    async def _route(self, request: web.BaseRequest) -> web.StreamResponse:
        path = request.path
        if path == "/hc":
            return await self._allow(request, ("GET", "HEAD"), self.health)
        if path == "/metrics":
            return await self._allow(request, ("GET", "HEAD"), self.metrics)
        if path == "/debug" and self._debug:
            return await self._allow(request, ("GET", "HEAD", "POST"), self.debug)
        if path == "/debug/stats" and self._debug:
            return await self._allow(request, ("GET", "HEAD"), self.debug_stats)
        return web.Response(status=404, text="404 page not found\n")

    @staticmethod
    async def _allow(
        request: web.BaseRequest,
        methods: tuple[str, ...],
        handler: Callable[[web.BaseRequest], Awaitable[web.StreamResponse]],
    ) -> web.StreamResponse:
        if request.method not in methods:
            return web.Response(
                status=405, text="405 method not allowed\n", headers={"Allow": ", ".join(methods)}
            )
        return await handler(request)

    async def health(self, request: web.BaseRequest) -> web.Response:
        if not await self._source.healthy():
            return web.Response(status=500, text=f"{self._source.name} source is unreachable\n")
        if not self._peers_healthy():
            return web.Response(status=500, text="a worker's source is unreachable\n")
        return web.Response(status=200, text="OK\n")

    async def metrics(self, request: web.BaseRequest) -> web.Response:
        """JSON by default; the Prometheus/OpenMetrics exposition when the scrape asks for it."""
        snapshot = await self._whole_snapshot()
        accept = request.headers.get("Accept", "")
        fmt = request.query.get("format", "")
        if not wants_exposition(accept, fmt):
            return _json(snapshot)
        body, content_type = render_exposition(snapshot, accept, fmt)
        return web.Response(body=body, headers={"Content-Type": content_type})

    async def _whole_snapshot(self) -> dict[str, Any]:
        snapshot = self._snapshot()
        if inspect.isawaitable(snapshot):
            snapshot = await snapshot
        return snapshot

    async def debug_stats(self, request: web.BaseRequest) -> web.Response:
        """What the ``/debug`` console draws: the whole server's figures, as ``/metrics`` JSON.

        Served under ``/debug`` so the console needs only the debug page's access, not the
        metrics endpoint's.
        """
        return _json(await self._whole_snapshot(), headers={"Cache-Control": "no-store"})

    async def debug(self, request: web.BaseRequest) -> web.Response:
        if request.method != "POST":
            if self._debug_page is None:
                self._debug_page = (
                    importlib.resources.files("plasma.transports.http")
                    .joinpath("debug.html")
                    .read_text("utf-8")
                    .replace("__EVENT_QUERY__", orjson.dumps(self._event_query).decode()[1:-1])
                    .encode()
                )
            return web.Response(body=self._debug_page, content_type="text/html", charset="utf-8")
        raw = await request.read()
        try:
            parse_event(raw)
        except InvalidEvent as exc:
            return _json({"error": f"invalid event: {exc}"}, status=400)
        try:
            await self._source.publish(raw)
        except SourceError as exc:
            return _json({"error": str(exc)}, status=503)
        self._metrics.events_published_debug += 1
        return _json({"published": True})
