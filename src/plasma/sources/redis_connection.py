"""What both Redis sources share: clients, the reconnect loop with its die/alive policy, the probe.

Connection lifecycle: ``listen`` connects and reads until the connection fails; then the
shared ``Reconnect`` policy retries (at once after a loss, then every ``retry_interval``; ``die``
or ``alive`` after ``max_retry`` failures in a row). A second, short-timeout client (the
*probe*) answers the health monitor without touching the reading one, and a third (``BatchWriter``)
publishes batches (the publish API, ``/debug``) in ``MULTI``/``EXEC`` transactions.

Every client speaks RESP2, which every Redis understands: redis-py 8 opens with ``HELLO 3`` by
default, and a Redis older than 6 answers that with an error, so plasma could not subscribe at
all. The probe parses replies in Python, not with hiredis: a broker that announces a reply of
billions of elements (``*3000000000``) made hiredis allocate and then free a list that size,
freezing the loop for seconds (and a shutdown with it); the Python parser reads elements as
they arrive and the probe's timeout ends the wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import redis.asyncio as aioredis
from redis._parsers import _AsyncRESP2Parser  # redis-py's own parser, in Python
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import RedisClusterException, RedisError

from plasma.config import RedisConfig
from plasma.errors import SourceError
from plasma.metrics import Metrics
from plasma.sources.reconnect import Reconnect, cancel_requested
from plasma.sources.redis_batch import BatchWriter
from plasma.sources.redis_clients import cluster_client, describe, node_client, server_client

__all__ = ["PROBE_TIMEOUT", "RedisConnection", "cancel_requested", "quietly"]

PROBE_TIMEOUT = 0.8
"""/hc must answer within a second even when Redis hangs."""


class RedisConnection:
    """One source's link to Redis; ``name`` and ``log`` are the source's own."""

    def __init__(
        self, config: RedisConfig, metrics: Metrics, *, name: str, log: logging.Logger
    ) -> None:
        self.config = config
        self.name = name
        self._metrics = metrics
        self._reconnect = Reconnect(
            config,
            metrics,
            name=name,
            address=self.address,
            log=log,
            # A cluster with no reachable seed raises RedisClusterException, not a RedisError.
            errors=(RedisError, RedisClusterException),
        )
        # The probe parses in Python (see above); a cluster client keeps redis-py's default.
        self.probe: aioredis.Redis | RedisCluster = (
            self.cluster(PROBE_TIMEOUT)
            if config.cluster
            else server_client(
                config, PROBE_TIMEOUT, self._connect_timeout(PROBE_TIMEOUT), _AsyncRESP2Parser
            )
        )
        """A short-timeout client for health checks and single commands."""
        self._batches: BatchWriter | None = None
        self._closed = False

    def client(self, timeout: float | None) -> aioredis.Redis:
        """A new client of the server (or Sentinel's master); ``timeout`` None blocks on reads."""
        return server_client(self.config, timeout, self._connect_timeout(timeout))

    def node(self, host: str, port: int) -> aioredis.Redis:
        """A new blocking-read client of one cluster node."""
        return node_client(self.config, host, port, None, self.config.timeout)

    def cluster(self, timeout: float | None) -> RedisCluster:
        """A new Redis Cluster client: it learns the slot map from the seeds, follows MOVED."""
        return cluster_client(self.config, timeout, self._connect_timeout(timeout))

    def _connect_timeout(self, timeout: float | None) -> float:
        return min(self.config.timeout, PROBE_TIMEOUT) if timeout else self.config.timeout

    @property
    def address(self) -> str:
        return describe(self.config)

    async def run(self, listen: Callable[[], Awaitable[None]]) -> None:
        """Call ``listen`` again after every connection failure (``Reconnect``'s policy)."""
        await self._reconnect.run(listen)

    def connected(self, what: str) -> bool:
        """A (re)connection succeeded; True when it replaces one that was lost."""
        return self._reconnect.connected(what, channels=self.config.channels)

    def disconnected(self) -> None:
        self._reconnect.disconnected()

    async def healthy(self) -> bool:
        try:
            return bool(await asyncio.wait_for(self.probe.ping(), PROBE_TIMEOUT))
        except (RedisError, OSError, TimeoutError):
            await self.reset_probe()
            return False

    async def publish_batch(self, args: tuple[bytes, ...], values: list[bytes]) -> list[Any]:
        """``args + (value,)`` for every value in one ``MULTI``/``EXEC``: all or none.

        On its own connection (``BatchWriter``), so a large batch neither waits behind nor
        delays ``/hc``. Raises ``SourceError`` when Redis is unreachable.
        """
        c = self.config
        if c.cluster or c.sentinels or c.tls or c.username:
            return await self._publish_with_client(args, values)
        if self._batches is None:
            self._batches = BatchWriter(
                c.host, c.port, password=c.password, db=c.db, timeout=c.timeout * 5
            )
        return await self._batches.multi_exec(args, values)

    async def _publish_with_client(self, args: tuple[bytes, ...], values: list[bytes]) -> list[Any]:
        """The same through redis-py, for the shapes ``BatchWriter`` does not speak (Sentinel,
        TLS, ACL users: one ``MULTI``/``EXEC``; a cluster: one command per event, since its
        channel or stream lives on one slot's master but a cluster has no cross-node
        transaction)."""
        probe = self.probe
        try:
            if isinstance(probe, RedisCluster):
                return [
                    await asyncio.wait_for(probe.execute_command(*args, value), PROBE_TIMEOUT)
                    for value in values
                ]
            pipe = probe.pipeline(transaction=True)
            for value in values:
                pipe.execute_command(*args, value)
            return await asyncio.wait_for(pipe.execute(), self.config.timeout * 5)
        except (RedisError, RedisClusterException, OSError, TimeoutError) as exc:
            await self.reset_probe()
            raise SourceError(f"cannot publish to redis at {self.address}: {exc}") from exc

    async def reset_probe(self) -> None:
        """After a failed or timed-out command the probe may be mid-reply: start afresh."""
        if isinstance(self.probe, aioredis.Redis):  # a cluster client resets its own nodes
            await quietly(self.probe.connection_pool.disconnect())

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._metrics.source_up = 0
        await quietly(self.probe.aclose())
        if self._batches is not None:
            await self._batches.aclose()


async def quietly(awaitable: object) -> None:
    """Await a close call, ignoring errors: the connection is going away anyway."""
    with contextlib.suppress(RedisError, OSError, TimeoutError, RuntimeError):
        await asyncio.wait_for(awaitable, 1.0)  # type: ignore[arg-type]
