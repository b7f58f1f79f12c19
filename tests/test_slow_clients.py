"""A client that stops reading is cut when its buffer fills; nobody else waits for it."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable

import orjson
import pytest

from tests.support import PlasmaProcess, RedisServer, SSEStream, wait_for

pytestmark = pytest.mark.integration


def _stalled_client(port: int, types: str) -> socket.socket:
    """Sends an SSE request, then never reads: its receive window closes fast."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    sock.sendall(
        f"GET /?eventType={types} HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n".encode()
    )
    return sock


async def test_stalled_client_is_cut_and_others_get_everything_in_order(
    redis_plasma: Callable[..., PlasmaProcess], redis_server: RedisServer
) -> None:
    server = redis_plasma(PLASMA_CLIENT_BUFFER="65536")
    stalled = _stalled_client(server.port, "a,big")
    readers = [await SSEStream.open(server.url + "/", "a") for _ in range(200)]
    try:
        await asyncio.gather(*(r.wait_retry() for r in readers))
        wait_for(lambda: server.metrics()["connections"] == 201, what="all 201 streams")
        big = orjson.dumps({"meta": {"type": "big"}, "data": "x" * 256_000})
        with redis_server.client() as r:
            pipe = r.pipeline(transaction=False)
            for n in range(1000):
                pipe.publish("events", orjson.dumps({"meta": {"type": "a"}, "data": {"n": n}}))
                if n % 25 == 0:
                    pipe.publish("events", big)
            pipe.execute()

        async def read_all(stream: SSEStream) -> list[int]:
            return [(await stream.next_event(10)).json()["data"]["n"] for _ in range(1000)]

        # The stalled socket is never read during this test: had the fan-out waited for it,
        # the readers would have stalled too.
        results = await asyncio.gather(*(read_all(r) for r in readers))
        assert all(got == list(range(1000)) for got in results)
        metrics = wait_for(
            lambda: (m := server.metrics())["clients_dropped"] >= 1 and m, what="the drop"
        )
        assert metrics["connections"] == 200
        log = [
            line for line in server.log_lines() if line.get("msg") == "dropped a slow SSE client"
        ]
        assert len(log) == 1
    finally:
        stalled.close()
        for r in readers:
            await r.close()
