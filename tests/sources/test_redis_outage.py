"""A lost pub/sub subscription is announced: every open stream gets a gap event, ids show the hole.

Pub/sub cannot replay what was published while plasma was not subscribed, so when the
subscription comes back plasma says so in-band (SSE ``event: gap``, gRPC ``plasma:gap``) and
in ``/metrics``. Real redis-server processes are killed and restarted; real SSE and grpcio
clients read the streams.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import grpc
import pytest

from tests.support import (
    PlasmaProcess,
    RedisServer,
    SSEStream,
    async_wait_for,
    http,
)
from tests.transports.test_grpc import next_payload, stubs, subscribe

pytestmark = pytest.mark.integration

__all__ = ["stubs"]  # the session fixture, imported for this module's tests


def seq(event_id: str) -> int:
    """The running number of a pub/sub id (``<epoch>-<n>``)."""
    return int(event_id.rsplit("-", 1)[1])


@pytest.mark.parametrize("workers", ["1", "2"])
async def test_redis_restart_sends_every_stream_a_gap_and_ids_show_the_hole(
    redis_plasma: Callable[..., PlasmaProcess],
    redis_server: RedisServer,
    stubs: Any,
    workers: str,
) -> None:
    # With workers the node's reader loses the subscription; every worker's streams hear it.
    server = redis_plasma(PLASMA_SUBSCRIBER_REDIS_RETRY_INTERVAL="200ms", PLASMA_WORKERS=workers)
    sse = await SSEStream.open(server.url + "/", "news")
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        try:
            await sse.wait_retry()
            call = await subscribe(channel, stubs, "news")
            redis_server.publish("events", {"meta": {"type": "news"}, "data": "before"})
            before = await sse.next_event()
            assert before.json()["data"] == "before"
            assert (await next_payload(call)).id == before.id
            assert server.metrics()["source_gaps"] == 0

            port = redis_server.port
            redis_server.kill()
            await async_wait_for(lambda: http(server.url + "/hc").status == 500, what="/hc 500")
            restarted = RedisServer(port=port).start()
            try:
                await async_wait_for(
                    lambda: restarted.numsub("events") > 0, timeout=15, what="resubscribed"
                )
                gap = await sse.next_event()
                assert gap.event == "gap"
                body = gap.json()
                assert body["meta"]["type"] == "plasma:gap"
                assert body["data"]["lastEventId"] == before.id
                assert body["data"]["resumeFrom"] == gap.id
                payload = await next_payload(call)
                assert payload.eventType.type == "plasma:gap"
                assert payload.id == gap.id
                assert json.loads(payload.data)["resumeFrom"] == gap.id

                restarted.publish("events", {"meta": {"type": "news"}, "data": "after"})
                after = await sse.next_event()
                assert after.json()["data"] == "after"
                assert (await next_payload(call)).id == after.id
                # The ids do not run on as if nothing happened: the gap holds a number of its own.
                assert seq(before.id) < seq(gap.id) < seq(after.id)
                assert seq(after.id) != seq(before.id) + 1

                # A client that was away during the outage learns of it on resume.
                late = await SSEStream.open(
                    server.url + "/", "news", headers={"Last-Event-ID": before.id}
                )
                try:
                    replayed = [await late.next_event(), await late.next_event()]
                    assert [(e.event, e.id) for e in replayed] == [
                        ("gap", gap.id),
                        (None, after.id),
                    ]
                finally:
                    await late.close()

                # Workers share their figures about once a second: wait for the whole node's.
                await async_wait_for(
                    lambda: server.metrics()["source_gaps"] == 1, what="source_gaps 1"
                )
                await async_wait_for(  # two live streams and one resume
                    lambda: server.metrics()["gaps_sent"] >= 3, what="gaps_sent 3"
                )
                call.cancel()
            finally:
                restarted.stop()
        finally:
            await sse.close()


async def test_first_reconnect_after_a_loss_is_immediate(
    redis_plasma: Callable[..., PlasmaProcess], redis_server: RedisServer
) -> None:
    # A retry interval far longer than the wait below: only an immediate retry resubscribes.
    server = redis_plasma(PLASMA_SUBSCRIBER_REDIS_RETRY_INTERVAL="1h")
    sse = await SSEStream.open(server.url + "/", "news")
    try:
        await sse.wait_retry()
        with redis_server.client() as client:
            assert client.client_kill_filter(_type="pubsub") == 1
        await async_wait_for(
            lambda: redis_server.numsub("events") > 0, timeout=15, what="an immediate resubscribe"
        )
        gap = await sse.next_event()
        assert gap.event == "gap"
        redis_server.publish("events", {"meta": {"type": "news"}, "data": 1})
        assert (await sse.next_event()).json()["data"] == 1
        assert server.metrics()["source_reconnects"] == 1
    finally:
        await sse.close()


def test_the_last_failure_before_die_says_giving_up(
    redis_plasma: Callable[..., PlasmaProcess], redis_server: RedisServer
) -> None:
    server = redis_plasma(
        PLASMA_SUBSCRIBER_REDIS_OVER_MAX_RETRY_BEHAVIOR="die",
        PLASMA_SUBSCRIBER_REDIS_MAX_RETRY="3",
        PLASMA_SUBSCRIBER_REDIS_RETRY_INTERVAL="100ms",
    )
    assert server.proc is not None
    redis_server.stop()
    assert server.proc.wait(15) != 0
    failures = [line for line in server.log_lines() if "failures" in line]
    assert [line["failures"] for line in failures] == [1, 2, 3]
    assert all("retrying" in line["msg"] for line in failures[:-1])
    assert "giving up" in failures[-1]["msg"]
    assert "retrying" not in failures[-1]["msg"]


async def test_a_stream_opened_after_the_outage_gets_no_gap(
    redis_plasma: Callable[..., PlasmaProcess], redis_server: RedisServer
) -> None:
    server = redis_plasma(PLASMA_SUBSCRIBER_REDIS_RETRY_INTERVAL="200ms")
    with redis_server.client() as client:
        client.client_kill_filter(_type="pubsub")
    await async_wait_for(lambda: server.metrics()["source_gaps"] == 1, what="the gap")
    await async_wait_for(lambda: redis_server.numsub("events") > 0, what="resubscribed")
    sse = await SSEStream.open(server.url + "/", "news")
    try:
        await sse.wait_retry()
        redis_server.publish("events", {"meta": {"type": "news"}, "data": "fresh"})
        first = await sse.next_event()
        assert (first.event, first.json()["data"]) == (None, "fresh")
    finally:
        await sse.close()
