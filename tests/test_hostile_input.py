"""Hostile input over raw sockets: every bad request gets a clean answer or a bounded close,
and the server keeps serving everyone else."""

from __future__ import annotations

import asyncio
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator

import orjson
import pytest

from tests.support import PlasmaProcess, RedisServer, SSEStream, start_redis_plasma, wait_for

pytestmark = pytest.mark.integration


def exchange(port: int, data: bytes, *, wait: float = 5.0) -> tuple[bytes, float]:
    """Send ``data``, read until the server closes (or ``wait`` passes); return reply, seconds."""
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=wait) as sock:
        if data:
            sock.sendall(data)
        chunks = []
        try:
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                chunks.append(chunk)
        except (TimeoutError, ConnectionResetError):
            pass
    return b"".join(chunks), time.monotonic() - started


def status_of(reply: bytes) -> int:
    assert reply.startswith(b"HTTP/1."), reply[:200]
    return int(reply.split(b" ", 2)[1])


def sse_request(query: str, extra: str = "") -> bytes:
    return (
        f"GET /?{query} HTTP/1.1\r\nHost: t\r\nAccept: text/event-stream\r\n"
        f"Connection: close\r\n{extra}\r\n"
    ).encode("latin-1")


@pytest.fixture(scope="module")
def redis_server(redis_module: RedisServer) -> RedisServer:
    """One redis-server for the module: these tests abuse plasma, not Redis."""
    return redis_module


@pytest.fixture(scope="module")
def server(redis_server: RedisServer) -> Iterator[PlasmaProcess]:
    """One plasma for the module: every test also checks it still serves afterwards."""
    process = start_redis_plasma(
        redis_server,
        PLASMA_HEADER_TIMEOUT="1s",
        PLASMA_MAX_TYPES="4",
        PLASMA_MAX_TYPE_LENGTH="32",
        PLASMA_MAX_EVENT_SIZE="4096",
        PLASMA_ORIGIN="https://app.example",
    )
    yield process
    assert process.stop() == 0


@pytest.fixture
async def bystander(server: PlasmaProcess) -> SSEStream:
    """A well-behaved client that must keep receiving through all the abuse."""
    stream = await SSEStream.open(server.url + "/", "ok")
    await stream.wait_retry()
    yield stream
    await stream.close()


async def assert_still_serving(
    bystander: SSEStream, redis_server: RedisServer, marker: int
) -> None:
    redis_server.publish("events", {"meta": {"type": "ok"}, "data": marker})
    assert (await bystander.next_event()).json()["data"] == marker


@pytest.mark.parametrize(
    ("query", "reason"),
    [
        ("eventType=%ZZ", b"percent-encoding"),
        ("eventType=a%FFb", b"UTF-8"),
        ("eventType=", b"no event type"),
        ("eventType=,,,", b"no event type"),
        ("eventType=a%20b", b"spaces or control"),
        ("eventType=a%01b", b"spaces or control"),
        ("eventType=a,b,c,d,e", b"more than 4"),
        ("eventType=" + "x" * 33, b"longer than 32"),
        ("other=a", b"missing query parameter"),
    ],
)
async def test_bad_subscriptions_get_400_with_a_reason(
    server: PlasmaProcess,
    bystander: SSEStream,
    redis_server: RedisServer,
    query: str,
    reason: bytes,
) -> None:
    reply, _ = await asyncio.to_thread(exchange, server.port, sse_request(query))
    assert status_of(reply) == 400
    assert reason in reply
    await assert_still_serving(bystander, redis_server, 1)


async def test_garbage_instead_of_http_gets_400_and_close(
    server: PlasmaProcess, bystander: SSEStream, redis_server: RedisServer
) -> None:
    reply, took = await asyncio.to_thread(exchange, server.port, b"\x16\x03\x01garbage\r\n\r\n")
    assert status_of(reply) == 400
    assert took < 5
    await assert_still_serving(bystander, redis_server, 2)


@pytest.mark.parametrize(
    "data",
    [b"", b"GET /hc HTT", b"GET /hc HTTP/1.1\r\nHost: x\r\n", b"PRI * HTTP/2.0\r\n"],
    ids=["nothing", "truncated-line", "truncated-headers", "truncated-preface"],
)
async def test_silent_or_truncated_clients_are_closed_within_the_header_timeout(
    server: PlasmaProcess, bystander: SSEStream, redis_server: RedisServer, data: bytes
) -> None:
    reply, took = await asyncio.to_thread(exchange, server.port, data, wait=8)
    assert took < 4, f"closed after {took:.1f}s with PLASMA_HEADER_TIMEOUT=1s"
    assert b"200 OK" not in reply
    await assert_still_serving(bystander, redis_server, 3)


async def test_oversized_request_line_and_headers_get_4xx(server: PlasmaProcess) -> None:
    long_line = b"GET /?eventType=" + b"a" * 10000 + b" HTTP/1.1\r\nHost: x\r\n\r\n"
    reply, _ = await asyncio.to_thread(exchange, server.port, long_line)
    assert 400 <= status_of(reply) < 500
    big_header = b"GET /hc HTTP/1.1\r\nHost: x\r\nX-Big: " + b"b" * 10000 + b"\r\n\r\n"
    reply, _ = await asyncio.to_thread(exchange, server.port, big_header)
    assert 400 <= status_of(reply) < 500
    many = b"GET /hc HTTP/1.1\r\n" + b"".join(b"X-%d: y\r\n" % i for i in range(200)) + b"\r\n"
    reply, _ = await asyncio.to_thread(exchange, server.port, many)
    assert 400 <= status_of(reply) < 500


async def test_pipelined_requests_are_answered_in_order(server: PlasmaProcess) -> None:
    data = (
        b"GET /hc HTTP/1.1\r\nHost: x\r\n\r\n"
        b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n"
        b"GET /hc HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    reply, _ = await asyncio.to_thread(exchange, server.port, data)
    statuses = [int(code) for code in re.findall(rb"HTTP/1\.1 (\d{3}) ", reply)]
    assert statuses == [200, 404, 200]


async def test_head_and_cors_preflight(server: PlasmaProcess) -> None:
    reply, _ = await asyncio.to_thread(
        exchange, server.port, b"HEAD /hc HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    assert status_of(reply) == 200
    assert reply.endswith(b"\r\n\r\n"), "HEAD must not carry a body"
    reply, _ = await asyncio.to_thread(
        exchange,
        server.port,
        b"OPTIONS /?eventType=a HTTP/1.1\r\nHost: x\r\nOrigin: https://app.example\r\n"
        b"Access-Control-Request-Method: GET\r\n"
        b"Access-Control-Request-Headers: last-event-id\r\nConnection: close\r\n\r\n",
    )
    assert status_of(reply) == 204
    head = reply.lower()
    assert b"access-control-allow-origin: https://app.example" in head
    assert b"last-event-id" in head
    assert b"access-control-allow-methods: get" in head


@pytest.mark.parametrize(
    "accept",
    ["text/event-stream; charset=utf-8", "text/html, text/event-stream;q=0.9", "TEXT/EVENT-STREAM"],
)
async def test_accept_with_parameters_or_several_types_gets_sse(
    server: PlasmaProcess, accept: str
) -> None:
    stream = await SSEStream.open(server.url + "/", "a", headers={"Accept": accept})
    try:
        assert await stream.wait_retry() == 2000
    finally:
        await stream.close()


async def test_max_connections_gets_503_with_retry_after(
    plasma: Callable[..., PlasmaProcess],
) -> None:
    server = plasma(PLASMA_MAX_CONNECTIONS="2")
    streams = [await SSEStream.open(server.url + "/", "a") for _ in range(2)]
    try:
        for s in streams:
            await s.wait_retry()
        reply, _ = await asyncio.to_thread(exchange, server.port, sse_request("eventType=a"))
        assert status_of(reply) == 503
        assert b"Retry-After: " in reply
    finally:
        for s in streams:
            await s.close()
    # Capacity returns when streams end.
    wait_for(lambda: server.metrics()["connections"] == 0)
    again = await SSEStream.open(server.url + "/", "a")
    try:
        await again.wait_retry()
    finally:
        await again.close()


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"not json", "invalid_json"),
        (b"[" * 2000 + b"]" * 2000, "invalid_json"),
        (orjson.dumps({"meta": {"type": "ok"}, "data": "x" * 5000}), "too_large"),
        (orjson.dumps({"meta": {"type": 12}, "data": 1}), "no_type"),
        (orjson.dumps({"meta": {"type": ["ok"]}, "data": 1}), "no_type"),
        (orjson.dumps({"meta": "ok", "data": 1}), "no_type"),
        (b"\x00\xff\xfe\x80binary", "invalid_json"),
        (orjson.dumps([1, 2]), "not_object"),
    ],
    ids=["text", "deep", "huge", "int-type", "list-type", "meta-string", "binary", "array"],
)
async def test_junk_from_publishers_is_skipped_and_counted(
    server: PlasmaProcess,
    bystander: SSEStream,
    redis_server: RedisServer,
    payload: bytes,
    reason: str,
) -> None:
    before = server.metrics()["events_skipped_by_reason"]
    redis_server.publish("events", payload)
    await assert_still_serving(bystander, redis_server, 4)
    after = server.metrics()["events_skipped_by_reason"]
    assert after.get(reason, 0) == before.get(reason, 0) + 1
    assert sum(after.values()) == sum(before.values()) + 1


async def test_a_flood_of_bad_requests_does_not_flood_the_error_log(
    server: PlasmaProcess,
) -> None:
    def flood() -> None:
        for _ in range(50):
            exchange(server.port, b"BLAH\r\n\r\n")

    await asyncio.to_thread(flood)
    errors = [line for line in server.log_lines() if line.get("level") in ("error", "fatal")]
    assert errors == [], str(errors[0])[:3000]
    warnings = [line for line in server.log_lines() if line.get("level") == "warn"]
    assert len(warnings) <= 2, "malformed requests are logged at most once a minute"


@pytest.mark.skipif(shutil.which("ss") is None, reason="needs ss (iproute2)")
@pytest.mark.parametrize(
    "first_bytes",
    [
        b"GET /?eventType=a HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n",
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
    ],
    ids=["sse", "grpc"],
)
def test_server_sockets_use_tcp_keepalive(server: PlasmaProcess, first_bytes: bytes) -> None:
    """A client that vanishes without a FIN is found by keepalive probes, even when idle."""
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(first_bytes)
        local_port = sock.getsockname()[1]

        def server_side() -> str:
            return subprocess.run(
                [
                    "ss",
                    "-tnoH",
                    "state",
                    "established",
                    f"( sport = :{server.port} and dport = :{local_port} )",
                ],
                capture_output=True,
                text=True,
                check=True,
            ).stdout

        # The server accepts, reads the first bytes and answers; its socket then shows a timer.
        wait_for(lambda: "keepalive" in server_side(), what="a keepalive timer on the socket")
