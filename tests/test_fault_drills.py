"""Fault drills with real processes: Redis killed or hanging, connection churn, fd exhaustion.

(A killed worker process is drilled in tests/test_workers.py.)
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable

import orjson
import pytest
import redis

from tests.support import (
    PlasmaProcess,
    RedisServer,
    SSEStream,
    async_wait_for,
    free_port,
    wait_for,
)

pytestmark = pytest.mark.integration


def health(url: str) -> tuple[int, float]:
    started = time.monotonic()
    try:
        with urllib.request.urlopen(url + "/hc", timeout=5) as r:
            status = r.status
    except urllib.error.HTTPError as exc:
        status = exc.code
    except (urllib.error.URLError, OSError):
        status = 0  # not listening (yet)
    return status, time.monotonic() - started


async def heartbeats_within(stream: SSEStream, seconds: float) -> int:
    count = 0
    try:
        async with asyncio.timeout(seconds):
            while True:
                if (await stream.response.content.readline()).startswith(b":heartbeat"):
                    count += 1
    except TimeoutError:
        pass
    return count


def event(event_type: str, n: int) -> bytes:
    return orjson.dumps({"meta": {"type": event_type}, "data": {"n": n}})


async def test_redis_sigkill_under_load_then_restart(
    redis_plasma: Callable[..., PlasmaProcess], redis_server: RedisServer
) -> None:
    server = redis_plasma(PLASMA_SUBSCRIBER_REDIS_RETRY_INTERVAL="200ms")
    streams = [await SSEStream.open(server.url + "/", "load") for _ in range(50)]
    try:
        await asyncio.gather(*(s.wait_retry() for s in streams))
        for n in range(100):
            redis_server.publish("events", event("load", n))
        for s in streams:
            assert [(await s.next_event()).json()["data"]["n"] for _ in range(100)] == list(
                range(100)
            )

        redis_server.kill()
        wait_for(lambda: health(server.url)[0] == 500, what="/hc to turn 500")
        assert server.metrics()["connections"] == 50, "clients stay connected"

        redis_server.start()
        wait_for(lambda: health(server.url)[0] == 200, what="/hc to turn 200")
        wait_for(lambda: redis_server.numsub("events") == 1, what="plasma to resubscribe")
        for n in range(100, 200):
            redis_server.publish("events", event("load", n))
        for s in streams:
            assert (await s.next_event()).event == "gap", "the outage is announced"
            assert [(await s.next_event()).json()["data"]["n"] for _ in range(100)] == list(
                range(100, 200)
            )
        assert server.metrics()["source_reconnects"] >= 1
    finally:
        for s in streams:
            await s.close()


async def test_stream_source_loses_nothing_when_redis_is_killed_mid_stream(
    plasma: Callable[..., PlasmaProcess],
) -> None:
    store = RedisServer(durable=True).start()
    try:
        server = plasma(
            PLASMA_SUBSCRIBER_TYPE="redis-stream",
            PLASMA_SUBSCRIBER_REDIS_ADDR=store.addr,
            PLASMA_SUBSCRIBER_REDIS_CHANNELS="drill",
            PLASMA_SUBSCRIBER_REDIS_RETRY_INTERVAL="200ms",
        )
        stream = await SSEStream.open(server.url + "/", "d")
        await stream.wait_retry()
        wait_for(lambda: server.metrics()["source_up"] == 1, what="the stream source to read")
        confirmed: list[int] = []
        refused: list[int] = []
        stop = threading.Event()

        def publish() -> None:
            n = 0
            while not stop.is_set() and n < 400:
                try:
                    with store.client(socket_timeout=1) as r:
                        r.xadd("drill", {"event": event("d", n)})
                    confirmed.append(n)
                except (redis.RedisError, OSError):
                    refused.append(n)
                    time.sleep(0.05)  # Redis is down: that event was never accepted
                n += 1
                time.sleep(0.005)

        publisher = threading.Thread(target=publish)
        publisher.start()
        try:
            await async_wait_for(lambda: len(confirmed) >= 20, what="events before the kill")
            store.kill()
            await async_wait_for(lambda: refused, what="the publisher to find Redis down")
            store.start()  # same directory: the append-only file brings the stream back
        finally:
            await asyncio.to_thread(publisher.join, 30)
            stop.set()
        received: list[int] = []
        ids: list[str] = []
        while len(received) < len(confirmed):
            got = await stream.next_event(10)
            received.append(got.json()["data"]["n"])
            ids.append(got.id or "")
        await stream.close()
        assert received == confirmed, "every accepted event, once, in order"
        assert len(set(ids)) == len(ids)
    finally:
        store.stop()


@pytest.mark.parametrize("hang", ["DEBUG SLEEP 3", "CLIENT PAUSE 3000"])
async def test_hanging_redis_freezes_neither_sse_nor_hc(
    redis_plasma: Callable[..., PlasmaProcess], redis_server: RedisServer, hang: str
) -> None:
    server = redis_plasma(PLASMA_SSE_HEARTBEAT="200ms")
    watcher = await SSEStream.open(server.url + "/", "h")
    await watcher.wait_retry()
    try:
        hanger = threading.Thread(
            target=lambda: redis_server.client().execute_command(*hang.split())
        )
        hanger.start()
        await asyncio.sleep(0.3)
        status, took = await asyncio.to_thread(health, server.url)
        assert took < 2.0, f"/hc took {took:.2f}s while Redis hung"
        newcomer = await SSEStream.open(server.url + "/", "h")
        assert await newcomer.wait_retry(timeout=2) == 2000
        # The watcher's heartbeats keep coming while Redis hangs.
        assert await heartbeats_within(watcher, 1.0) >= 2
        await asyncio.to_thread(hanger.join, 10)
        wait_for(lambda: health(server.url)[0] == 200, what="/hc back to 200")
        redis_server.publish("events", event("h", 1))
        assert (await newcomer.next_event()).json()["data"]["n"] == 1
        await newcomer.close()
        assert status in (200, 500)
    finally:
        await watcher.close()


async def _churn(port: int, total: int, batch: int) -> int:
    request = b"GET /?eventType=c HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n"
    served = 0

    async def one() -> bool:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(request)
            head = await reader.readuntil(b"retry:")
            return head.startswith(b"HTTP/1.1 200")
        finally:
            writer.close()

    for _ in range(total // batch):
        results = await asyncio.gather(*(one() for _ in range(batch)))
        served += sum(results)
    return served


async def test_connection_churn_leaks_no_fds_or_memory(
    plasma: Callable[..., PlasmaProcess],
) -> None:
    server = plasma()
    await _churn(server.port, 1000, 250)  # warm up allocator and caches
    wait_for(lambda: server.metrics()["connections"] == 0)
    before = server.metrics()
    served = await _churn(server.port, 20_000, 250)
    assert served == 20_000
    after = wait_for(
        lambda: (m := server.metrics())["connections"] == 0 and m, what="all streams to end"
    )
    assert after["open_fds"] - before["open_fds"] <= 5
    growth = after["memory_rss"] - before["memory_rss"]
    assert growth < 16 * 1024 * 1024, f"RSS grew {growth / 1e6:.1f} MB over 20,000 connections"


async def test_fd_exhaustion_refuses_cleanly_and_recovers() -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PLASMA_")}
    env.update(PLASMA_HOST="127.0.0.1", PLASMA_PORT=str(port))
    proc = subprocess.Popen(
        ["bash", "-c", f"ulimit -n 48 && exec {sys.executable} -m plasma"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    socks: list[socket.socket] = []
    try:
        wait_for(lambda: health(f"http://127.0.0.1:{port}")[0] == 200, what="plasma up")
        served = refused = 0
        for _ in range(80):
            s = socket.create_connection(("127.0.0.1", port))
            s.settimeout(3)
            socks.append(s)
            s.sendall(b"GET /?eventType=a HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n")
            try:
                head = s.recv(64)
            except (ConnectionResetError, TimeoutError):
                head = b""
            if head.startswith(b"HTTP/1.1 200"):
                served += 1
            else:
                refused += 1
        assert served > 10 and refused > 0, (served, refused)
        assert proc.poll() is None, "plasma must survive running out of file descriptors"
        for s in socks:
            s.close()
        socks.clear()
        wait_for(lambda: health(f"http://127.0.0.1:{port}")[0] == 200, what="recovery")
    finally:
        for s in socks:
            s.close()
        proc.terminate()
        assert proc.wait(10) == 0
