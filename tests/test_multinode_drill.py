"""The multi-node drill: three plasma nodes on one broker while a Redis master and a node die.

Real processes only: a 3-master/3-replica Redis Cluster (six ``redis-server
--cluster-enabled yes``), a ``nats-server -js``, and three plasma processes on different ports
(two of them with two workers). Clients are spread over the nodes; 10,000 events are published
at a steady rate; meanwhile the Redis master holding the events is killed (its replica takes
over) and one plasma node is killed and restarted, its clients moving to another node with
their ``Last-Event-ID``.

- Stream sources (``redis-stream`` on the cluster, ``nats-jetstream``): every client has every
  event the broker holds, exactly once, in order.
- Pub/sub (sharded ``redis`` on the cluster): every hole in a client's events is announced by a
  gap event; nothing is lost silently.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import signal
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import nats
import orjson
import pytest
from redis.asyncio.cluster import ClusterNode
from redis.asyncio.cluster import RedisCluster as AsyncCluster

from tests.brokers import NatsServer, RedisClusterNodes
from tests.support import PlasmaProcess, async_wait_for, free_port, http

pytestmark = pytest.mark.integration

EVENTS = 10_000
BATCH = 100  # events per tick
TICK = 0.05  # seconds between ticks: a steady 2,000 events/s
CLIENTS_PER_NODE = 2


@pytest.fixture(scope="module")
def cluster() -> Iterator[RedisClusterNodes]:
    nodes = RedisClusterNodes().start()
    yield nodes
    nodes.stop()


@pytest.fixture(scope="module")
def nats_server() -> Iterator[NatsServer]:
    server = NatsServer(jetstream=True).start()
    yield server
    server.stop()


@dataclass
class Client:
    """An SSE client that follows its node, and moves to the next one when its node dies."""

    urls: list[str]
    node: int
    events: list[tuple[str, str, Any]] = field(default_factory=list)
    """(SSE event name, id, data) of every frame received."""
    moves: int = 0

    @property
    def last_id(self) -> str:
        return self.events[-1][1] if self.events else ""

    async def run(self, session: aiohttp.ClientSession) -> None:
        while True:
            headers = {"Accept": "text/event-stream"}
            if self.last_id:
                headers["Last-Event-ID"] = self.last_id
            try:
                async with session.get(
                    self.urls[self.node] + "/", params={"eventType": "d"}, headers=headers
                ) as response:
                    await self._read(response)
            except (aiohttp.ClientError, OSError):
                pass
            # The node is gone: move on to the next one, as a load balancer would.
            self.node = (self.node + 1) % len(self.urls)
            self.moves += 1
            await asyncio.sleep(0.05)

    async def _read(self, response: aiohttp.ClientResponse) -> None:
        name, event_id, data = "", "", b""
        async for raw in response.content:
            line = raw.rstrip(b"\r\n")
            if not line:
                if data:
                    body = orjson.loads(data)
                    self.events.append((name or "message", event_id, body["data"]))
                name, event_id, data = "", "", b""
            elif line.startswith(b"id: "):
                event_id = line[4:].decode()
            elif line.startswith(b"event: "):
                name = line[7:].decode()
            elif line.startswith(b"data: "):
                data = line[6:]


def make_nodes(env: dict[str, str]) -> list[PlasmaProcess]:
    """Three plasma nodes with ``env`` on their own ports, two of them with two workers."""
    return [
        PlasmaProcess(env={**env, "PLASMA_PORT": str(free_port()), "PLASMA_WORKERS": w})
        for w in ("2", "2", "1")
    ]


async def drill(
    nodes: list[PlasmaProcess],
    publish: Callable[[int], Awaitable[None]],
    chaos: Callable[[int], Awaitable[None]],
    done: Callable[[list[Client]], bool],
    tail: Callable[[int], Awaitable[None]] | None = None,
) -> list[Client]:
    """Start the nodes and clients, publish ``EVENTS`` with ``chaos(n)`` every tick.

    Then wait until ``done``; ``tail(k)`` publishes one more event (numbered from ``EVENTS``)
    every wait, for pub/sub, where only events published after a client is back reach it.
    """
    for node in nodes:
        node.start()
    for node in nodes:
        await async_wait_for(lambda n=node: http(n.url + "/hc").status == 200, timeout=15)
    urls = [node.url for node in nodes]
    clients = [Client(urls, i % len(nodes)) for i in range(len(nodes) * CLIENTS_PER_NODE)]
    session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None))
    tasks = [asyncio.ensure_future(c.run(session)) for c in clients]
    try:
        await asyncio.sleep(0.5)  # every client subscribed
        for n in range(0, EVENTS, BATCH):
            await chaos(n)
            await publish(n)
            await asyncio.sleep(TICK)
        for k in itertools.count(EVENTS):
            if done(clients):
                break
            assert k < EVENTS + 600, f"clients did not catch up: {[len(c.events) for c in clients]}"
            if tail is not None:
                await tail(k)
            await asyncio.sleep(0.05)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await session.close()
        for node in nodes:
            with contextlib.suppress(AssertionError):
                node.stop()
    return clients


def node_killer(nodes: list[PlasmaProcess], at: int) -> Callable[[int], Awaitable[None]]:
    """Kill the one-worker node (SIGKILL) at event ``at``; start it again 1,000 events later."""

    async def chaos(n: int) -> None:
        if n == at:
            nodes[2].stop(signal.SIGKILL)
        elif n == at + 10 * BATCH:
            nodes[2].start(wait=False)

    return chaos


def check_exactly_once(clients: list[Client], expected: list[str]) -> None:
    for client in clients:
        ids = [event_id for name, event_id, _ in client.events if name == "message"]
        gaps = [e for e in client.events if e[0] == "gap"]
        assert not gaps, f"a stream source sent a gap: {gaps[:3]}"
        assert ids == expected, f"client on node {client.node}: {len(ids)} of {len(expected)}"


def caught_up(last: Callable[[], int]) -> Callable[[list[Client]], bool]:
    """Every client's newest event carries the last number published."""

    def done(clients: list[Client]) -> bool:
        return all(c.events and c.events[-1][2] == last() for c in clients)

    return done


def envelope(n: int) -> bytes:
    return orjson.dumps({"meta": {"type": "d"}, "data": n})


async def test_redis_stream_cluster_drill(cluster: RedisClusterNodes) -> None:
    stream = "drill{s}"
    nodes = make_nodes(
        {
            "PLASMA_SUBSCRIBER_TYPE": "redis-stream",
            "PLASMA_SUBSCRIBER_REDIS_CLUSTER": "true",
            "PLASMA_SUBSCRIBER_REDIS_ADDR": cluster.seeds,
            "PLASMA_SUBSCRIBER_REDIS_CHANNELS": stream,
            "PLASMA_SUBSCRIBER_REDIS_RETRY_INTERVAL": "200ms",
            "PLASMA_HISTORY_SIZE": "2000",  # a moved client may need Redis for older events
        }
    )
    victim = cluster.master_of(stream)
    publisher = AsyncCluster(startup_nodes=[ClusterNode("127.0.0.1", p) for p in cluster.ports])
    kill_node = node_killer(nodes, 5000)

    async def publish(n: int) -> None:
        while True:
            try:
                pipe = publisher.pipeline(transaction=False)
                for k in range(n, n + BATCH):
                    pipe.xadd(stream, {"event": envelope(k)})
                await pipe.execute()
                return
            except Exception:  # the master is failing over: retry, as publishers do
                await asyncio.sleep(0.1)

    async def chaos(n: int) -> None:
        if n == 3000:
            cluster.kill(victim)
        await kill_node(n)

    try:
        clients = await drill(nodes, publish, chaos, caught_up(lambda: EVENTS - 1))
    finally:
        await publisher.aclose()
    with cluster.client() as client:
        expected = [entry_id.decode() for entry_id, _ in client.xrange(stream)]
    assert len(expected) >= EVENTS
    check_exactly_once(clients, expected)
    assert sum(c.moves for c in clients) >= CLIENTS_PER_NODE, "the killed node's clients moved"


async def test_nats_jetstream_drill(nats_server: NatsServer) -> None:
    nodes = make_nodes(
        {
            "PLASMA_SUBSCRIBER_TYPE": "nats-jetstream",
            "PLASMA_SUBSCRIBER_NATS_URL": nats_server.url,
            "PLASMA_SUBSCRIBER_NATS_SUBJECTS": "drill.>",
            "PLASMA_SUBSCRIBER_NATS_STREAM": "DRILL",
            "PLASMA_HISTORY_SIZE": "2000",
        }
    )
    publisher = await nats.connect(nats_server.url)
    js = publisher.jetstream()
    sequences: list[str] = []

    async def publish(n: int) -> None:
        acks = [await js.publish_async("drill.d", envelope(k)) for k in range(n, n + BATCH)]
        for ack in acks:
            sequences.append(str((await ack).seq))

    try:
        clients = await drill(
            nodes, publish, node_killer(nodes, 5000), caught_up(lambda: EVENTS - 1)
        )
    finally:
        await publisher.close()
    check_exactly_once(clients, sequences)
    assert sum(c.moves for c in clients) >= CLIENTS_PER_NODE, "the killed node's clients moved"


async def test_sharded_pubsub_cluster_drill(cluster: RedisClusterNodes) -> None:
    channel = "drill{p}"
    nodes = make_nodes(
        {
            "PLASMA_SUBSCRIBER_TYPE": "redis",
            "PLASMA_SUBSCRIBER_REDIS_CLUSTER": "true",
            "PLASMA_SUBSCRIBER_REDIS_ADDR": cluster.seeds,
            "PLASMA_SUBSCRIBER_REDIS_CHANNELS": channel,
            "PLASMA_SUBSCRIBER_REDIS_RETRY_INTERVAL": "200ms",
        }
    )
    victim = cluster.master_of(channel)
    publisher = AsyncCluster(startup_nodes=[ClusterNode("127.0.0.1", p) for p in cluster.ports])
    kill_node = node_killer(nodes, 5000)

    async def publish(n: int) -> None:
        for k in range(n, n + BATCH):
            try:
                await publisher.execute_command("SPUBLISH", channel, envelope(k))
            except Exception:  # the master is failing over: this one is lost, say the clients
                await asyncio.sleep(0.01)

    async def chaos(n: int) -> None:
        if n == 3000:
            cluster.kill(victim)
        await kill_node(n)

    try:
        clients = await drill(
            nodes,
            publish,
            chaos,
            lambda cs: all(c.events and c.events[-1][2] >= EVENTS for c in cs),
            tail=lambda k: publisher.execute_command("SPUBLISH", channel, envelope(k)),
        )
    finally:
        await publisher.aclose()
    for client in clients:
        previous = -1
        announced = False
        for name, _, data in client.events:
            if name == "gap":
                announced = True
                continue
            assert data > previous, "in order, never twice"
            if data != previous + 1:
                assert announced, f"events {previous + 1}..{data - 1} lost without a gap"
            previous, announced = data, False
    assert sum(name == "gap" for c in clients for name, _, _ in c.events) >= len(clients)
