"""Meta endpoints on the same port: /hc, /metrics, /debug, and 404/405 for everything else."""

from __future__ import annotations

import platform
import threading
import time
from collections.abc import Callable, Iterator

import orjson
import pytest

from tests.support import (
    PlasmaProcess,
    RedisServer,
    SSEStream,
    async_wait_for,
    http,
    post_event,
    wait_for,
)

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def default() -> Iterator[PlasmaProcess]:
    """Every setting at its default (mock source, no /debug)."""
    process = PlasmaProcess(env={}).start()
    yield process
    process.stop()


@pytest.fixture(scope="module")
def debug_mock() -> Iterator[PlasmaProcess]:
    """Mock source that stays quiet, with /debug enabled."""
    process = PlasmaProcess(
        env={"PLASMA_DEBUG": "true", "PLASMA_SUBSCRIBER_MOCK_INTERVAL": "1h"}
    ).start()
    yield process
    process.stop()


def timed_hc(url: str) -> tuple[int, float]:
    started = time.monotonic()
    status = http(url + "/hc", timeout=10).status
    return status, time.monotonic() - started


# --- /hc ---------------------------------------------------------------------------------------


def test_hc_with_mock_source(default: PlasmaProcess) -> None:
    result = http(default.url + "/hc")
    assert result.status == 200
    assert http(default.url + "/hc", "HEAD").status == 200


def test_hc_follows_redis(
    redis_plasma: Callable[..., PlasmaProcess], redis_server: RedisServer
) -> None:
    server = redis_plasma()
    assert http(server.url + "/hc").status == 200

    # Redis hangs (DEBUG SLEEP blocks it): /hc still answers, quickly, with 500.
    with redis_server.client() as blocker:
        sleeper = threading.Thread(target=blocker.execute_command, args=("DEBUG", "SLEEP", 3))
        sleeper.start()
        try:
            status, took = wait_for(
                lambda: (answer := timed_hc(server.url))[0] == 500 and answer,
                what="/hc to see the hang",
            )
            assert status == 500
            assert took < 2.0, f"/hc took {took:.2f}s while Redis hung"
        finally:
            sleeper.join()
    wait_for(lambda: http(server.url + "/hc").status == 200, what="/hc 200 after the hang")

    # Redis stopped: 500, answered at once.
    port = redis_server.port
    redis_server.stop()
    status, took = timed_hc(server.url)
    assert status == 500
    assert took < 2.0
    assert b"unreachable" in http(server.url + "/hc").body

    # Redis back on the same port: 200 again.
    restarted = RedisServer(port=port).start()
    try:
        wait_for(lambda: http(server.url + "/hc").status == 200, what="/hc 200 after restart")
    finally:
        restarted.stop()


# --- /metrics ----------------------------------------------------------------------------------


def test_metrics_is_json_with_runtime_figures(default: PlasmaProcess) -> None:
    result = http(default.url + "/metrics")
    assert result.status == 200
    assert result.headers["Content-Type"].startswith("application/json")
    body = orjson.loads(result.body)
    assert body["python_version"] == platform.python_version()
    for key in ("connections", "events_received", "events_delivered", "events_skipped"):
        assert isinstance(body[key], int), key
    assert not any(key.startswith("go_") for key in body)


async def test_metrics_counts_connections_and_events(
    redis_plasma: Callable[..., PlasmaProcess], redis_server: RedisServer
) -> None:
    server = redis_plasma()
    assert server.metrics()["connections"] == 0
    streams = [await SSEStream.open(server.url + "/", t) for t in ("m", "m:x", "other")]
    try:
        for stream in streams:
            await stream.wait_retry()
        assert server.metrics()["connections"] == 3
        redis_server.publish("events", {"meta": {"type": "m:x:1"}, "data": 1})
        redis_server.publish("events", b"{not json")
        redis_server.publish("events", {"meta": {"type": "nobody"}, "data": 2})
        assert (await streams[0].next_event()).json()["data"] == 1
        assert (await streams[1].next_event()).json()["data"] == 1
        metrics = await async_wait_for(
            lambda: (m := server.metrics())["events_received"] == 3 and m,
            what="three events received",
        )
        assert metrics["events_delivered"] == 2
        assert metrics["events_skipped"] == 1
        await streams[2].close()
        await async_wait_for(lambda: server.metrics()["connections"] == 2, what="2 connections")
    finally:
        for stream in streams:
            await stream.close()
    await async_wait_for(lambda: server.metrics()["connections"] == 0, what="0 connections")


# --- /debug ------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["GET", "POST", "PUT"])
def test_debug_is_absent_by_default(default: PlasmaProcess, method: str) -> None:
    body = b'{"meta":{"type":"a"},"data":1}' if method != "GET" else None
    assert http(default.url + "/debug", method, body).status == 404


def test_debug_false_is_absent(plasma: Callable[..., PlasmaProcess]) -> None:
    server = plasma(PLASMA_DEBUG="false")
    assert http(server.url + "/debug").status == 404


def test_debug_page(debug_mock: PlasmaProcess) -> None:
    result = http(debug_mock.url + "/debug")
    assert result.status == 200
    assert result.headers["Content-Type"].startswith("text/html")
    page = result.body.decode()
    assert "<form" in page
    assert "EventSource" in page
    assert "eventType" in page


async def test_debug_post_reaches_subscribers_with_mock_source(debug_mock: PlasmaProcess) -> None:
    stream = await SSEStream.open(debug_mock.url + "/", "debug")
    try:
        await stream.wait_retry()
        result = post_event(debug_mock.url, "debug:mock", {"hello": "world"})
        assert result.json() == {"published": True}
        event = await stream.next_event()
        assert event.json() == {"meta": {"type": "debug:mock"}, "data": {"hello": "world"}}
    finally:
        await stream.close()


async def test_debug_post_publishes_on_the_first_redis_channel(
    redis_plasma: Callable[..., PlasmaProcess], redis_server: RedisServer
) -> None:
    server = redis_plasma(PLASMA_DEBUG="true", PLASMA_SUBSCRIBER_REDIS_CHANNELS="first,second")
    with redis_server.client() as client:
        watcher = client.pubsub(ignore_subscribe_messages=True)
        watcher.subscribe("first", "second")
        stream = await SSEStream.open(server.url + "/", "dbg")
        try:
            await stream.wait_retry()
            post_event(server.url, "dbg:1", [1, 2, 3])
            event = await stream.next_event()
            assert event.json() == {"meta": {"type": "dbg:1"}, "data": [1, 2, 3]}
            message = wait_for(lambda: watcher.get_message(timeout=0.1), what="redis message")
            assert message["channel"] == b"first"
            assert orjson.loads(message["data"]) == {"meta": {"type": "dbg:1"}, "data": [1, 2, 3]}
            assert watcher.get_message(timeout=0.3) is None
        finally:
            await stream.close()
            watcher.close()


@pytest.mark.parametrize(
    "body",
    [
        b"{not json",
        b"",
        b"[1,2]",
        b'{"data":1}',
        b'{"meta":{"type":""},"data":1}',
    ],
)
def test_debug_post_rejects_bad_events(debug_mock: PlasmaProcess, body: bytes) -> None:
    result = http(debug_mock.url + "/debug", "POST", body, {"Content-Type": "application/json"})
    assert result.status == 400
    assert result.body


@pytest.mark.parametrize("method", ["PUT", "DELETE", "PATCH"])
def test_debug_other_methods_are_405(debug_mock: PlasmaProcess, method: str) -> None:
    assert http(debug_mock.url + "/debug", method, b"{}").status == 405


# --- everything else ---------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/", "/nope", "/hc/x", "/metricsx", "/debug/x"])
def test_unknown_paths_are_404(debug_mock: PlasmaProcess, path: str) -> None:
    assert http(debug_mock.url + path).status == 404


@pytest.mark.parametrize("path", ["/hc", "/metrics"])
def test_meta_endpoints_refuse_other_methods(default: PlasmaProcess, path: str) -> None:
    assert http(default.url + path, "POST", b"x").status == 405
