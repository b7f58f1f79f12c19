"""Real processes and real clients for the integration tests: redis-server, plasma, SSE readers.

Nothing here fakes what plasma integrates with: ``RedisServer`` runs the ``redis-server`` binary,
``PlasmaProcess`` runs ``python -m plasma`` with an environment, and ``SSEStream`` reads a stream
with aiohttp's HTTP client.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import redis
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as openmetrics_families,
)
from prometheus_client.parser import text_string_to_metric_families
from yarl import URL

__all__ = [
    "CHROMIUM",
    "CHROMIUM_ARGS",
    "HTTPResult",
    "PlasmaProcess",
    "RawSSE",
    "RedisServer",
    "SSEEvent",
    "SSEStream",
    "async_wait_for",
    "free_port",
    "http",
    "port_open",
    "post_event",
    "redis_env",
    "start_redis_plasma",
    "wait_for",
    "wait_subscribed",
]


CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
"""Debian's Chromium, installed by ./scripts/test."""
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    # Without these Chromium dials out at start, and this machine's closed network refuses it.
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(predicate: Any, timeout: float = 10.0, interval: float = 0.05, what: str = "") -> Any:
    """Poll ``predicate()`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")
        time.sleep(interval)


async def async_wait_for(
    predicate: Any, timeout: float = 10.0, interval: float = 0.05, what: str = ""
) -> Any:
    """``wait_for`` for async tests: the event loop keeps running between polls."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")
        await asyncio.sleep(interval)


def port_open(port: int) -> bool:
    """Whether something accepts TCP connections on ``127.0.0.1:port``."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


class RedisServer:
    """A real ``redis-server`` on a free loopback port, with no persistence unless asked."""

    def __init__(
        self, port: int | None = None, password: str = "", *, durable: bool = False
    ) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError(
                "redis-server is not installed: run ./scripts/test, which installs it "
                "(Debian package redis-server)"
            )
        self.binary = binary
        self.port = port or free_port()
        self.password = password
        self.durable = durable  # append-only file, fsync'd on every write: survives SIGKILL
        self.proc: subprocess.Popen[bytes] | None = None
        self._dir = tempfile.mkdtemp(prefix="plasma-redis-")

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> RedisServer:
        args = [
            self.binary,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "yes" if self.durable else "no",
            "--appendfsync",
            "always",
            "--dir",
            self._dir,
            "--enable-debug-command",
            "yes",
        ]
        if self.password:
            args += ["--requirepass", self.password]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(lambda: port_open(self.port), 10, what=f"redis-server on {self.port}")
        return self

    def client(self, **kwargs: Any) -> redis.Redis:
        return redis.Redis(
            host="127.0.0.1", port=self.port, password=self.password or None, **kwargs
        )

    def publish(self, channel: str, message: bytes | str | dict[str, Any]) -> int:
        if isinstance(message, dict):
            message = orjson.dumps(message)
        with self.client() as c:
            return int(c.publish(channel, message))

    def numsub(self, channel: str) -> int:
        with self.client() as c:
            return int(dict(c.pubsub_numsub(channel)).get(channel.encode(), 0))

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def kill(self) -> None:
        self.stop(signal.SIGKILL)


@dataclass
class PlasmaProcess:
    """``python -m plasma`` with the given ``PLASMA_*`` environment, logging to files."""

    env: Mapping[str, str]
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None
    log_dir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="plasma-logs-")))

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def stdout_path(self) -> Path:
        return self.log_dir / "stdout.log"

    @property
    def stderr_path(self) -> Path:
        return self.log_dir / "stderr.log"

    def start(self, wait: bool = True) -> PlasmaProcess:
        if not self.port:
            self.port = int(self.env.get("PLASMA_PORT") or free_port())
        env = {k: v for k, v in os.environ.items() if not k.startswith("PLASMA_")}
        env.update({"PLASMA_HOST": "127.0.0.1", "PLASMA_PORT": str(self.port)})
        env.update(self.env)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "plasma"],
            env=env,
            stdout=open(self.stdout_path, "wb"),  # noqa: SIM115
            stderr=open(self.stderr_path, "wb"),  # noqa: SIM115
        )
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self, timeout: float = 15.0) -> None:
        def ready() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"plasma exited with {self.proc.returncode}:\n{self.output()}")
            return port_open(self.port)

        wait_for(ready, timeout, what=f"plasma on port {self.port}")

    def output(self) -> str:
        out = self.stdout_path.read_text(errors="replace") if self.stdout_path.exists() else ""
        err = self.stderr_path.read_text(errors="replace") if self.stderr_path.exists() else ""
        return out + err

    def log_lines(self) -> list[dict[str, Any]]:
        """Every JSON log line written to stdout so far."""
        lines = []
        for line in self.stdout_path.read_text(errors="replace").splitlines():
            if line.startswith("{"):
                with contextlib.suppress(orjson.JSONDecodeError):
                    lines.append(orjson.loads(line))
        return lines

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int:
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise AssertionError(f"plasma did not stop within {timeout}s") from None
        return int(self.proc.returncode)

    def metrics(self) -> dict[str, Any]:
        import urllib.request

        with urllib.request.urlopen(self.url + "/metrics", timeout=5) as r:
            return dict(orjson.loads(r.read()))


def redis_env(redis_server: RedisServer, **env: str) -> dict[str, str]:
    """Settings for a plasma reading channel ``events`` of ``redis_server``, plus ``env``."""
    return {
        "PLASMA_SUBSCRIBER_TYPE": "redis",
        "PLASMA_SUBSCRIBER_REDIS_ADDR": redis_server.addr,
        "PLASMA_SUBSCRIBER_REDIS_CHANNELS": "events",
        "PLASMA_SUBSCRIBER_REDIS_RETRY_INTERVAL": "200ms",
        **env,
    }


def wait_subscribed(redis_server: RedisServer, env: Mapping[str, str]) -> None:
    """Wait until plasma has subscribed to its first channel (pub/sub sources only)."""
    if env.get("PLASMA_SUBSCRIBER_TYPE") == "redis":
        channel = env["PLASMA_SUBSCRIBER_REDIS_CHANNELS"].split(",")[0]
        wait_for(lambda: redis_server.numsub(channel) > 0, what="plasma to subscribe")


def start_redis_plasma(redis_server: RedisServer, **env: str) -> PlasmaProcess:
    """A plasma on ``redis_server`` (see ``redis_env``), started and subscribed."""
    settings = redis_env(redis_server, **env)
    process = PlasmaProcess(env=settings).start()
    wait_subscribed(redis_server, settings)
    return process


@dataclass
class SSEEvent:
    id: str | None
    data: str
    event: str | None = None

    def json(self) -> Any:
        return orjson.loads(self.data)


class SSEStream:
    """An SSE subscription read with aiohttp's client; ``next_event`` parses one frame."""

    def __init__(self, response: aiohttp.ClientResponse, session: aiohttp.ClientSession) -> None:
        self.response = response
        self._session = session
        self.retry: int | None = None
        self.comments: list[str] = []

    @classmethod
    async def open(
        cls,
        url: str,
        types: str | None,
        *,
        query: str = "eventType",
        headers: Mapping[str, str] | None = None,
        session: aiohttp.ClientSession | None = None,
        after_request: bool = False,
    ) -> SSEStream:
        """Open a stream; ``after_request``: as the second request of a kept-alive connection
        (after ``GET /favicon.ico``, a 404), which plasma serves through aiohttp, not its lean
        path."""
        own = session is None
        reused: list[object] = []
        if session is None:
            trace = aiohttp.TraceConfig()

            async def on_reuse(*args: object) -> None:
                reused.append(args)

            trace.on_connection_reuseconn.append(on_reuse)
            session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=None),
                connector=aiohttp.TCPConnector(limit=1) if after_request else None,
                trace_configs=[trace],
            )
        params = {query: types} if types is not None else {}
        h = {"Accept": "text/event-stream", **(headers or {})}
        try:
            if after_request:
                async with session.get(URL(url).with_path("/favicon.ico").with_query(None)) as r:
                    await r.read()
            response = await session.get(url, params=params, headers=h)
            if after_request and own:
                assert reused, "the stream did not reuse the kept-alive connection"
        except BaseException:
            if own:
                await session.close()
            raise
        stream = cls(response, session if own else None)  # type: ignore[arg-type]
        return stream

    async def next_frame(self, timeout: float = 5.0) -> SSEEvent | None:
        """The next frame with data; records ``retry:`` and comments on the way."""
        fields: dict[str, str] = {}
        data: list[str] = []
        async with asyncio.timeout(timeout):
            while True:
                raw = await self.response.content.readline()
                if not raw:
                    return None
                line = raw.decode().rstrip("\r\n")
                if line == "":
                    if data:
                        return SSEEvent(fields.get("id"), "\n".join(data), fields.get("event"))
                    continue
                if line.startswith(":"):
                    self.comments.append(line[1:])
                    continue
                name, _, value = line.partition(":")
                value = value[1:] if value.startswith(" ") else value
                if name == "data":
                    data.append(value)
                elif name == "retry":
                    self.retry = int(value)
                else:
                    fields[name] = value

    async def next_event(self, timeout: float = 5.0) -> SSEEvent:
        frame = await self.next_frame(timeout)
        if frame is None:
            raise AssertionError("stream ended before the next event")
        return frame

    async def wait_retry(self, timeout: float = 5.0) -> int:
        """Read until the ``retry:`` line that opens every plasma stream."""
        async with asyncio.timeout(timeout):
            while self.retry is None:
                raw = await self.response.content.readline()
                if not raw:
                    raise AssertionError("stream ended before retry:")
                line = raw.decode().rstrip("\r\n")
                if line.startswith("retry:"):
                    self.retry = int(line[6:].strip())
        return self.retry

    async def close(self) -> None:
        self.response.close()
        if self._session is not None:
            await self._session.close()


@dataclass
class HTTPResult:
    status: int
    headers: Mapping[str, str]
    body: bytes

    def json(self) -> Any:
        return orjson.loads(self.body)


def http(
    url: str,
    method: str = "GET",
    body: bytes | None = None,
    headers: Mapping[str, str] | None = None,
    timeout: float = 5.0,
) -> HTTPResult:
    """One plain HTTP request with urllib; 4xx and 5xx are results, not exceptions."""
    import urllib.error
    import urllib.request

    request = urllib.request.Request(url, data=body, method=method, headers=dict(headers or {}))
    try:
        with urllib.request.urlopen(request, timeout=timeout) as r:
            return HTTPResult(r.status, dict(r.headers.items()), r.read())
    except urllib.error.HTTPError as exc:
        with exc:
            return HTTPResult(exc.code, dict(exc.headers.items()), exc.read())


def post_event(base_url: str, type: str, data: Any = None) -> HTTPResult:
    """Publish an event through ``POST /debug`` (needs ``PLASMA_DEBUG=true``)."""
    body = orjson.dumps({"meta": {"type": type}, "data": data})
    result = http(base_url + "/debug", "POST", body, {"Content-Type": "application/json"})
    if result.status != 200:
        raise AssertionError(f"POST /debug answered {result.status}: {result.body!r}")
    return result


# --- Prometheus scrapes -------------------------------------------------------------------------

# What Prometheus 2.x sends by default.
PROMETHEUS_ACCEPT = (
    "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;"
    "q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
)

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(url: str, accept: str = PROMETHEUS_ACCEPT) -> Samples:
    """``GET /metrics`` as Prometheus asks for it, parsed into ``{(name, labels): value}``."""
    result = http(url + "/metrics", headers={"Accept": accept})
    assert result.status == 200, result.body
    text = result.body.decode()
    if result.headers["Content-Type"].startswith("application/openmetrics-text"):
        families = openmetrics_families(text)
    else:
        families = text_string_to_metric_families(text)
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for f in families for s in f.samples}


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


class RawSSE:
    """An SSE request over a bare asyncio socket: cheap enough for thousands at once."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.buffer = b""

    @classmethod
    async def open(
        cls,
        port: int,
        path: str,
        headers: Mapping[str, str] | None = None,
        *,
        after_request: bool = False,
        version: str = "1.1",
    ) -> RawSSE:
        """Send an SSE request; ``after_request``: first ``GET /favicon.ico`` (a 404) on the
        same connection and read its answer, so the stream is a kept-alive connection's second
        request."""
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        raw = cls(reader, writer)
        if after_request:
            first = f"GET /favicon.ico HTTP/{version}\r\nHost: 127.0.0.1\r\n"
            writer.write(f"{first}Connection: keep-alive\r\n\r\n".encode())
            await raw.read_until(b"404 page not found\n")
            raw.buffer = b""
        lines = [f"GET {path} HTTP/{version}", "Host: 127.0.0.1", "Accept: text/event-stream"]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
        return raw

    async def read_until(self, marker: bytes, timeout: float = 10.0) -> bytes:
        """Read until ``marker`` has arrived; return everything read so far."""
        async with asyncio.timeout(timeout):
            while marker not in self.buffer:
                chunk = await self.reader.read(65536)
                if not chunk:
                    raise AssertionError(f"connection closed before {marker!r}: {self.buffer!r}")
                self.buffer += chunk
        return self.buffer

    async def read_to_eof(self, timeout: float = 10.0) -> bytes:
        async with asyncio.timeout(timeout):
            while chunk := await self.reader.read(65536):
                self.buffer += chunk
        return self.buffer

    def close(self) -> None:
        self.writer.close()
