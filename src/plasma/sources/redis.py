"""The Redis pub/sub source: subscribe to the configured channels and feed every message to the hub.

Reconnects follow ``RedisConnection``'s die/alive policy. Reads block on the socket
(``get_message`` with a timeout only to wake up), so an idle channel costs nothing and the first
event after a quiet minute arrives as fast as any other.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from plasma.config import RedisConfig
from plasma.errors import SourceError
from plasma.metrics import Metrics
from plasma.sources.redis_connection import RedisConnection, cancel_requested, quietly

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
        client = redis.client(timeout=None)
        pubsub = client.pubsub(ignore_subscribe_messages=True)
        try:
            await asyncio.wait_for(pubsub.subscribe(*c.channels), timeout=c.timeout * 5)
            if cancel_requested():
                raise asyncio.CancelledError
            redis.connected("subscribed")
            publish = hub.publish_raw
            get_message = pubsub.get_message
            while True:
                message = await get_message(ignore_subscribe_messages=True, timeout=c.timeout)
                if message is None:
                    continue
                if message["type"] == "message":
                    channel = message["channel"]
                    publish(message["data"], channel.decode("utf-8", "replace"))
        except TimeoutError as exc:
            raise SourceError(f"redis at {redis.address} did not answer SUBSCRIBE") from exc
        finally:
            redis.disconnected()
            await quietly(pubsub.aclose())  # type: ignore[no-untyped-call]
            await quietly(client.aclose())

    async def healthy(self) -> bool:
        return await self._redis.healthy()

    async def publish_many(self, raws: list[bytes], channel: str | None = None) -> list[str | None]:
        key = channel or self._redis.config.channels[0]
        await self._redis.publish_batch((b"PUBLISH", key.encode()), raws)
        return [None] * len(raws)  # each plasma gives the id when the message arrives

    async def aclose(self) -> None:
        await self._redis.aclose()
