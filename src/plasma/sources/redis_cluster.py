"""Sharded pub/sub on a Redis Cluster: ``SSUBSCRIBE`` each channel on the master owning its slot.

Redis 7's sharded pub/sub keeps a message on the shard that owns the channel's slot (publishers
use ``SPUBLISH``), where classic ``PUBLISH`` is broadcast to every node of the cluster. plasma
learns the slot map from the seed nodes, opens one pub/sub connection per master that owns one
of its channels, and reads them all at once (one task per master, so order per channel holds).

When a slot moves or a master fails over, the old owner drops the subscription (Redis sends an
``sunsubscribe``) or the connection breaks: every connection is closed and ``listen`` raises, so
the reconnect loop learns the new slot map and subscribes again, and the source announces the
gap, since messages published in between are gone.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.crc import key_slot
from redis.exceptions import RedisError

from plasma.errors import SourceError

__all__ = ["listen_sharded", "read_streams"]


async def listen_sharded(
    cluster: RedisCluster,
    channels: tuple[str, ...],
    publish: Callable[[bytes, str], Any],
    subscribed: Callable[[], None],
    *,
    node_client: Callable[[str, int], aioredis.Redis],
    timeout: float,
) -> None:
    """Subscribe to ``channels`` on their masters, call ``subscribed``, read until one fails."""
    await asyncio.wait_for(cluster.initialize(), timeout * 5)
    by_node: dict[tuple[str, int], dict[int, list[str]]] = {}
    for channel in channels:
        node = cluster.get_node_from_key(channel)
        if node is None:
            raise SourceError(f"no cluster node serves the slot of channel {channel!r}")
        slot = key_slot(channel.encode())
        by_node.setdefault((node.host, int(node.port)), {}).setdefault(slot, []).append(channel)
    pubsubs: list[aioredis.client.PubSub] = []
    clients: list[aioredis.Redis] = []
    try:
        for (host, port), slots in by_node.items():
            client = node_client(host, port)
            clients.append(client)
            pubsub = client.pubsub(ignore_subscribe_messages=True)
            pubsubs.append(pubsub)
            # One SSUBSCRIBE per slot: channels of different slots in one call are CROSSSLOT.
            for slot_channels in slots.values():
                await asyncio.wait_for(pubsub.ssubscribe(*slot_channels), timeout * 5)
        subscribed()
        readers = [asyncio.ensure_future(_read(p, publish, timeout)) for p in pubsubs]
        try:
            done, _ = await asyncio.wait(readers, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                task.result()  # raises what stopped it
        finally:
            for task in readers:
                task.cancel()
            await asyncio.gather(*readers, return_exceptions=True)
    except TimeoutError as exc:
        raise SourceError("a cluster node did not answer SSUBSCRIBE") from exc
    finally:
        for pubsub in pubsubs:
            with contextlib.suppress(RedisError, OSError, TimeoutError, RuntimeError):
                await asyncio.wait_for(pubsub.aclose(), 1.0)  # type: ignore[no-untyped-call]
        for client in clients:
            with contextlib.suppress(RedisError, OSError, TimeoutError, RuntimeError):
                await asyncio.wait_for(client.aclose(), 1.0)


async def _read(
    pubsub: aioredis.client.PubSub, publish: Callable[[bytes, str], Any], timeout: float
) -> None:
    get_message = pubsub.get_message
    while True:
        message = await get_message(ignore_subscribe_messages=False, timeout=timeout)
        if message is None:
            continue
        kind = message["type"]
        if kind == "smessage":
            publish(message["data"], message["channel"].decode("utf-8", "replace"))
        elif kind == "sunsubscribe":
            # The slot moved (resharding or failover): the node stopped serving the channel.
            channel = message["channel"].decode("utf-8", "replace")
            raise SourceError(f"the cluster moved the slot of channel {channel!r}")


async def read_streams(
    cluster: RedisCluster,
    positions: dict[str, str],
    publish: Callable[[str, list[Any]], None],
    *,
    count: int,
    block_ms: int,
) -> None:
    """``XREAD`` each stream on its own slot's master, one task per stream, until one fails.

    A multi-key ``XREAD`` across slots is refused (``CROSSSLOT``), so each stream is read on its
    own; the cluster client routes by key and follows ``MOVED`` after a failover or resharding.
    ``positions`` is updated as entries are handed to ``publish(stream, entries)``.
    """

    async def read(stream: str) -> None:
        while True:
            reply: Any = await cluster.xread(
                {stream: positions[stream]}, count=count, block=block_ms
            )
            for _, entries in reply or ():
                if entries:
                    positions[stream] = entries[-1][0].decode()
                    publish(stream, entries)

    readers = [asyncio.ensure_future(read(stream)) for stream in positions]
    try:
        done, _ = await asyncio.wait(readers, return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            task.result()
    finally:
        for task in readers:
            task.cancel()
        await asyncio.gather(*readers, return_exceptions=True)
