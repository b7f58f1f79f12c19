"""PLASMA_WORKERS: several processes on one port, supervised and drained together."""

from __future__ import annotations

import os
import signal
import urllib.request
from collections.abc import Callable

import orjson
import pytest

from tests.support import PlasmaProcess, RedisServer, SSEStream, wait_for

pytestmark = pytest.mark.integration


def _metrics_pid(url: str) -> int:
    with urllib.request.urlopen(url + "/metrics", timeout=5) as r:
        return int(orjson.loads(r.read())["pid"])


def _worker_pids(server: PlasmaProcess) -> set[int]:
    return {
        line["pid"]
        for line in server.log_lines()
        if line.get("msg") == "worker started" and "pid" in line
    }


async def test_workers_share_the_port_restart_and_drain(
    redis_plasma: Callable[..., PlasmaProcess], redis_server: RedisServer
) -> None:
    server = redis_plasma(wait=False, PLASMA_WORKERS="2")
    server.wait_ready()
    wait_for(lambda: redis_server.numsub("events") == 2, what="both workers to subscribe")
    seen = {_metrics_pid(server.url) for _ in range(40)}
    assert seen == _worker_pids(server), "connections should reach both workers"

    streams = [await SSEStream.open(server.url + "/", "w") for _ in range(20)]
    for s in streams:
        await s.wait_retry()
    redis_server.publish("events", {"meta": {"type": "w"}, "data": 1})
    for s in streams:
        assert (await s.next_event()).json()["data"] == 1

    # /metrics on any worker speaks for the whole server (siblings share snapshots each second).
    def whole_server() -> bool:
        with urllib.request.urlopen(server.url + "/metrics", timeout=5) as r:
            m = orjson.loads(r.read())
        return bool(m["connections"] == 20 and m["events_delivered"] == 20)

    for _ in range(6):  # several requests, so both workers answer at least once
        wait_for(whole_server, what="metrics covering both workers")

    victim = min(seen)
    os.kill(victim, signal.SIGKILL)
    wait_for(lambda: len(_worker_pids(server)) == 3, what="a replacement worker")
    wait_for(lambda: redis_server.numsub("events") == 2, what="the replacement to subscribe")
    assert any(
        line.get("msg") == "worker died; restarting it" and line.get("pid") == victim
        for line in server.log_lines()
    )
    # Clients of the dead worker reconnect; everyone is served again.
    again = await SSEStream.open(server.url + "/", "w")
    await again.wait_retry()
    redis_server.publish("events", {"meta": {"type": "w"}, "data": 2})
    assert (await again.next_event()).json()["data"] == 2

    assert server.stop() == 0
    for s in (*streams, again):
        await s.close()
    for pid in _worker_pids(server):
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


async def test_a_worker_that_keeps_dying_is_restarted_ever_more_slowly(
    plasma: Callable[..., PlasmaProcess],
) -> None:
    server = plasma(PLASMA_WORKERS="2")
    delays = []
    for round_ in range(3):
        wait_for(lambda r=round_: len(_worker_pids(server)) == 2 + r, what="a (new) worker")
        newest = max(
            (line for line in server.log_lines() if line.get("msg") == "worker started"),
            key=lambda line: line["time"],
        )
        wait_for(lambda: _serving(server), what="workers serving")
        os.kill(newest["pid"], signal.SIGKILL)
        line = wait_for(
            lambda p=newest["pid"]: next(
                (
                    line
                    for line in server.log_lines()
                    if line.get("msg") == "worker died; restarting it" and line.get("pid") == p
                ),
                None,
            ),
            what="the restart line",
        )
        delays.append(line["restart_in_seconds"])
    assert delays == sorted(delays) and delays[-1] > delays[0], delays
    assert server.stop() == 0


def _serving(server: PlasmaProcess) -> bool:
    try:
        return _metrics_pid(server.url) > 0
    except OSError:
        return False
