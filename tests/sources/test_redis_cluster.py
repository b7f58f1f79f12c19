"""Redis Cluster: a real 3-master/3-replica cluster of six ``redis-server --cluster-enabled yes``.

Sharded pub/sub (``SSUBSCRIBE`` on each channel's master, publishers ``SPUBLISH``) is the
default in cluster mode; ``PLASMA_SUBSCRIBER_REDIS_SHARDED=false`` uses classic ``SUBSCRIBE``.
``redis-stream`` reads each stream on its slot's master. Killing a master promotes its replica:
plasma follows without a restart (a gap for pub/sub, nothing lost for streams).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import orjson
import pytest

from tests.brokers import RedisClusterNodes
from tests.support import PlasmaProcess, SSEStream, async_wait_for, http, wait_for

pytestmark = pytest.mark.integration

# Three channels on three different masters (slots 5798, 9842 and 13947 of 16384 are spread
# over the three masters that ``redis-cli --cluster create`` makes).
CHANNELS = ("c{a}", "c{b}", "c{c}")


@pytest.fixture(scope="module")
def cluster() -> Iterator[RedisClusterNodes]:
    nodes = RedisClusterNodes().start()
    yield nodes
    nodes.stop()


def envelope(type: str, data: Any) -> bytes:
    return orjson.dumps({"meta": {"type": type}, "data": data})


def cluster_env(cluster: RedisClusterNodes, **env: str) -> dict[str, str]:
    return {
        "PLASMA_SUBSCRIBER_TYPE": "redis",
        "PLASMA_SUBSCRIBER_REDIS_CLUSTER": "true",
        "PLASMA_SUBSCRIBER_REDIS_ADDR": cluster.seeds,
        "PLASMA_SUBSCRIBER_REDIS_CHANNELS": ",".join(CHANNELS),
        "PLASMA_SUBSCRIBER_REDIS_RETRY_INTERVAL": "200ms",
        **env,
    }


def spublish(cluster: RedisClusterNodes, channel: str, message: bytes) -> int:
    with cluster.client() as client:
        return int(client.execute_command("SPUBLISH", channel, message))


def shard_subscribers(cluster: RedisClusterNodes, channel: str) -> int:
    """``PUBSUB SHARDNUMSUB`` on the master that owns ``channel`` now."""
    with cluster.node(cluster.master_of(channel)) as node:
        return int(dict(node.pubsub_shardnumsub(channel)).get(channel.encode(), 0))


async def test_sharded_pubsub_reads_every_master_and_follows_a_failover(
    plasma: Callable[..., PlasmaProcess], cluster: RedisClusterNodes
) -> None:
    assert len({cluster.master_of(c) for c in CHANNELS}) == 3, "one channel per master"
    server = plasma(**cluster_env(cluster))
    for channel in CHANNELS:
        await async_wait_for(lambda c=channel: shard_subscribers(cluster, c) == 1, what=channel)
    stream = await SSEStream.open(server.url + "/", "s")
    try:
        await stream.wait_retry()
        for n, channel in enumerate(CHANNELS):
            assert spublish(cluster, channel, envelope("s", n)) == 1
        assert sorted([(await stream.next_event()).json()["data"] for _ in range(3)]) == [0, 1, 2]

        victim = cluster.master_of(CHANNELS[0])
        cluster.kill(victim)
        await async_wait_for(
            lambda: cluster.master_of(CHANNELS[0]) != victim, timeout=20, what="the failover"
        )
        await async_wait_for(
            lambda: shard_subscribers(cluster, CHANNELS[0]) == 1, timeout=20, what="resubscribed"
        )
        gap = await stream.next_event(timeout=20)
        assert gap.event == "gap"
        spublish(cluster, CHANNELS[0], envelope("s", "after"))
        assert (await stream.next_event()).json()["data"] == "after"
        assert http(server.url + "/hc").status == 200
    finally:
        await stream.close()


async def test_classic_subscribe_when_not_sharded(
    plasma: Callable[..., PlasmaProcess], cluster: RedisClusterNodes
) -> None:
    server = plasma(**cluster_env(cluster, PLASMA_SUBSCRIBER_REDIS_SHARDED="false"))

    def subscribed() -> bool:
        with cluster.client() as client:
            counts = client.pubsub_numsub(CHANNELS[1], target_nodes="all")
        return any(n for _, n in counts)

    wait_for(subscribed, what="a classic SUBSCRIBE")
    stream = await SSEStream.open(server.url + "/", "p")
    try:
        await stream.wait_retry()
        with cluster.client() as client:
            client.publish(CHANNELS[1], envelope("p", "broadcast"))
        assert (await stream.next_event()).json()["data"] == "broadcast"
    finally:
        await stream.close()


async def test_redis_stream_on_a_cluster_resumes_from_each_slot(
    plasma: Callable[..., PlasmaProcess], cluster: RedisClusterNodes
) -> None:
    env = cluster_env(
        cluster,
        PLASMA_SUBSCRIBER_TYPE="redis-stream",
        PLASMA_SUBSCRIBER_REDIS_CHANNELS="s{a},s{b}",
        PLASMA_HISTORY_SIZE="2",
    )
    server = plasma(**env)
    await async_wait_for(lambda: http(server.url + "/hc").status == 200, what="/hc 200")
    stream = await SSEStream.open(server.url + "/", "x")
    try:
        await stream.wait_retry()
        with cluster.client() as client:
            for n in range(4):
                client.xadd("s{a}" if n % 2 else "s{b}", {"event": envelope("x", n)})
        got = [await stream.next_event() for _ in range(4)]
        assert sorted(e.json()["data"] for e in got) == [0, 1, 2, 3]
    finally:
        await stream.close()
    # Older than the history: XRANGE on each stream's own master, merged in id order.
    oldest = min(got, key=lambda e: tuple(int(p) for p in e.id.split("-")))
    resumed = await SSEStream.open(server.url + "/", "x", headers={"Last-Event-ID": oldest.id})
    try:
        replay = [await resumed.next_event() for _ in range(3)]
        assert None not in {e.id for e in replay}
        assert {e.id for e in replay} == {e.id for e in got} - {oldest.id}
    finally:
        await resumed.close()
