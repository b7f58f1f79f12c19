"""The Redis source against a real redis-server: invalid messages, restarts, die/alive, auth."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable

import pytest
import uvloop

from plasma.config import RedisConfig
from plasma.hub import Hub
from plasma.metrics import Metrics
from plasma.sources.redis import RedisSource
from tests.support import (
    PlasmaProcess,
    RedisServer,
    SSEStream,
    async_wait_for,
    free_port,
    http,
    wait_for,
)


def test_cancel_stops_the_source_even_mid_connect() -> None:
    """Shutdown cancels the source; a cancel landing as a refused connect returns must win.

    Python 3.11's ``asyncio.wait_for`` can swallow such a cancel (gh-86296): the source then
    kept retrying and ``plasma`` never exited. Under uvloop (what plasma runs) about one cancel
    in ten landed in that window before the fix.
    """
    config = RedisConfig(
        host="127.0.0.1",
        port=free_port(),  # nothing listens: every connect is refused at once
        channels=("events",),
        retry_interval=0.001,
        max_retry=10**9,
    )

    async def scenario() -> int:
        stuck = []
        for _ in range(200):
            source = RedisSource(config, Metrics())
            task = asyncio.create_task(source.run(Hub(Metrics())))
            await asyncio.sleep(random.uniform(0, 0.005))
            task.cancel()
            done, _ = await asyncio.wait([task], timeout=1.0)
            if not done:
                stuck.append(task)
            await source.aclose()
        for task in stuck:  # let a regression fail the assert, not hang the run
            for _ in range(100):
                task.cancel()
                if (await asyncio.wait([task], timeout=0.05))[0]:
                    break
        return len(stuck)

    logger = logging.getLogger("plasma.sources.redis")
    level = logger.level
    logger.setLevel(logging.CRITICAL)  # 200 connection warnings are not the point here
    try:
        assert uvloop.run(scenario()) == 0
    finally:
        logger.setLevel(level)


@pytest.mark.integration
async def test_invalid_events_are_counted_logged_and_skipped(
    redis_plasma: Callable[..., PlasmaProcess], redis_server: RedisServer
) -> None:
    server = redis_plasma(PLASMA_ERROR_LOG_LEVEL="debug")  # repeats are throttled to debug
    stream = await SSEStream.open(server.url + "/", "ok")
    invalid = [
        b"not json at all " + b"x" * 1000,
        b"[1,2,3]",
        b'"just a string"',
        b'{"data":{"no":"meta"}}',
        b'{"meta":{},"data":1}',
        b'{"meta":{"type":""},"data":1}',
        b'{"meta":{"type":7},"data":1}',
        b'{"meta":{"type":"ok"},"data":NaN}',
        # Messages that once crashed the source: a lone surrogate with a long number.
        b'{"meta":{"type":"\\ud800"},"data":12345678901234567890123}',
        b'{"meta":{"type":"ok"},"data":["\\ud800",12345678901234567890123]}',
        b"\xff\xfe\xfd",
    ]
    try:
        await stream.wait_retry()
        for n, raw in enumerate(invalid):
            redis_server.publish("events", raw)
            redis_server.publish("events", {"meta": {"type": "ok"}, "data": n})
        got = [(await stream.next_event()).json()["data"] for _ in invalid]
    finally:
        await stream.close()
    assert got == list(range(len(invalid))), "the stream goes on after every invalid message"
    metrics = server.metrics()
    assert metrics["events_skipped"] == len(invalid)
    assert metrics["events_received"] == 2 * len(invalid)
    assert server.proc is not None and server.proc.poll() is None
    skipped = await async_wait_for(
        lambda: [line for line in server.log_lines() if line.get("msg") == "skipped invalid event"],
        what="skipped-event log lines",
    )
    assert len(skipped) == len(invalid)
    assert skipped[0]["level"] == "warn"
    assert all(line["channel"] == "events" for line in skipped)
    assert skipped[0]["payload"].startswith("not json at all xxx")
    assert len(skipped[0]["payload"]) < 400, "the payload is truncated in the log"
    assert skipped[1]["payload"] == "[1,2,3]"


@pytest.mark.integration
async def test_events_after_a_redis_restart_arrive(
    redis_plasma: Callable[..., PlasmaProcess], redis_server: RedisServer
) -> None:
    server = redis_plasma()
    stream = await SSEStream.open(server.url + "/", "r")
    try:
        await stream.wait_retry()
        redis_server.publish("events", {"meta": {"type": "r:1"}, "data": "before"})
        assert (await stream.next_event()).json()["data"] == "before"
        port = redis_server.port
        redis_server.stop()
        await async_wait_for(lambda: http(server.url + "/hc").status == 500, what="/hc 500")
        restarted = RedisServer(port=port).start()
        try:
            await async_wait_for(
                lambda: restarted.numsub("events") > 0, timeout=15, what="plasma to resubscribe"
            )
            restarted.publish("events", {"meta": {"type": "r:2"}, "data": "after"})
            assert (await stream.next_event()).event == "gap", "the outage is announced"
            assert (await stream.next_event()).json()["data"] == "after"
        finally:
            restarted.stop()
    finally:
        await stream.close()
    assert server.proc is not None and server.proc.poll() is None


@pytest.mark.integration
def test_die_exits_when_redis_goes_away(
    redis_plasma: Callable[..., PlasmaProcess], redis_server: RedisServer
) -> None:
    server = redis_plasma(
        PLASMA_SUBSCRIBER_REDIS_OVER_MAX_RETRY_BEHAVIOR="die",
        PLASMA_SUBSCRIBER_REDIS_MAX_RETRY="2",
        PLASMA_SUBSCRIBER_REDIS_RETRY_INTERVAL="100ms",
    )
    assert server.proc is not None
    redis_server.stop()
    rc = server.proc.wait(15)
    assert rc != 0
    output = server.output()
    assert "PLASMA_SUBSCRIBER_REDIS_OVER_MAX_RETRY_BEHAVIOR=die" in output
    fatal = [line for line in server.log_lines() if line.get("level") in ("critical", "fatal")]
    assert fatal, output
    assert redis_server.addr.split(":")[1] in fatal[-1]["msg"]


@pytest.mark.integration
def test_die_exits_when_redis_never_answers(plasma: Callable[..., PlasmaProcess]) -> None:
    server = plasma(
        wait=False,
        PLASMA_SUBSCRIBER_TYPE="redis",
        PLASMA_SUBSCRIBER_REDIS_ADDR=f"127.0.0.1:{free_port()}",
        PLASMA_SUBSCRIBER_REDIS_CHANNELS="events",
        PLASMA_SUBSCRIBER_REDIS_OVER_MAX_RETRY_BEHAVIOR="die",
        PLASMA_SUBSCRIBER_REDIS_MAX_RETRY="3",
        PLASMA_SUBSCRIBER_REDIS_RETRY_INTERVAL="100ms",
    )
    assert server.proc is not None
    assert server.proc.wait(15) != 0
    assert "giving up" in server.output()


@pytest.mark.integration
async def test_alive_keeps_retrying_until_redis_comes(
    plasma: Callable[..., PlasmaProcess],
) -> None:
    port = free_port()
    server = plasma(
        PLASMA_SUBSCRIBER_TYPE="redis",
        PLASMA_SUBSCRIBER_REDIS_ADDR=f"127.0.0.1:{port}",
        PLASMA_SUBSCRIBER_REDIS_CHANNELS="events",
        PLASMA_SUBSCRIBER_REDIS_MAX_RETRY="2",
        PLASMA_SUBSCRIBER_REDIS_RETRY_INTERVAL="100ms",
    )  # OVER_MAX_RETRY_BEHAVIOR unset: alive is the default
    assert server.proc is not None
    await async_wait_for(
        lambda: sum("alive" in line.get("msg", "") for line in server.log_lines()) >= 3,
        what="several rounds of MAX_RETRY failures, each ending in 'keeping on retrying'",
    )
    assert server.proc.poll() is None, server.output()
    assert http(server.url + "/hc").status == 500
    stream = await SSEStream.open(server.url + "/", "late")
    try:
        await stream.wait_retry()
        redis = RedisServer(port=port).start()
        try:
            await async_wait_for(lambda: redis.numsub("events") > 0, timeout=15)
            redis.publish("events", {"meta": {"type": "late"}, "data": 1})
            assert (await stream.next_event()).json()["data"] == 1
            assert http(server.url + "/hc").status == 200
        finally:
            redis.stop()
    finally:
        await stream.close()


@pytest.mark.integration
async def test_password_is_used(plasma: Callable[..., PlasmaProcess]) -> None:
    redis = RedisServer(password="s3cret pass").start()
    try:
        server = plasma(
            PLASMA_SUBSCRIBER_TYPE="redis",
            PLASMA_SUBSCRIBER_REDIS_ADDR=redis.addr,
            PLASMA_SUBSCRIBER_REDIS_CHANNELS="events",
            PLASMA_SUBSCRIBER_REDIS_PASSWORD="s3cret pass",
        )
        await async_wait_for(lambda: redis.numsub("events") > 0, what="plasma to subscribe")
        assert http(server.url + "/hc").status == 200
        stream = await SSEStream.open(server.url + "/", "auth")
        try:
            await stream.wait_retry()
            redis.publish("events", {"meta": {"type": "auth"}, "data": "ok"})
            assert (await stream.next_event()).json()["data"] == "ok"
        finally:
            await stream.close()
        assert "s3cret" not in server.output(), "the password is never logged"
    finally:
        redis.stop()


@pytest.mark.integration
def test_wrong_password_is_unhealthy(plasma: Callable[..., PlasmaProcess]) -> None:
    redis = RedisServer(password="right").start()
    try:
        server = plasma(
            PLASMA_SUBSCRIBER_TYPE="redis",
            PLASMA_SUBSCRIBER_REDIS_ADDR=redis.addr,
            PLASMA_SUBSCRIBER_REDIS_CHANNELS="events",
            PLASMA_SUBSCRIBER_REDIS_PASSWORD="wrong",
            PLASMA_SUBSCRIBER_REDIS_RETRY_INTERVAL="100ms",
        )
        assert http(server.url + "/hc").status == 500
        wait_for(
            lambda: any("retrying" in line.get("msg", "") for line in server.log_lines()),
            what="a reconnect warning",
        )
        assert redis.numsub("events") == 0
    finally:
        redis.stop()


@pytest.mark.integration
def test_db_is_selected(
    redis_plasma: Callable[..., PlasmaProcess], redis_server: RedisServer
) -> None:
    server = redis_plasma(PLASMA_SUBSCRIBER_REDIS_DB="3")
    assert http(server.url + "/hc").status == 200  # opens the ping connection
    with redis_server.client() as client:
        clients = [c for c in client.client_list() if c.get("cmd") != "client|list"]
    by_cmd = {c["cmd"]: c["db"] for c in clients}
    assert by_cmd.get("subscribe") == "3", clients
    assert by_cmd.get("ping") == "3", clients


@pytest.mark.integration
def test_out_of_range_db_is_unhealthy(
    redis_plasma: Callable[..., PlasmaProcess], redis_server: RedisServer
) -> None:
    server = redis_plasma(wait=False, PLASMA_SUBSCRIBER_REDIS_DB="99")
    server.wait_ready()
    assert http(server.url + "/hc").status == 500
    assert redis_server.numsub("events") == 0


@pytest.mark.integration
async def test_several_channels_and_a_quiet_channel(
    redis_plasma: Callable[..., PlasmaProcess], redis_server: RedisServer
) -> None:
    server = redis_plasma(
        PLASMA_SUBSCRIBER_REDIS_CHANNELS="c1, c2,c3", PLASMA_SUBSCRIBER_REDIS_TIMEOUT="200ms"
    )
    for channel in ("c1", "c2", "c3"):
        await async_wait_for(lambda ch=channel: redis_server.numsub(ch) == 1, what=channel)
    assert redis_server.numsub("events") == 0
    stream = await SSEStream.open(server.url + "/", "multi")
    try:
        await stream.wait_retry()
        for channel in ("c3", "c1", "c2", "other"):
            redis_server.publish(channel, {"meta": {"type": "multi"}, "data": channel})
        got = [(await stream.next_event()).json()["data"] for _ in range(3)]
        assert got == ["c3", "c1", "c2"]
        # Quiet for several read timeouts: the next event still arrives.
        time.sleep(1.0)
        redis_server.publish("c2", {"meta": {"type": "multi"}, "data": "after quiet"})
        assert (await stream.next_event()).json()["data"] == "after quiet"
    finally:
        await stream.close()
