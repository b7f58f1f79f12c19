"""Wiring: one hub, one source, the transports on one listener, and an orderly shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import gc
import logging
import signal
import ssl
from typing import Any

from aiohttp import web, web_server

from plasma.auth.setup import EndpointTokens, build_authorizer
from plasma.buffers import ClientBuffers
from plasma.config import Config, TLSConfig
from plasma.errors import ConfigError, FeedLost, SourceGaveUp, StartupError
from plasma.exporters.sender import MetricsSender
from plasma.feed import NodeFeed
from plasma.health import HealthMonitor
from plasma.hub import Archive, Hub
from plasma.metrics import Metrics, merge_snapshots
from plasma.peers import Peers
from plasma.sources import Source, create_source
from plasma.transports.grpc.transport import GrpcTransport
from plasma.transports.handshakes import TLSHandshakes
from plasma.transports.http.meta import MetaEndpoints
from plasma.transports.http.publish import PublishEndpoint, allow_all
from plasma.transports.http.server import create_http_server, setup_http_logging
from plasma.transports.listener import SniffingFactory
from plasma.transports.sse.connection import SSEConnection
from plasma.transports.sse.handler import preflight, serve_stream
from plasma.transports.sse.transport import SSETransport
from plasma.transports.sse.wire import is_sse_request

__all__ = ["Server", "make_tls_context", "serve"]

log = logging.getLogger("plasma.server")

_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)
_SHUTDOWN_TIMEOUT = 3.0
TOP_TYPES = 20
"""Most-subscribed types reported in ``/metrics`` and on the ``/debug`` console."""


def make_tls_context(tls: TLSConfig) -> ssl.SSLContext:
    """A server context for both files; every failure names the variable to fix."""
    for name, path in (
        ("PLASMA_TLS_CERT_FILE", tls.cert_file),
        ("PLASMA_TLS_KEY_FILE", tls.key_file),
    ):
        try:
            with open(path, "rb"):
                pass
        except OSError as exc:
            raise StartupError(f"{name}={path!r}: cannot read file: {exc.strerror}") from exc
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(tls.cert_file, tls.key_file)
    except ssl.SSLError as exc:
        raise StartupError(
            f"PLASMA_TLS_KEY_FILE={tls.key_file!r} does not match PLASMA_TLS_CERT_FILE="
            f"{tls.cert_file!r}, or one is not PEM: {exc.reason or exc}"
        ) from exc
    # Server order wins: browsers (offering both) get HTTP/1.1 for SSE, grpcio (h2 only) gets h2.
    context.set_alpn_protocols(["http/1.1", "h2"])
    return context


class Server:
    """Owns every long-lived part; ``start`` listens, ``aclose`` stops in aiohttp's order."""

    def __init__(
        self,
        config: Config,
        *,
        peers: Peers | None = None,
        worker_id: int | None = None,
        feed_path: str = "",
    ) -> None:
        self.config = config
        self.peers = peers
        self.worker_id = worker_id
        self.metrics = Metrics()
        self.hub = Hub(
            self.metrics,
            history_size=config.history_size,
            history_ttl=config.history_ttl,
            history_max_bytes=config.history_max_bytes,
            max_event_bytes=config.limits.max_event_size,
        )
        try:
            self.authorizer = build_authorizer(config.auth, self.metrics.auth_failures)
            endpoint_tokens = EndpointTokens(config.auth)
        except ConfigError as exc:  # checked with the settings; a key file changed since
            raise StartupError(str(exc)) from None
        self.buffers = ClientBuffers(config.max_buffered_bytes, self.metrics)
        source: Source = create_source(config.source, self.metrics)
        if isinstance(source, Archive):  # a source with its own history (Redis Streams)
            self.hub.archive = source
        elif feed_path:  # a worker: the node's reader numbers the events (plasma.reader)
            source = NodeFeed(feed_path, source, self.metrics)
        self.source = source
        self.sse = SSETransport(
            self.hub,
            config.sse,
            origin=config.origin,
            metrics=self.metrics,
            client_buffer=config.client_buffer,
            limits=config.limits,
            authorizer=self.authorizer,
            buffers=self.buffers,
        )
        self.health = HealthMonitor(self.source, peers_healthy=self._peers_healthy)
        """The one health state /hc and the gRPC health service answer from."""
        self.metrics.source_changed = self.health.source_changed
        self.grpc = GrpcTransport(
            self.hub,
            self.metrics,
            self.health,
            client_buffer=config.client_buffer,
            limits=config.limits,
            authorizer=self.authorizer,
            buffers=self.buffers,
        )
        self.publish = (
            PublishEndpoint(
                self.source.publish_many,
                path=config.publish.path,
                max_body=config.publish.max_body,
                max_event_bytes=config.limits.max_event_size,
                channels=_publish_channels(config),
                body_timeout=config.limits.header_timeout,
                retry_after=config.source.redis.retry_interval,
                metrics=self.metrics,
                cors=self.sse.cors_headers(),
                # With access control on, the token's publish list must cover every event.
                authorize=self.authorizer.check_publish if self.authorizer.enabled else allow_all,
            )
            if config.publish.api
            else None
        )
        self.meta = MetaEndpoints(
            self.source,
            self.metrics,
            debug=config.debug,
            origin=config.origin,
            event_query=config.sse.event_query,
            health=self.health,
            snapshot=self.whole_server_snapshot,
            authorizer=self.authorizer,
            metrics_token=endpoint_tokens.metrics,
            debug_token=endpoint_tokens.debug,
            publish=self.publish,
        )
        self._http: web_server.Server | None = None
        self._metrics_sender: MetricsSender | None = None
        self._listeners: list[asyncio.Server] = []
        self._handshakes: TLSHandshakes | None = None
        self._source_task: asyncio.Task[None] | None = None
        self._peers_task: asyncio.Task[None] | None = None
        self._stopped = asyncio.Event()
        self.ports: list[int] = []

    async def _handle_http(self, request: web.BaseRequest) -> web.StreamResponse:
        if request.method == "OPTIONS" and (
            self.publish is None or request.path != self.publish.path
        ):
            return preflight(self.sse, request)
        if is_sse_request(request.method, request.headers.get("Accept", "")):
            return await serve_stream(self.sse, request)
        return await self.meta.handle(request)

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        config = self.config
        tls = make_tls_context(config.tls) if config.tls.enabled else None
        limits = config.limits
        setup_http_logging()
        if isinstance(self.source, NodeFeed):
            await self.source.join(self.hub)  # the node's history first: then resumes find it
        self._http = create_http_server(self._handle_http, limits)
        http = self._http

        def new_http_connection() -> asyncio.Protocol:
            return SSEConnection(self.sse, http)

        handshakes = TLSHandshakes(tls, timeout=limits.header_timeout) if tls else None
        self._handshakes = handshakes
        both = SniffingFactory(
            http=new_http_connection,
            grpc=self.grpc.protocol_factory,
            first_bytes_timeout=limits.header_timeout,
            tls=handshakes,
        )
        await self._listen(both, config.port, "PLASMA_PORT")
        if config.grpc_port is not None:
            grpc_only = SniffingFactory(
                http=None,
                grpc=self.grpc.protocol_factory,
                first_bytes_timeout=limits.header_timeout,
                tls=handshakes,
            )
            await self._listen(grpc_only, config.grpc_port, "PLASMA_GRPC_PORT")
        self.sse.start()
        if not self.worker_id:  # with workers, worker 0 sends for the whole server
            self._metrics_sender = MetricsSender(config.metrics, self.whole_server_snapshot)
            self._metrics_sender.start()  # PLASMA_METRICS_TYPE=log|syslog; no-op when empty
        self._source_task = loop.create_task(self._run_source())
        self.health.start()
        if self.peers is not None:
            self._peers_task = loop.create_task(self._share_metrics(self.peers))
        self.metrics.runtime.start()
        # Start-up objects live forever: keep them out of every future collection's scan
        # (20,000 streams make each full collection costly otherwise).
        gc.collect()
        gc.freeze()
        log.info(
            "plasma listening",
            extra={
                "host": config.host or "*",
                "port": self.ports[0],
                "grpc_port": self.ports[1] if len(self.ports) > 1 else None,
                "tls": tls is not None,
                "source": self.source.name,
                "worker": self.worker_id,
            },
        )
        if self.publish is not None and self.publish.open_to_all and not self.worker_id:
            log.warning(
                "the publish API is on without access control: anyone who can reach the port "
                "may publish",
                extra={"path": self.publish.path},
            )

    def own_snapshot(self) -> dict[str, Any]:
        """This process's metrics, with its most-subscribed types (top ``TOP_TYPES`` only)."""
        snapshot = self.metrics.snapshot()
        snapshot["subscribed_types"] = self.hub.top_types(TOP_TYPES)
        return snapshot

    def whole_server_snapshot(self) -> dict[str, Any]:
        """This process's metrics, summed with its sibling workers' latest snapshots."""
        own = self.own_snapshot()
        if self.peers is None:
            return own
        merged = merge_snapshots([own, *self.peers.others()])
        # Summed per type across workers, then cut again: the figure stays bounded.
        types = merged.get("subscribed_types") or {}
        top = sorted(types.items(), key=lambda item: -item[1])[:TOP_TYPES]
        merged["subscribed_types"] = dict(top)
        return merged

    def _peers_healthy(self) -> bool:
        """With workers: every sibling's source is up too (``/hc`` speaks for the server)."""
        if self.peers is None:
            return True
        return all(p.get("source_up", 1) for p in self.peers.others())

    async def _share_metrics(self, peers: Peers) -> None:
        """Let sibling workers see this one's counters (``/metrics`` covers the whole server)."""
        while True:
            peers.write(self.own_snapshot())
            await asyncio.sleep(1.0)

    async def _listen(self, factory: SniffingFactory, port: int, variable: str) -> None:
        """Listen on ``port``; TLS, when configured, is the factory's (after accept)."""
        loop = asyncio.get_running_loop()
        try:
            server = await loop.create_server(
                factory,
                host=self.config.host or None,
                port=port,
                backlog=self.config.listen_backlog,
                reuse_address=True,
                reuse_port=self.config.workers != 1 or None,
            )
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise StartupError(
                    f"{variable}={port}: the port is already in use; stop the other process "
                    f"or choose another port"
                ) from exc
            raise StartupError(f"{variable}={port}: cannot listen: {exc.strerror}") from exc
        self._listeners.append(server)
        self.ports.append(server.sockets[0].getsockname()[1])

    async def _run_source(self) -> None:
        """Run the source; when it stops for any reason but shutdown, so does the server."""
        try:
            await self.source.run(self.hub)
        except (SourceGaveUp, FeedLost):
            raise  # run() re-raises it: the CLI exits 3 (the die policy), a worker 4
        except Exception:
            log.exception("source failed unexpectedly; stopping")
            raise
        finally:
            self._stopped.set()

    def stop(self) -> None:
        """Ask ``run`` to shut down (signal handlers call this)."""
        self._stopped.set()

    async def run(self) -> None:
        """Start, serve until a stop signal or a fatal source error, then close."""
        loop = asyncio.get_running_loop()
        await self.start()
        for sig in _STOP_SIGNALS:
            loop.add_signal_handler(sig, self.stop)
        try:
            await self._stopped.wait()
        finally:
            for sig in _STOP_SIGNALS:
                loop.remove_signal_handler(sig)
            await self.aclose()
        task = self._source_task
        if task is not None and task.done() and not task.cancelled() and task.exception():
            raise task.exception()  # type: ignore[misc]

    async def aclose(self) -> None:
        """Stop accepting, stop the source, end every stream, close connections; bounded."""
        log.info("plasma shutting down", extra={"connections": self.metrics.connection_count})
        for server in self._listeners:
            server.close()
        if self._handshakes is not None:
            self._handshakes.close()
        if self._metrics_sender is not None:
            await self._metrics_sender.aclose()
        if self._peers_task is not None:
            self._peers_task.cancel()
        await self.health.aclose()
        task = self._source_task
        if task is not None and not task.done():
            task.cancel()
            # Bounded: a source must never hold shutdown hostage (see RedisSource's cancel check).
            await asyncio.wait({task}, timeout=2.0)
            if not task.done():
                log.error("source did not stop within 2s; abandoning it")
        await self.source.aclose()
        await self.hub.ingest.aclose()
        await self.sse.aclose()
        await self.grpc.aclose()
        if self._http is not None:
            # Let stream handlers return (their responses end cleanly), then close the rest.
            await asyncio.sleep(0)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._http.shutdown(_SHUTDOWN_TIMEOUT), _SHUTDOWN_TIMEOUT)
        for server in self._listeners:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(server.wait_closed(), 1.0)
        self.metrics.runtime.stop()
        log.info("plasma stopped")


def _publish_channels(config: Config) -> tuple[str, ...]:
    """What ``?channel=`` of the publish API may name: the source's channels or subjects."""
    source = config.source
    if source.type == "mock":
        return ()
    if source.type.startswith("nats"):
        return source.nats.subjects
    return source.redis.channels


async def serve(
    config: Config, *, worker_id: int | None = None, peers_dir: str = "", feed_path: str = ""
) -> None:
    """Run one server process until it is told to stop."""
    peers = Peers(peers_dir, worker_id or 0) if peers_dir else None
    await Server(config, peers=peers, worker_id=worker_id, feed_path=feed_path).run()
