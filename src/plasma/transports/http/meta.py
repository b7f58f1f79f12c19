"""The endpoints on the HTTP side: ``/hc``, ``/metrics``, and when enabled the ``/debug``
console (with its ``/debug/stats`` figures) and the publish API.

With access control on, ``POST /debug`` and the publish API need a token that may publish the
events' types (``Authorizer.check_publish``); ``/metrics`` and ``/debug``'s page may each
require a fixed bearer token of their own (``PLASMA_METRICS_TOKEN``, ``PLASMA_DEBUG_TOKEN``).
"""

from __future__ import annotations

import importlib.resources
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web

from plasma.auth.authorizer import Authorizer, refusal_response
from plasma.auth.static import StaticToken
from plasma.errors import InvalidEvent, SourceError
from plasma.events import parse_event
from plasma.exporters.prometheus import FORMATS, render_exposition, wants_exposition
from plasma.exporters.sender import SnapshotSource
from plasma.health import HealthMonitor
from plasma.metrics import Metrics
from plasma.sources.base import Source
from plasma.transports.access import log_request
from plasma.transports.http.publish import PublishEndpoint

__all__ = ["MetaEndpoints"]


_NOT_A_STREAM = (
    "404 page not found\n"
    "an event stream needs the request header Accept: text/event-stream "
    "(EventSource sends it; with curl: curl -N -H 'Accept: text/event-stream' URL)\n"
)
"""The original's 404 for a stream URL requested without ``Accept: text/event-stream``."""


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
        health: HealthMonitor,
        snapshot: SnapshotSource | None = None,
        authorizer: Authorizer | None = None,
        metrics_token: StaticToken | None = None,
        debug_token: StaticToken | None = None,
        publish: PublishEndpoint | None = None,
    ) -> None:
        self._source = source
        self._health = health
        self._authorizer = authorizer or Authorizer(None)
        self._metrics_token = metrics_token
        self._debug_token = debug_token
        self._event_query = event_query
        self._metrics = metrics
        self._snapshot: SnapshotSource = snapshot or metrics.snapshot
        self._debug = debug
        self._origin = origin
        self._debug_page: bytes | None = None
        self._publish = publish

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        started = time.monotonic()
        try:
            response = await self._route(request)
        except web.HTTPException as exc:  # aiohttp's own refusals, e.g. 413 for a large body
            log_request(request, exc.status, started)
            raise
        if self._origin and "Access-Control-Allow-Origin" not in response.headers:
            response.headers["Access-Control-Allow-Origin"] = self._origin
        log_request(request, response.status, started)
        return response

    async def _route(self, request: web.BaseRequest) -> web.StreamResponse:
        path = request.path
        if path == "/hc":
            return await self._allow(request, ("GET", "HEAD"), self.health)
        if path == "/metrics":
            if (refusal := self._guard(request, self._metrics_token)) is not None:
                return refusal
            return await self._allow(request, ("GET", "HEAD"), self.metrics)
        if path == "/debug" and self._debug:
            # POST publishes: with access control on, its own check (a publish grant) applies.
            publish_checked = request.method == "POST" and self._authorizer.enabled
            refusal = None if publish_checked else self._guard(request, self._debug_token)
            if refusal is not None:
                return refusal
            return await self._allow(request, ("GET", "HEAD", "POST"), self.debug)
        if path == "/debug/stats" and self._debug:
            if (refusal := self._guard(request, self._debug_token)) is not None:
                return refusal
            return await self._allow(request, ("GET", "HEAD"), self.debug_stats)
        if self._publish is not None and path == self._publish.path:
            return await self._publish.handle(request)
        if self._event_query in request.query:  # a stream URL opened without the header
            return web.Response(status=404, text=_NOT_A_STREAM)
        return web.Response(status=404, text="404 page not found\n")

    def _guard(self, request: web.BaseRequest, token: StaticToken | None) -> web.Response | None:
        """The 401 for a request without the endpoint's token; ``None`` when it may pass."""
        if token is None or token.allows(request):
            return None
        return refusal_response(self._authorizer.refused(token.refusal(request)), text=True)

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
        """The process's health state (one probe per interval, never one per request)."""
        if not await self._health.current():
            return web.Response(status=500, text=f"{self._health.reason}\n")
        return web.Response(status=200, text="OK\n")

    async def metrics(self, request: web.BaseRequest) -> web.Response:
        """JSON by default; the Prometheus/OpenMetrics exposition when the scrape asks for it."""
        fmt = request.query.get("format", "")
        if fmt and fmt.strip().lower() not in FORMATS:
            return web.Response(
                status=400, text=f"unknown format {fmt!r}: use one of {', '.join(FORMATS)}\n"
            )
        snapshot = await self._whole_snapshot()
        accept = request.headers.get("Accept", "")
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
            event = parse_event(raw)
        except InvalidEvent as exc:
            return _json({"error": f"invalid event: {exc}"}, status=400)
        if (refusal := self._authorizer.check_publish(request, [event.type])) is not None:
            return refusal
        try:
            await self._source.publish_many([raw])
        except SourceError as exc:
            return _json({"error": str(exc)}, status=503)
        self._metrics.events_published_debug += 1
        return _json({"published": True})
