"""PLASMA_WORKERS: several processes on one port, supervised and drained together."""

from __future__ import annotations

import os
import signal
import urllib.request
from collections.abc import Callable

import grpc
import orjson
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.support import PlasmaProcess, RedisServer, SSEStream, http, post_event, wait_for

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
    # One subscription for the node: the supervisor's reader feeds both workers.
    wait_for(lambda: redis_server.numsub("events") == 1, what="the node's reader to subscribe")
    wait_for(lambda: len(_listening(server)) == 2, timeout=30, what="both workers to listen")
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
    wait_for(lambda: len(_listening(server)) == 3, timeout=30, what="the replacement to listen")
    assert redis_server.numsub("events") == 1
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


def _listening(server: PlasmaProcess) -> list[dict[str, object]]:
    return [line for line in server.log_lines() if line.get("msg") == "plasma listening"]


def _serving(server: PlasmaProcess) -> bool:
    try:
        return _metrics_pid(server.url) > 0
    except OSError:
        return False


async def test_every_worker_answers_health_and_debug_and_shares_the_node_ids(
    redis_plasma: Callable[..., PlasmaProcess], redis_server: RedisServer
) -> None:
    server = redis_plasma(wait=False, PLASMA_WORKERS="2", PLASMA_DEBUG="true")
    server.wait_ready(timeout=30)
    wait_for(lambda: len(_listening(server)) == 2, timeout=30, what="both workers to listen")
    streams = [await SSEStream.open(server.url + "/", "d") for _ in range(20)]
    try:
        for s in streams:
            await s.wait_retry()
        assert {_metrics_pid(server.url) for _ in range(20)} == _worker_pids(server)

        # Requests spread over both workers; every one is answered. Right after start a worker
        # may still wait for its sibling's first status (shared about once a second).
        wait_for(
            lambda: all(http(server.url + "/hc").body == b"OK\n" for _ in range(20)),
            what="/hc OK on every worker",
        )
        for _ in range(10):
            with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
                health = health_pb2_grpc.HealthStub(channel)
                reply = health.Check(health_pb2.HealthCheckRequest(), timeout=5)
                assert reply.status == health_pb2.HealthCheckResponse.SERVING
        for n in range(6):  # POST /debug on either worker goes through the node's one source
            post_event(server.url, "d", n)
        frames = [[await s.next_event() for _ in range(6)] for s in streams]
        assert all([f.json()["data"] for f in got] == list(range(6)) for got in frames)
        assert len({tuple(f.id for f in got) for got in frames}) == 1, "one id per event, node-wide"

        # Events are read and counted once for the node, not once per worker.
        def counted() -> bool:
            m = server.metrics()
            return bool(m["events_received"] == 6 and m["events_delivered"] == 120)

        for _ in range(6):
            wait_for(counted, what="the node's counters")

        redis_server.stop()
        wait_for(
            lambda: all(http(server.url + "/hc").status == 500 for _ in range(10)),
            what="/hc failing on every worker",
        )
        assert server.stop() == 0
    finally:
        for s in streams:
            await s.close()


def test_the_die_policy_stops_every_worker(
    redis_plasma: Callable[..., PlasmaProcess], redis_server: RedisServer
) -> None:
    server = redis_plasma(
        wait=False,
        PLASMA_WORKERS="2",
        PLASMA_SUBSCRIBER_REDIS_OVER_MAX_RETRY_BEHAVIOR="die",
        PLASMA_SUBSCRIBER_REDIS_MAX_RETRY="2",
        PLASMA_SUBSCRIBER_REDIS_RETRY_INTERVAL="100ms",
    )
    server.wait_ready(timeout=30)
    wait_for(lambda: len(_listening(server)) == 2, timeout=30, what="both workers to listen")
    redis_server.stop()
    assert server.proc is not None
    assert server.proc.wait(20) == 3
    assert "giving up" in server.output()
    for pid in _worker_pids(server):
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
