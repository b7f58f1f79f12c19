"""Attacks over HTTP/1.1 and on the broker side: one client must never stall everyone.

Each test plays one finding of an attack run against a real plasma (raw sockets, a real
redis-server, or a hostile RESP peer) while the canaries (``harness.Canaries``) listen: they
must hear every event within a second, and the server's memory must stay within 64 MB.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import socket
import threading
import time
from collections.abc import Callable, Iterator

import orjson
import pytest

from tests.attacks.broker import HostileBroker, redis5, redis7
from tests.attacks.harness import Canaries, MemoryWatch
from tests.support import (
    PlasmaProcess,
    RawSSE,
    RedisServer,
    http,
    start_redis_plasma,
    wait_for,
)

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def redis_server(redis_module: RedisServer) -> RedisServer:
    return redis_module


@pytest.fixture(scope="module")
def server(redis_server: RedisServer) -> Iterator[PlasmaProcess]:
    """One plasma for the module; its header timeout is long, so no timer ends an attack."""
    process = start_redis_plasma(
        redis_server,
        PLASMA_HEADER_TIMEOUT="60s",
        PLASMA_MAX_TYPES="4",
        PLASMA_DEBUG="true",
    )
    yield process
    assert process.stop() == 0


def sse_head(types: str, *extra: str) -> bytes:
    lines = [f"GET /?eventType={types} HTTP/1.1", "Host: t", "Accept: text/event-stream", *extra]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def status_of(reply: bytes) -> int:
    assert reply.startswith(b"HTTP/1."), reply[:200]
    return int(reply.split(b" ", 2)[1])


def publish(redis_server: RedisServer, type: str, data: object = None) -> None:
    redis_server.publish("events", {"meta": {"type": type}, "data": data})


# --- 17.5: a header line that never ends ----------------------------------------------------------


def _endless_header(port: int, seconds: float, replies: list[bytes]) -> None:
    """Send a request head whose last header line never ends, as fast as the server takes it."""
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(b"GET /?eventType=a HTTP/1.1\r\nHost: t\r\nAccept: text/event-stream\r\n")
        sock.sendall(b"X-Endless: ")
        sock.settimeout(0.5)
        chunk = b"a" * 65536
        deadline = time.monotonic() + seconds
        with contextlib.suppress(OSError):
            while time.monotonic() < deadline:
                with contextlib.suppress(TimeoutError):
                    sock.send(chunk)
        sock.settimeout(2)
        reply = b""
        with contextlib.suppress(OSError):
            while chunk := sock.recv(65536):
                reply += chunk
        replies.append(reply)


def test_a_header_line_that_never_ends_is_refused_at_once(
    server: PlasmaProcess, redis_server: RedisServer
) -> None:
    replies: list[bytes] = []
    attackers = [
        threading.Thread(target=_endless_header, args=(server.port, 4.0, replies)) for _ in range(4)
    ]
    with Canaries(server, redis_server) as canaries, MemoryWatch(server.proc.pid) as memory:
        for attacker in attackers:
            attacker.start()
        for attacker in attackers:
            attacker.join()
    assert len(replies) == 4
    for reply in replies:
        assert status_of(reply) in (400, 431)
    canaries.assert_on_time()
    memory.assert_bounded()


# --- 17.6: a request pipelined behind an SSE request ----------------------------------------------


async def test_a_request_pipelined_behind_a_stream_does_not_change_it(
    server: PlasmaProcess, redis_server: RedisServer
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    client = RawSSE(reader, writer)
    # One packet: the subscription, then a second request with headers of its own.
    writer.write(sse_head("piped") + b"GET /hc HTTP/1.1\r\nHost: t\r\n\r\n")
    try:
        await client.read_until(b"retry:")
        publish(redis_server, "piped", "first")
        await client.read_until(b'"data":"first"', timeout=5)
    finally:
        client.close()


# --- 17.7: cut clients keep receiving work --------------------------------------------------------


def _stalled_sse(port: int, head: bytes) -> socket.socket:
    """Sends ``head`` and never reads again: its receive window closes fast."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    sock.sendall(head)
    return sock


def _keep_alive_then_sse(port: int) -> socket.socket:
    """A stream on a connection aiohttp already serves (a request came first)."""
    sock = _stalled_sse(port, b"GET /hc HTTP/1.1\r\nHost: t\r\n\r\n")
    sock.settimeout(5)
    assert b"200" in sock.recv(4096)
    sock.sendall(sse_head("cut"))
    return sock


def _stalled_grpc(port: int) -> socket.socket:
    """An ``Events`` call whose receive window is 0 and never opens (h2, raw socket)."""
    import h2.config
    import h2.connection
    import h2.settings

    from tests.attacks.canary import events_request

    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    conn.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 0})
    headers = [
        (":method", "POST"),
        (":scheme", "http"),
        (":path", "/proto.StreamService/Events"),
        (":authority", "t"),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
    ]
    request = events_request("cut")
    conn.send_headers(1, headers)
    conn.send_data(1, b"\x00" + len(request).to_bytes(4, "big") + request, end_stream=True)
    sock = _stalled_sse(port, conn.data_to_send())
    return sock


@pytest.mark.parametrize("path", ["lean", "aiohttp", "grpc"])
def test_a_cut_client_gets_no_more_deliveries(
    redis_plasma: Callable[..., PlasmaProcess], redis_server: RedisServer, path: str
) -> None:
    server = redis_plasma(PLASMA_CLIENT_BUFFER="65536")
    if path == "lean":
        stalled = _stalled_sse(server.port, sse_head("cut"))
    elif path == "aiohttp":
        stalled = _keep_alive_then_sse(server.port)
    else:
        stalled = _stalled_grpc(server.port)
    kind = "grpc" if path == "grpc" else "sse"
    try:
        wait_for(lambda: server.metrics()[f"connections_{kind}"] == 1, what="the stream")
        start = server.metrics()
        # 6 MB for a client that reads nothing: it is cut long before the last one.
        for _ in range(60):
            publish(redis_server, "cut", "x" * 100_000)
        wait_for(
            lambda: server.metrics()["events_received"] >= start["events_received"] + 60,
            what="the big events to arrive",
        )
        with redis_server.client() as r:
            pipe = r.pipeline(transaction=False)
            for n in range(200):
                pipe.publish("events", orjson.dumps({"meta": {"type": "cut"}, "data": n}))
            pipe.execute()
        end = wait_for(
            lambda: (
                (m := server.metrics())["events_received"] >= start["events_received"] + 260 and m
            ),
            what="the small events to arrive",
        )
        # The socket may still be draining its last bytes, but nothing more is queued for it.
        assert end["events_delivered"] - start["events_delivered"] < 60
    finally:
        stalled.close()


# --- 17.8: resume storms --------------------------------------------------------------------------


async def _resume(port: int, last_event_id: str, marker: bytes) -> None:
    client = await RawSSE.open(port, "/?eventType=storm", {"Last-Event-ID": last_event_id})
    try:
        async with asyncio.timeout(30):
            tail = b""
            while True:
                chunk = await client.reader.read(1 << 20)
                if not chunk:
                    raise AssertionError("stream ended during the replay")
                if marker in tail + chunk:
                    return
                tail = chunk[-64:]
    finally:
        client.close()


async def test_a_resume_storm_does_not_hold_back_live_events(
    server: PlasmaProcess, redis_server: RedisServer
) -> None:
    first = await RawSSE.open(server.port, "/?eventType=storm")
    await first.read_until(b"retry:")
    with redis_server.client() as r:
        pipe = r.pipeline(transaction=False)
        for n in range(5000):
            pipe.publish("events", orjson.dumps({"meta": {"type": "storm"}, "data": n}))
        pipe.execute()
    await first.read_until(b'"data":4999}')
    first_id = first.buffer.split(b"id: ", 1)[1].split(b"\n", 1)[0].decode()
    first.close()
    with Canaries(server, redis_server) as canaries, MemoryWatch(server.proc.pid) as memory:
        await asyncio.gather(*(_resume(server.port, first_id, b'"data":4999}') for _ in range(400)))
    canaries.assert_on_time()
    memory.assert_bounded()


# --- 22.4 (SSE): type lists counted before they are de-duplicated ---------------------------------


def test_a_type_list_is_counted_before_repeats_are_dropped(server: PlasmaProcess) -> None:
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(sse_head(",".join(["same"] * 5)))
        reply = sock.recv(65536)
    assert status_of(reply) == 400
    assert b"more than 4" in reply


# --- 17.9: the smaller findings -------------------------------------------------------------------


def test_refused_debug_bodies_are_in_the_access_log(server: PlasmaProcess) -> None:
    reply = http(
        server.url + "/debug", "POST", b"x" * (2 << 20), {"Content-Type": "application/json"}
    )
    assert reply.status == 413
    wait_for(
        lambda: any(
            line.get("path") == "/debug" and line.get("status") == 413
            for line in server.log_lines()
        ),
        what="the access-log line of the 413",
    )


def test_connections_refused_at_the_file_limit_are_logged(
    redis_plasma: Callable[..., PlasmaProcess],
) -> None:
    server = redis_plasma(PLASMA_HEADER_TIMEOUT="60s")
    pid = server.proc.pid
    in_use = len(os.listdir(f"/proc/{pid}/fd"))
    limit = in_use + 16
    resource.prlimit(pid, resource.RLIMIT_NOFILE, (limit, limit))
    held = []
    try:
        for _ in range(40):
            with contextlib.suppress(OSError):
                held.append(socket.create_connection(("127.0.0.1", server.port), timeout=1))
        line = wait_for(
            lambda: next(
                (x for x in server.log_lines() if x.get("limit") == limit and "open" in x), None
            ),
            what="a log line about the descriptor limit",
        )
        assert line["level"] in ("warn", "error")
        assert 0 < line["open"] <= limit
    finally:
        for sock in held:
            sock.close()


def test_a_broker_announcing_a_huge_reply_cannot_freeze_hc_or_shutdown(
    plasma: Callable[..., PlasmaProcess],
) -> None:
    def huge_pong(command: list[bytes]) -> bytes | None:
        if command[0].upper() == b"PING":
            return b"*3000000000\r\n"  # 3 billion elements announced, none sent
        return redis7(command)

    broker = HostileBroker(huge_pong).start()
    try:
        server = plasma(**_broker_env(broker))
        wait_for(lambda: b"SUBSCRIBE" in broker.names(), what="plasma to subscribe")
        for _ in range(3):
            started = time.monotonic()
            reply = http(server.url + "/hc", timeout=5)
            took = time.monotonic() - started
            assert reply.status in (200, 500)
            assert took < 1.5, f"/hc took {took:.1f}s"
        assert server.stop(timeout=20) == 0
    finally:
        broker.stop()


def test_a_redis_older_than_6_can_be_subscribed_to(plasma: Callable[..., PlasmaProcess]) -> None:
    broker = HostileBroker(redis5).start()
    try:
        server = plasma(**_broker_env(broker))
        wait_for(lambda: b"SUBSCRIBE" in broker.names(), what="plasma to subscribe")
        wait_for(lambda: http(server.url + "/hc").status == 200, what="/hc to say OK")
    finally:
        broker.stop()


def _broker_env(broker: HostileBroker) -> dict[str, str]:
    return {
        "PLASMA_SUBSCRIBER_TYPE": "redis",
        "PLASMA_SUBSCRIBER_REDIS_ADDR": broker.addr,
        "PLASMA_SUBSCRIBER_REDIS_CHANNELS": "events",
        "PLASMA_SUBSCRIBER_REDIS_RETRY_INTERVAL": "200ms",
    }
