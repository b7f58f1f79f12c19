"""Health under load: one client's health checks must not make a healthy node look down.

Every ``/hc``, ``grpc.health.v1.Health/Check``, ``List`` and ``Watch`` answers from one health
state per process, refreshed by one probe per interval: a flood of checks neither reaches the
broker nor opens connections to it, and the answers stay true.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.attacks.harness import Canaries, MemoryWatch
from tests.support import PlasmaProcess, RedisServer, http, start_redis_plasma, wait_for

pytestmark = pytest.mark.integration

SERVING = health_pb2.HealthCheckResponse.SERVING


@pytest.fixture(scope="module")
def redis_server(redis_module: RedisServer) -> RedisServer:
    return redis_module


@pytest.fixture(scope="module")
def server(redis_server: RedisServer) -> Iterator[PlasmaProcess]:
    process = start_redis_plasma(redis_server)
    yield process
    assert process.stop() == 0


def broker_clients(redis_server: RedisServer) -> int:
    """Connections to the broker other than this test's own."""
    with redis_server.client() as r:
        return len(r.client_list()) - 1


async def _check_flood(port: int, calls: int) -> list[int]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        request = health_pb2.HealthCheckRequest(service="")
        answers = await asyncio.gather(*(stub.Check(request, timeout=10) for _ in range(calls)))
    return [answer.status for answer in answers]


async def test_a_flood_of_health_checks_gets_true_answers_and_no_broker_connections(
    server: PlasmaProcess, redis_server: RedisServer
) -> None:
    with Canaries(server, redis_server) as canaries, MemoryWatch(server.proc.pid) as memory:
        before = broker_clients(redis_server)  # plasma's and the canaries' publisher
        flood = asyncio.gather(*(_check_flood(server.port, 300) for _ in range(5)))
        polls = [await asyncio.to_thread(http, server.url + "/hc") for _ in range(5)]
        statuses = [s for batch in await flood for s in batch]
        during = broker_clients(redis_server)
    assert statuses == [SERVING] * 1500
    assert [p.status for p in polls] == [200] * 5
    # plasma keeps its own connections (pub/sub and the one probe), whatever the checks.
    assert during <= max(before, 3)
    canaries.assert_on_time()
    memory.assert_bounded()


async def test_watch_streams_are_capped_per_connection(server: PlasmaProcess) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        request = health_pb2.HealthCheckRequest(service="")
        watches = [stub.Watch(request) for _ in range(90)]
        outcomes: list[str] = []
        for watch in watches:
            try:
                first = await asyncio.wait_for(watch.read(), 10)
                outcomes.append("serving" if first.status == SERVING else str(first))
            except grpc.aio.AioRpcError as exc:
                outcomes.append(exc.code().name)
        for watch in watches:
            watch.cancel()
    assert "RESOURCE_EXHAUSTED" in outcomes
    assert outcomes.count("serving") >= 1
    assert set(outcomes) <= {"serving", "RESOURCE_EXHAUSTED"}


def test_hc_follows_the_broker_without_asking_it_per_request(
    server: PlasmaProcess, redis_server: RedisServer
) -> None:
    with redis_server.client() as r:
        r.config_resetstat()
        for _ in range(50):
            assert http(server.url + "/hc").status == 200
        pings = int(r.info("commandstats").get("cmdstat_ping", {}).get("calls", 0))
    # One probe per second at most, not one per request (50 requests take well under 10 s).
    assert pings <= 10
    wait_for(lambda: http(server.url + "/hc").status == 200, what="/hc")
