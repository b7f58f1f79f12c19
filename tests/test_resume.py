"""Nothing lost: Last-Event-ID resume from history, the gap signal, the stream source's archive."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import orjson
import pytest

from tests.support import PlasmaProcess, RedisServer, SSEEvent, SSEStream, wait_for

pytestmark = pytest.mark.integration


def _event(event_type: str, n: int) -> bytes:
    return orjson.dumps({"meta": {"type": event_type}, "data": {"n": n}})


def _wait_reading(server: PlasmaProcess) -> None:
    """The stream source reads from each stream's tail once it is up: wait for that."""
    wait_for(lambda: server.metrics()["source_up"] == 1, what="the stream source to read")


async def _collect(stream: SSEStream, count: int, timeout: float = 10.0) -> list[SSEEvent]:
    return [await stream.next_event(timeout) for _ in range(count)]


def _numbers(events: list[SSEEvent]) -> list[int]:
    return [e.json()["data"]["n"] for e in events]


async def test_reconnect_with_last_event_id_gets_exactly_the_missed_events(
    redis_plasma: Callable[..., PlasmaProcess], redis_server: RedisServer
) -> None:
    server = redis_plasma()
    first = await SSEStream.open(server.url + "/", "game")
    await first.wait_retry()
    for n in range(3):
        redis_server.publish("events", _event("game:1", n))
    seen = await _collect(first, 3)
    await first.close()
    # While the client is away: 1,000 events, half of them of a type it did not ask for.
    with redis_server.client() as r:
        pipe = r.pipeline(transaction=False)
        for n in range(3, 1003):
            pipe.publish("events", _event("game:1" if n % 2 else "other", n))
        pipe.execute()
    wait_for(lambda: server.metrics()["events_received"] >= 1003, what="events to arrive")

    second = await SSEStream.open(
        server.url + "/", "game", headers={"Last-Event-ID": seen[-1].id or ""}
    )
    try:
        missed = await _collect(second, 500)
        assert _numbers(missed) == list(range(3, 1003, 2))
        assert all(e.event is None for e in missed)
        redis_server.publish("events", _event("game:2", 5000))
        live = await second.next_event()
        assert live.json()["data"]["n"] == 5000
        ids = [e.id for e in (*seen, *missed, live)]
        assert len(set(ids)) == len(ids)
    finally:
        await second.close()


async def test_last_event_id_query_parameter_resumes_too(
    redis_plasma: Callable[..., PlasmaProcess], redis_server: RedisServer
) -> None:
    server = redis_plasma()
    first = await SSEStream.open(server.url + "/", "a")
    await first.wait_retry()
    redis_server.publish("events", _event("a", 1))
    (one,) = await _collect(first, 1)
    await first.close()
    redis_server.publish("events", _event("a", 2))
    wait_for(lambda: server.metrics()["events_received"] >= 2)
    second = await SSEStream.open(server.url + f"/?lastEventId={one.id}", "a")
    try:
        assert _numbers(await _collect(second, 1)) == [2]
    finally:
        await second.close()


@pytest.mark.parametrize("reason", ["overflow", "unknown", "other-incarnation"])
async def test_gap_event_when_history_cannot_vouch(
    redis_plasma: Callable[..., PlasmaProcess], redis_server: RedisServer, reason: str
) -> None:
    server = redis_plasma(PLASMA_HISTORY_SIZE="10")
    first = await SSEStream.open(server.url + "/", "a")
    await first.wait_retry()
    redis_server.publish("events", _event("a", 0))
    (zero,) = await _collect(first, 1)
    await first.close()
    for n in range(1, 31):
        redis_server.publish("events", _event("a", n))
    wait_for(lambda: server.metrics()["events_received"] >= 31)
    requested = {
        "overflow": zero.id or "",
        "unknown": "no-such-id",
        "other-incarnation": "0123abcd-1",
    }[reason]
    second = await SSEStream.open(server.url + "/", "a", headers={"Last-Event-ID": requested})
    try:
        gap = await second.next_event()
        assert gap.event == "gap"
        body = gap.json()
        assert body["meta"]["type"] == "plasma:gap"
        assert body["data"]["lastEventId"] == requested
        assert gap.id == body["data"]["resumeFrom"]
        redis_server.publish("events", _event("a", 99))
        assert _numbers(await _collect(second, 1)) == [99]
    finally:
        await second.close()
    # Resuming from the id the gap event carried misses nothing.
    third = await SSEStream.open(server.url + "/", "a", headers={"Last-Event-ID": gap.id or ""})
    try:
        assert _numbers(await _collect(third, 1)) == [99]
    finally:
        await third.close()


def _xadd(redis_server: RedisServer, stream: str, event_type: str, n: int) -> str:
    with redis_server.client() as r:
        return r.xadd(stream, {"event": _event(event_type, n)}).decode()


async def test_stream_source_resumes_across_a_plasma_restart(
    redis_plasma: Callable[..., PlasmaProcess], redis_server: RedisServer
) -> None:
    env = {"PLASMA_SUBSCRIBER_TYPE": "redis-stream", "PLASMA_SUBSCRIBER_REDIS_CHANNELS": "s1"}
    server = redis_plasma(wait=False, **env)
    server.wait_ready()
    first = await SSEStream.open(server.url + "/", "t")
    await first.wait_retry()
    _wait_reading(server)
    _xadd(redis_server, "s1", "t", 0)
    (zero,) = await _collect(first, 1)
    await first.close()
    assert server.stop() == 0
    for n in range(1, 51):
        _xadd(redis_server, "s1", "t:x" if n % 2 else "u", n)

    restarted = redis_plasma(wait=False, PLASMA_PORT=str(server.port), **env)
    restarted.wait_ready()
    second = await SSEStream.open(
        restarted.url + "/", "t", headers={"Last-Event-ID": zero.id or ""}
    )
    try:
        missed = await _collect(second, 25)
        assert _numbers(missed) == list(range(1, 51, 2))
        assert [e.id for e in missed] == sorted(
            (e.id or "" for e in missed), key=lambda i: tuple(map(int, i.split("-")))
        )
        _wait_reading(restarted)
        _xadd(redis_server, "s1", "t", 100)
        assert _numbers(await _collect(second, 1)) == [100]
    finally:
        await second.close()


async def test_stream_source_client_moves_between_two_plasmas_without_loss(
    redis_plasma: Callable[..., PlasmaProcess], redis_server: RedisServer
) -> None:
    env = {"PLASMA_SUBSCRIBER_TYPE": "redis-stream", "PLASMA_SUBSCRIBER_REDIS_CHANNELS": "s2"}
    one = redis_plasma(wait=False, **env)
    two = redis_plasma(wait=False, **env)
    one.wait_ready()
    two.wait_ready()
    _wait_reading(one)
    _wait_reading(two)
    stream = await SSEStream.open(one.url + "/", "m")
    await stream.wait_retry()
    for n in range(10):
        _xadd(redis_server, "s2", "m", n)
    got = await _collect(stream, 10)
    await stream.close()
    for n in range(10, 40):
        _xadd(redis_server, "s2", "m", n)
    moved = await SSEStream.open(two.url + "/", "m", headers={"Last-Event-ID": got[4].id or ""})
    try:
        rest = await _collect(moved, 35)
        assert _numbers(rest) == list(range(5, 40))
    finally:
        await moved.close()


async def test_stream_source_trimmed_history_sends_gap(
    redis_plasma: Callable[..., PlasmaProcess], redis_server: RedisServer
) -> None:
    env = {
        "PLASMA_SUBSCRIBER_TYPE": "redis-stream",
        "PLASMA_SUBSCRIBER_REDIS_CHANNELS": "s3",
        "PLASMA_HISTORY_SIZE": "0",
    }
    server = redis_plasma(wait=False, **env)
    server.wait_ready()
    first_id = _xadd(redis_server, "s3", "g", 0)
    for n in range(1, 20):
        _xadd(redis_server, "s3", "g", n)
    with redis_server.client() as r:
        r.xtrim("s3", maxlen=5, approximate=False)
    stream = await SSEStream.open(server.url + "/", "g", headers={"Last-Event-ID": first_id})
    try:
        gap = await stream.next_event()
        assert gap.event == "gap"
    finally:
        await stream.close()


@pytest.mark.parametrize("resume", [False, True], ids=["live", "resuming"])
async def test_clients_that_leave_at_once_leave_nothing_behind(
    redis_plasma: Callable[..., PlasmaProcess], redis_server: RedisServer, resume: bool
) -> None:
    """A request followed at once by a reset must not leave a subscriber in the hub."""
    import socket
    import struct

    env = {
        "PLASMA_SUBSCRIBER_TYPE": "redis-stream",
        "PLASMA_SUBSCRIBER_REDIS_CHANNELS": "gone",
        "PLASMA_HISTORY_SIZE": "0",  # resuming asks Redis: the client leaves during the wait
    }
    server = redis_plasma(wait=False, **env)
    server.wait_ready()
    first_id = _xadd(redis_server, "gone", "g", 0)
    header = f"Last-Event-ID: {first_id}\r\n" if resume else ""
    request = (
        f"GET /?eventType=g HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n{header}\r\n"
    ).encode()

    def hit_and_run() -> None:
        for _ in range(200):
            with socket.create_connection(("127.0.0.1", server.port)) as sock:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                sock.sendall(request)

    await asyncio.to_thread(hit_and_run)
    wait_for(lambda: server.metrics()["connections"] == 0, what="every stream to be released")
    # And the hub still serves newcomers.
    stream = await SSEStream.open(server.url + "/", "g")
    try:
        await stream.wait_retry()
        _wait_reading(server)
        delivered = server.metrics()["events_delivered"]
        _xadd(redis_server, "gone", "g", 1)
        assert _numbers(await _collect(stream, 1)) == [1]
        metrics = server.metrics()
        assert metrics["connections"] == 1
        assert metrics["events_delivered"] == delivered + 1, "a departed client still subscribed"
    finally:
        await stream.close()
