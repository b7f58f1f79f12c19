"""Publish API and Python client figures (``./scripts/bench --publish-api`` / ``--client``).

``--publish-api``: batches of ``--batch`` events POSTed to ``/publish`` by ``--publishers``
concurrent HTTP connections, into Redis (pub/sub ``PUBLISH``, or ``XADD`` with
``--source redis-stream``); prints events/s accepted by the API. The Redis side is checked:
the count the server reports equals what was sent (``XLEN`` for streams).

``--client``: how many events/s one ``plasma.client.Subscriber`` receives, over SSE and over
gRPC (grpcio), while a separate process publishes to Redis as fast as it can.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from typing import Any

import aiohttp
import orjson

from plasma_bench.procstat import cpu_seconds, process_tree
from plasma_bench.servers import PlasmaServer, RedisServer

__all__ = ["run_client", "run_publish_api"]


def _plasma(redis: RedisServer, source: str, env: dict[str, str]) -> PlasmaServer:
    server = PlasmaServer(
        f"{redis.host}:{redis.port}", "events", {"PLASMA_SUBSCRIBER_TYPE": source, **env}
    )
    return server.start()


async def _post_batches(
    url: str, batch: list[bytes], batches: int, publishers: int
) -> tuple[float, int, int]:
    body = b"[" + b",".join(batch) + b"]"
    headers = {"Content-Type": "application/json"}
    published = 0
    errors = 0
    per_publisher = batches // publishers

    async def one(session: aiohttp.ClientSession) -> None:
        nonlocal published, errors
        for _ in range(per_publisher):
            async with session.post(url, data=body, headers=headers) as response:
                answer = await response.read()
                if response.status == 200:
                    published += orjson.loads(answer)["published"]
                else:
                    errors += 1

    connector = aiohttp.TCPConnector(limit=publishers)
    async with aiohttp.ClientSession(connector=connector) as session:
        await _warm_up(session, url, body, headers)
        started = time.perf_counter()
        await asyncio.gather(*(one(session) for _ in range(publishers)))
        elapsed = time.perf_counter() - started
    return elapsed, published, errors


async def _warm_up(
    session: aiohttp.ClientSession, url: str, body: bytes, headers: dict[str, str]
) -> None:
    for _ in range(20):
        async with session.post(url, data=body, headers=headers) as response:
            await response.read()


def run_publish_api(
    *, batch_size: int, batches: int, publishers: int, source: str, workers: int, repeat: int
) -> list[dict[str, Any]]:
    """Events/s through ``POST /publish`` into Redis; one row per run."""
    rows = []
    redis = RedisServer().start()
    server = _plasma(
        redis,
        source,
        {
            "PLASMA_PUBLISH_API": "true",
            "PLASMA_WORKERS": str(workers),
            "PLASMA_SUBSCRIBER_REDIS_RETRY_INTERVAL": "200ms",
        },
    )
    try:
        url = f"http://{server.host}:{server.port}/publish"
        batch = [
            orjson.dumps({"meta": {"type": f"bench:{i % 10}"}, "data": {"n": i, "pad": "x" * 64}})
            for i in range(batch_size)
        ]
        for run in range(repeat):
            server_pids = process_tree(server.pid)
            cpu_before = cpu_seconds(server_pids), cpu_seconds([redis.pid])
            elapsed, published, errors = asyncio.run(_post_batches(url, batch, batches, publishers))
            server_cpu = cpu_seconds(server_pids) - cpu_before[0]
            redis_cpu = cpu_seconds([redis.pid]) - cpu_before[1]
            row = {
                "run": run + 1,
                "source": source,
                "workers": workers,
                "batch": batch_size,
                "publishers": publishers,
                "events": published,
                "errors": errors,
                "seconds": round(elapsed, 3),
                "events_per_s": round(published / elapsed),
                "requests_per_s": round(published / batch_size / elapsed),
                # CPU seconds per million events: what the figures mean on a shared machine.
                # The server's share includes reading every event back from its own source.
                "server_cpu_s_per_million": round(server_cpu / published * 1e6, 2),
                "redis_cpu_s_per_million": round(redis_cpu / published * 1e6, 2),
                "events_per_server_cpu_s": round(published / server_cpu) if server_cpu else None,
            }
            if source == "redis-stream":
                import redis as redis_py

                with redis_py.Redis(host=redis.host, port=redis.port) as client:
                    row["xlen"] = int(client.xlen("events"))
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
