"""Publish API and Python client figures (``./scripts/bench --publish-api`` / ``--client``).

``--publish-api``: batches of ``--batch`` events POSTed to ``/publish`` by ``--publishers``
concurrent HTTP connections, into Redis (pub/sub ``PUBLISH``, or ``XADD`` with
``--source redis-stream``); prints events/s accepted by the API. The Redis side is checked:
the count the server reports equals what was sent (``XLEN`` for streams). The server also
reads every event back (it subscribes to the channel it publishes to), so each run then sends
the same batches straight into Redis and reports what reading them back costs alone
(``readback_cpu_s_per_million``) and the API's own share (``api_cpu_s_per_million``).

``--client``: how many events/s one ``plasma.client.Subscriber`` receives, over SSE and over
gRPC (grpcio), while a separate process publishes to Redis as fast as it can.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
import urllib.request
from typing import Any

import hiredis
import orjson

from plasma_bench.procstat import cpu_seconds, process_tree
from plasma_bench.servers import PlasmaServer, RedisServer

__all__ = ["run_client", "run_publish_api"]


def _plasma(redis: RedisServer, source: str, env: dict[str, str]) -> PlasmaServer:
    server = PlasmaServer(
        f"{redis.host}:{redis.port}", "events", {"PLASMA_SUBSCRIBER_TYPE": source, **env}
    )
    return server.start()


class _Poster(asyncio.Protocol):
    """One keep-alive connection that POSTs the same pre-built request, one at a time.

    A plain protocol instead of aiohttp's client: the client side then costs a few
    microseconds per request (one write, one read, one small JSON parse), so the load
    generator is not what limits the figure (its CPU is reported beside the server's).
    """

    def __init__(self, request: bytes, count: int, done: asyncio.Future[None]) -> None:
        self._request = request
        self._left = count
        self._done = done
        self._buffer = b""
        self._transport: asyncio.Transport | None = None
        self.published = 0
        self.errors = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        self._send()

    def _send(self) -> None:
        if self._left <= 0:
            if not self._done.done():
                self._done.set_result(None)
            return
        self._left -= 1
        assert self._transport is not None
        self._transport.write(self._request)

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer + data
        head_end = buffer.find(b"\r\n\r\n")
        if head_end == -1:
            self._buffer = buffer
            return
        head = buffer[:head_end].lower()
        at = head.find(b"content-length:")
        length = int(head[at + 15 : head.find(b"\r\n", at)]) if at != -1 else 0
        end = head_end + 4 + length
        if len(buffer) < end:
            self._buffer = buffer
            return
        self._buffer = buffer[end:]
        if head[9:12] == b"200":
            self.published += orjson.loads(buffer[head_end + 4 : end])["published"]
        else:
            self.errors += 1
        self._send()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self._done.done():
            self._done.set_exception(ConnectionError(f"the server closed the connection: {exc}"))


def publish_request(host: str, port: int, path: str, body: bytes) -> bytes:
    """A whole keep-alive ``POST`` of ``body`` (JSON), ready to write as it is."""
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


async def _post_batches(
    host: str, port: int, body: bytes, batches: int, publishers: int
) -> tuple[float, int, int]:
    loop = asyncio.get_running_loop()
    request = publish_request(host, port, "/publish", body)
    warm_done: asyncio.Future[None] = loop.create_future()
    warm = _Poster(request, 20, warm_done)
    transport, _ = await loop.create_connection(lambda: warm, host, port)
    await warm_done
    transport.close()
    posters = []
    waits = []
    per_publisher = batches // publishers
    started = time.perf_counter()
    for _ in range(publishers):
        done: asyncio.Future[None] = loop.create_future()
        poster = _Poster(request, per_publisher, done)
        await loop.create_connection(lambda poster=poster: poster, host, port)  # type: ignore[misc]
        posters.append(poster)
        waits.append(done)
    await asyncio.gather(*waits)
    elapsed = time.perf_counter() - started
    return elapsed, sum(p.published for p in posters), sum(p.errors for p in posters)


def _settle(host: str, port: int) -> int:
    """Wait until the server has read back what was published: its received count stops.
    Returns that count (``events_received``, summed over workers).

    With workers, ``/metrics`` sums the siblings' snapshots, which each shares once a second:
    the count has to stay put for longer than that.
    """
    url = f"http://{host}:{port}/metrics"
    last = -1
    steady_since = time.monotonic()
    deadline = steady_since + 120
    while time.monotonic() < deadline:
        with urllib.request.urlopen(url, timeout=10) as answer:
            now = int(orjson.loads(answer.read())["events_received"])
        if now != last:
            last, steady_since = now, time.monotonic()
        elif time.monotonic() - steady_since > 1.5:
            return now
        time.sleep(0.25)
    raise RuntimeError("the server did not catch up with what was published in 120s")


def _publish_direct(
    redis: RedisServer, source: str, batch: list[bytes], batches: int, rate: float
) -> None:
    """The same batches straight into Redis, one ``MULTI``/``EXEC`` each as the API sends them,
    at the pace the API took them (``rate`` batches/s): what the server then spends is reading
    them back alone. (Faster, a pub/sub reader falls behind by more than Redis's output
    buffer limit for subscribers and is cut off: the events it loses would cost nothing.)"""
    from plasma.sources.redis_batch import command
    from plasma.sources.redis_stream import EVENT_FIELD

    head = (b"PUBLISH", b"events") if source == "redis" else (b"XADD", b"events", b"*", EVENT_FIELD)
    transaction = b"".join(
        [command(b"MULTI"), *(command(*head, value) for value in batch), command(b"EXEC")]
    )
    with socket.create_connection((redis.host, redis.port)) as sock:
        reader = hiredis.Reader()
        started = time.perf_counter()
        for n in range(batches):
            if (wait := started + n / rate - time.perf_counter()) > 0:
                time.sleep(wait)
            sock.sendall(transaction)
            replies = 0
            while replies < len(batch) + 2:
                chunk = sock.recv(1 << 16)
                if not chunk:
                    raise ConnectionError("redis closed the connection")
                reader.feed(chunk)
                while reader.gets() is not False:
                    replies += 1


def _split_cpu(server: PlasmaServer) -> tuple[list[int], list[int]]:
    """The supervisor (with workers: the node's reader) and its worker processes."""
    tree = process_tree(server.pid)
    return [server.pid], [pid for pid in tree if pid != server.pid]


def run_publish_api(
    *,
    batch_size: int,
    batches: int,
    publishers: int,
    source: str,
    workers: int,
    repeat: int,
    env: dict[str, str] | None = None,
) -> list[dict[str, Any]]:
    """Events/s through ``POST /publish`` into Redis; one row per run."""
    rows = []
    redis = RedisServer().start()
    server_env = {
        "PLASMA_PUBLISH_API": "true",
        "PLASMA_WORKERS": str(workers),
        "PLASMA_SUBSCRIBER_REDIS_RETRY_INTERVAL": "200ms",
        **(env or {}),
    }
    server = _plasma(redis, source, server_env)
    try:
        batch = [
            orjson.dumps({"meta": {"type": f"bench:{i % 10}"}, "data": {"n": i, "pad": "x" * 64}})
            for i in range(batch_size)
        ]
        body = b"[" + b",".join(batch) + b"]"
        for run in range(repeat):
            received_start = _settle(server.host, server.port)
            main_pids, worker_pids = _split_cpu(server)
            before = (
                cpu_seconds(main_pids),
                cpu_seconds(worker_pids),
                cpu_seconds([redis.pid]),
                time.process_time(),
            )
            elapsed, published, errors = asyncio.run(
                _post_batches(server.host, server.port, body, batches, publishers)
            )
            received_api = _settle(server.host, server.port)  # the read-back is server cost
            main_cpu = cpu_seconds(main_pids) - before[0]
            worker_cpu = cpu_seconds(worker_pids) - before[1]
            redis_cpu = cpu_seconds([redis.pid]) - before[2]
            client_cpu = time.process_time() - before[3]
            server_cpu = main_cpu + worker_cpu
            per_million = 1e6 / published if published else 0.0
            row: dict[str, Any] = {
                "run": run + 1,
                "source": source,
                "workers": int(server_env["PLASMA_WORKERS"]),
                "batch": batch_size,
                "publishers": publishers,
                "events": published,
                "errors": errors,
                "seconds": round(elapsed, 3),
                "events_per_s": round(published / elapsed),
                "requests_per_s": round(published / batch_size / elapsed),
                # CPU seconds per million events: what the figures mean on a shared machine.
                # The server's share includes reading every event back from its own source.
                "server_cpu_s_per_million": round(server_cpu * per_million, 2),
                "redis_cpu_s_per_million": round(redis_cpu * per_million, 2),
                "client_cpu_s_per_million": round(client_cpu * per_million, 2),
                "events_per_server_cpu_s": round(published / server_cpu) if server_cpu else None,
                "load_average": [round(x, 2) for x in os.getloadavg()],
            }
            # The read-back alone: the same batches published straight into Redis.
            direct_before = cpu_seconds(main_pids + worker_pids)
            _publish_direct(
                redis, source, batch, published // batch_size, published / batch_size / elapsed
            )
            received_direct = _settle(server.host, server.port)
            # Both phases must have been read back whole (by each worker) for the split to
            # hold; the API's count includes its 20 warm-up requests.
            row["received_api"] = received_api - received_start
            row["received_direct"] = received_direct - received_api
            readback = (cpu_seconds(main_pids + worker_pids) - direct_before) * per_million
            row["readback_cpu_s_per_million"] = round(readback, 2)
            row["api_cpu_s_per_million"] = round(server_cpu * per_million - readback, 2)
            if worker_pids:  # the supervisor reads the source; the workers serve the API
                row["supervisor_cpu_s_per_million"] = round(main_cpu * per_million, 2)
                row["workers_cpu_s_per_million"] = round(worker_cpu * per_million, 2)
            if source == "redis-stream":
                import redis as redis_py

                with redis_py.Redis(host=redis.host, port=redis.port) as client:
                    row["xlen"] = int(client.xlen("events"))  # the direct phase's entries too
            rows.append(row)
            print(orjson.dumps(row).decode(), flush=True)
    finally:
        server.stop()
        redis.stop()
    return rows


_PUBLISHER = """
import sys, orjson, redis
host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
client = redis.Redis(host=host, port=port)
for start in range(0, n, 500):
    pipe = client.pipeline(transaction=False)
    for i in range(start, min(n, start + 500)):
        pipe.publish("events", orjson.dumps({"meta": {"type": "bench"}, "data": {"n": i}}))
    pipe.execute()
"""


async def _receive(url: str, transport: Any, n: int, publish: list[str]) -> tuple[float, int]:
    from plasma.client import Event, Subscriber

    async with Subscriber(url, ["bench"], transport=transport) as subscriber:
        publisher = subprocess.Popen([*publish, str(n)])
        got = 0
        first = 0.0
        try:
            async for item in subscriber:
                if isinstance(item, Event):
                    got += 1
                    if got == 1:
                        first = time.perf_counter()
                    if got == n:
                        break
        finally:
            publisher.wait()
        return time.perf_counter() - first, got


def run_client(*, events: int, repeat: int) -> list[dict[str, Any]]:
    """Events/s one ``Subscriber`` receives, per transport; one row per run."""
    rows = []
    redis = RedisServer().start()
    server = _plasma(
        redis, "redis", {"PLASMA_CLIENT_BUFFER": str(256 << 20), "PLASMA_HISTORY_SIZE": "0"}
    )
    publish = [sys.executable, "-c", _PUBLISHER, redis.host, str(redis.port)]
    try:
        url = f"http://{server.host}:{server.port}"
        for run in range(repeat):
            for transport in ("sse", "grpc"):
                elapsed, got = asyncio.run(_receive(url, transport, events, publish))
                row = {
                    "run": run + 1,
                    "transport": transport,
                    "events": got,
                    "seconds": round(elapsed, 3),
                    "events_per_s": round(got / elapsed),
                    "cpus": os.cpu_count(),
                }
                rows.append(row)
                print(orjson.dumps(row).decode(), flush=True)
    finally:
        server.stop()
        redis.stop()
    return rows
