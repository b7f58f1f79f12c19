"""The Redis pub/sub source: subscribe to the configured channels and feed every message to the hub.

A channel entry holding ``*``, ``?`` or ``[`` is a pattern (``PSUBSCRIBE``). On a Redis Cluster
the channels are read with sharded pub/sub (``redis_cluster.listen_sharded``) unless
``PLASMA_SUBSCRIBER_REDIS_SHARDED=false``, which subscribes classically on any one node.

Reconnects follow ``RedisConnection``'s die/alive policy. Pub/sub cannot replay: when a lost
subscription is made again, every open stream gets a gap event (``Hub.announce_gap``).

The subscription is read by ``redis_pubsub.Subscription`` (large reads parsed by hiredis, one
batch per read for the hub) on every shape but sharded pub/sub, which stays on redis-py. Reads
block on the socket with no timeout, so an idle channel costs nothing and the first event
after a quiet minute arrives as fast as any other.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from plasma.config import RedisConfig
from plasma.errors import SourceError
from plasma.metrics import Metrics
from plasma.sources.redis_clients import is_pattern
from plasma.sources.redis_cluster import listen_sharded
from plasma.sources.redis_connection import (
    RedisConnection,
    cancel_requested,
    quietly,
)
from plasma.sources.redis_pubsub import Subscription

if TYPE_CHECKING:
    from plasma.hub import Hub

__all__ = ["RedisSource"]

log = logging.getLogger("plasma.sources.redis")


class RedisSource:
    """Reads ``config.channels`` over one pub/sub connection; pings over a second one."""

    name = "redis"

    def __init__(self, config: RedisConfig, metrics: Metrics) -> None:
        self._redis = RedisConnection(config, metrics, name=self.name, log=log)

    async def run(self, hub: Hub) -> None:
        await self._redis.run(lambda: self._listen(hub))

    async def _listen(self, hub: Hub) -> None:
        redis = self._redis
        c = redis.config
        if c.cluster and c.sharded:
            await self._listen_sharded(hub)
            return
        # Classic PUBLISH reaches every node of a cluster: any one of them will do.
        client = await self._any_node() if c.cluster else redis.client(timeout=None)
        plain = [channel for channel in c.channels if not is_pattern(channel)]
        patterns = [channel for channel in c.channels if is_pattern(channel)]
        subscription: Subscription | None = None
        try:
            subscription = await asyncio.wait_for(
                Subscription.open(client, plain, patterns), timeout=c.timeout * 5
            )
            first = await asyncio.wait_for(
                subscription.confirmations(len(plain) + len(patterns)), timeout=c.timeout * 5
            )
            if cancel_requested():
                raise asyncio.CancelledError
            self._subscribed(hub, "subscribed")
            ingest = hub.ingest  # read on while the hub parses and fans out (bounded)
            offer = ingest.offer_batch
            read = subscription.read
            if first.raws and not offer(first):
                await ingest.wait_for_room()
            while True:
                if not offer(await read()):
                    await ingest.wait_for_room()
        except TimeoutError as exc:
            raise SourceError(f"redis at {redis.address} did not answer SUBSCRIBE") from exc
        finally:
            redis.disconnected()
            if subscription is not None:
                await quietly(subscription.aclose())
            await quietly(client.aclose())

    async def _listen_sharded(self, hub: Hub) -> None:
        redis = self._redis
        cluster = redis.cluster(timeout=None)
        try:
            await listen_sharded(
                cluster,
                redis.config.channels,
                hub.publish_raw,
                lambda: self._subscribed(hub, "subscribed (sharded)"),
                node_client=redis.node,
                timeout=redis.config.timeout,
            )
        finally:
            redis.disconnected()
            await quietly(cluster.aclose())

    def _subscribed(self, hub: Hub, what: str) -> None:
        if self._redis.connected(what):
            # Pub/sub kept nothing while we were away: say so on every open stream.
            hub.announce_gap()

    async def _any_node(self) -> aioredis.Redis:
        """A client of the first cluster node that answers (seeds in order)."""
        redis = self._redis
        for host, port in redis.config.addrs:
            client = redis.node(host, port)
            try:
                await asyncio.wait_for(client.ping(), redis.config.timeout)
            except (RedisError, OSError, TimeoutError):
                await quietly(client.aclose())
                continue
            return client
        raise SourceError(f"no node of the redis {redis.address} answered")

    async def healthy(self) -> bool:
        return await self._redis.healthy()

    async def publish_many(self, raws: list[bytes], channel: str | None = None) -> list[str | None]:
        c = self._redis.config
        key = channel or next((ch for ch in c.channels if not is_pattern(ch)), None)
        if key is None:
            raise SourceError("every channel in PLASMA_SUBSCRIBER_REDIS_CHANNELS is a pattern")
        command = b"SPUBLISH" if c.cluster and c.sharded else b"PUBLISH"
        await self._redis.publish_batch((command, key.encode()), raws)
        return [None] * len(raws)  # each plasma gives the id when the message arrives

    async def aclose(self) -> None:
        await self._redis.aclose()
