"""Lifecycle of the plasma process: stop signals with clients connected, and its logs."""

from __future__ import annotations

import asyncio
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.support import (
    PlasmaProcess,
    RawSSE,
    RedisServer,
    SSEStream,
    async_wait_for,
    free_port,
    http,
    post_event,
    wait_for,
)

pytestmark = pytest.mark.integration


def json_lines(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    text = path.read_text()
    return [orjson.loads(line) for line in text.splitlines() if line.strip()]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT])
async def test_stop_signal_ends_streams_cleanly_and_exits_0(
    plasma: Callable[..., PlasmaProcess], sig: signal.Signals
) -> None:
    server = plasma(PLASMA_SUBSCRIBER_MOCK_INTERVAL="1h")
    assert server.proc is not None
    raws = [await RawSSE.open(server.port, f"/?eventType=t{i}") for i in range(3)]
    stream = await SSEStream.open(server.url + "/", "poll")
    try:
        for raw in raws:
            await raw.read_until(b"retry: 2000\n\n")
        await stream.wait_retry()
        started = time.monotonic()
        server.proc.send_signal(sig)
        # Each stream ends with the final empty chunk: a clean end of the response.
        for raw in raws:
            data = await raw.read_to_eof(timeout=10)
            assert data.endswith(b"\r\n0\r\n\r\n"), data[-40:]
        assert await stream.next_frame(timeout=10) is None  # EOF, no payload error
        rc = await asyncio.to_thread(server.proc.wait, 10)
        took = time.monotonic() - started
    finally:
        for raw in raws:
            raw.close()
        await stream.close()
    assert rc == 0, server.output()
    assert took < 5.0, f"shutdown took {took:.1f}s"
    messages = [line.get("msg") for line in server.log_lines()]
    assert "plasma stopped" in messages


async def test_sigterm_with_redis_source(
    redis_plasma: Callable[..., PlasmaProcess], redis_server: RedisServer
) -> None:
    server = redis_plasma()
    assert server.proc is not None
    stream = await SSEStream.open(server.url + "/", "x")
    try:
        await stream.wait_retry()
        server.proc.send_signal(signal.SIGTERM)
        assert await stream.next_frame(timeout=10) is None
    finally:
        await stream.close()
    assert await asyncio.to_thread(server.proc.wait, 10) == 0
    # The Redis connections are closed: nobody is subscribed any more.
    await async_wait_for(lambda: redis_server.numsub("events") == 0, what="redis unsubscribed")


async def test_access_log_to_a_file(plasma: Callable[..., PlasmaProcess], tmp_path: Path) -> None:
    access = tmp_path / "access.log"
    server = plasma(
        PLASMA_ACCESS_LOG_OUT=str(access),
        PLASMA_DEBUG="true",
        PLASMA_SUBSCRIBER_MOCK_INTERVAL="1h",
    )
    assert http(server.url + "/hc").status == 200
    assert http(server.url + "/nope").status == 404
    assert http(server.url + "/metrics", headers={"X-Forwarded-For": "198.51.100.9"}).status == 200
    assert http(server.url + "/bad", headers={"Accept": "text/event-stream"}).status == 400
    stream = await SSEStream.open(
        server.url + "/watch",
        "acc:a,acc:b",
        headers={"X-Forwarded-For": "203.0.113.7, 10.0.0.1"},
    )
    try:
        await stream.wait_retry()
        post_event(server.url, "acc:a:1", 1)
        post_event(server.url, "acc:b", 2)
        post_event(server.url, "other", 3)
        assert (await stream.next_event()).json()["data"] == 1
        assert (await stream.next_event()).json()["data"] == 2
    finally:
        await stream.close()

    def stream_line() -> dict[str, Any] | None:
        ended = [line for line in json_lines(access) if "events_sent" in line]
        return ended[0] if ended else None

    ended = await async_wait_for(stream_line, what="the stream's access line")
    assert ended["remote"] == "203.0.113.7"
    assert ended["path"] == "/watch"
    assert ended["status"] == 200
    assert ended["types"] == ["acc:a", "acc:b"]
    assert ended["events_sent"] == 2
    assert isinstance(ended["duration_ms"], int | float)
    assert ended["duration_ms"] >= 0

    lines = json_lines(access)
    requests = [line for line in lines if "events_sent" not in line]
    by_path = {}
    for line in requests:
        by_path.setdefault(line["path"], []).append(line)
    assert len(by_path["/hc"]) == 1
    assert by_path["/hc"][0]["status"] == 200
    assert by_path["/hc"][0]["remote"] == "127.0.0.1"
    assert by_path["/nope"][0]["status"] == 404
    assert by_path["/metrics"][0]["remote"] == "198.51.100.9"
    assert len(by_path["/debug"]) == 3
    assert all("duration_ms" in line and "time" in line for line in lines)
    assert by_path["/bad"][0]["status"] == 400
    assert len(lines) == 1 + 1 + 1 + 1 + 3 + 1, lines
    # Access lines go to the access log only, not to the error log (stdout).
    assert not any("events_sent" in line or "status" in line for line in server.log_lines())


async def test_access_log_level_filters(
    plasma: Callable[..., PlasmaProcess], tmp_path: Path
) -> None:
    access = tmp_path / "access.log"
    server = plasma(PLASMA_ACCESS_LOG_OUT=str(access), PLASMA_ACCESS_LOG_LEVEL="error")
    assert http(server.url + "/hc").status == 200
    assert http(server.url + "/nope").status == 404
    server.stop()
    assert json_lines(access) == []


@pytest.mark.parametrize(
    ("level", "expect_info", "expect_warn"),
    [("info", True, True), ("warn", False, True), ("error", False, False)],
)
def test_error_log_to_a_file_with_level(
    plasma: Callable[..., PlasmaProcess],
    tmp_path: Path,
    level: str,
    expect_info: bool,
    expect_warn: bool,
) -> None:
    errors = tmp_path / "error.log"
    server = plasma(
        PLASMA_ERROR_LOG_OUT=str(errors),
        PLASMA_ERROR_LOG_LEVEL=level,
        PLASMA_SUBSCRIBER_TYPE="redis",
        PLASMA_SUBSCRIBER_REDIS_ADDR=f"127.0.0.1:{free_port()}",  # nothing there: warnings
        PLASMA_SUBSCRIBER_REDIS_CHANNELS="events",
        PLASMA_SUBSCRIBER_REDIS_RETRY_INTERVAL="100ms",
        PLASMA_SUBSCRIBER_REDIS_MAX_RETRY="1000",
    )
    if expect_warn:
        wait_for(lambda: "retrying" in errors.read_text(), what="a reconnect warning")
    else:
        time.sleep(0.6)  # several failed connection attempts, none of them logged
    assert server.stop() == 0
    lines = json_lines(errors)
    levels = {line["level"] for line in lines}
    messages = [line["msg"] for line in lines]
    assert ("plasma listening" in messages) is expect_info
    assert ("warn" in levels) is expect_warn
    if expect_warn:
        warning = next(line for line in lines if line["level"] == "warn")
        assert "retrying" in warning["msg"]
    order = ["debug", "info", "warn", "error", "critical", "fatal", "panic"]
    assert all(order.index(lv) >= order.index(level) for lv in levels), levels
    # Nothing of the error log went to stdout.
    assert server.log_lines() == []


async def test_sigterm_while_redis_hangs(
    redis_plasma: Callable[..., PlasmaProcess], redis_server: RedisServer
) -> None:
    server = redis_plasma()
    assert server.proc is not None
    with redis_server.client(socket_timeout=10) as blocker:
        sleeper = threading.Thread(target=blocker.execute_command, args=("DEBUG", "SLEEP", 2))
        sleeper.start()
        try:
            await asyncio.sleep(0.2)
            started = time.monotonic()
            server.proc.send_signal(signal.SIGTERM)
            rc = await asyncio.to_thread(server.proc.wait, 10)
            took = time.monotonic() - started
        finally:
            sleeper.join()
    assert rc == 0, server.output()
    assert took < 5.0
