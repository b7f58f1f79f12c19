"""What both Redis sources share: clients, the reconnect loop with its die/alive policy, the probe.

Connection lifecycle: ``listen`` connects and reads until the connection fails; then wait
``retry_interval`` and do it again. ``max_retry`` consecutive failures either stop the server
(``die``) or are logged and the count starts over (``alive``). A second, short-timeout client
(the *probe*) answers ``/hc`` without touching the reading one, and a third (``BatchWriter``)
publishes batches (the publish API, ``/debug``) in ``MULTI``/``EXEC`` transactions.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from plasma.config import RedisConfig
from plasma.errors import SourceError, SourceGaveUp
from plasma.metrics import Metrics
from plasma.sources.redis_batch import BatchWriter

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
        self._log = log
        self._failures = 0
        self.probe = self.client(timeout=PROBE_TIMEOUT)
        """A short-timeout client for health checks and single commands."""
        self._batches: BatchWriter | None = None
        self._closed = False

    def client(self, timeout: float | None) -> aioredis.Redis:
        """A new client; ``timeout`` None blocks on reads (the reading connection)."""
        c = self.config
        return aioredis.Redis(
            host=c.host,
            port=c.port,
            password=c.password or None,
            db=c.db,
            socket_connect_timeout=min(c.timeout, PROBE_TIMEOUT) if timeout else c.timeout,
            socket_timeout=timeout,
            socket_keepalive=True,
            retry_on_timeout=False,
            # Reconnects are this module's job (die/alive policy, metrics), not redis-py's.
            retry=Retry(NoBackoff(), 0),
        )

    @property
    def address(self) -> str:
        return f"{self.config.host}:{self.config.port}"

    async def run(self, listen: Callable[[], Awaitable[None]]) -> None:
        """Call ``listen`` again after every connection failure; raise ``SourceGaveUp`` to stop."""
        c = self.config
        while True:
            try:
                await listen()
            except (RedisError, OSError, SourceError) as exc:
                if cancel_requested():
                    raise asyncio.CancelledError from exc
                self._metrics.source_up = 0
                self._failures += 1
                self._log.warning(
                    "redis source connection failed; retrying",
                    extra={
                        "addr": self.address,
                        "error": str(exc) or type(exc).__name__,
                        "failures": self._failures,
                        "retry_in_seconds": c.retry_interval,
                    },
                )
                if self._failures >= c.max_retry:
                    if c.over_max_retry == "die":
                        raise SourceGaveUp(
                            f"redis at {self.address} failed {self._failures} times in a row "
                            f"(PLASMA_SUBSCRIBER_REDIS_MAX_RETRY={c.max_retry}, "
                            "PLASMA_SUBSCRIBER_REDIS_OVER_MAX_RETRY_BEHAVIOR=die)"
                        ) from exc
                    self._log.error(
                        "redis source still unreachable; keeping on retrying (alive)",
                        extra={"addr": self.address, "failures": self._failures},
                    )
                    self._failures = 0
                await asyncio.sleep(c.retry_interval)

    def connected(self, what: str) -> None:
        """A (re)connection succeeded: the retry budget starts over."""
        if self._failures:
            self._metrics.source_reconnects += 1
        self._failures = 0
        self._metrics.source_up = 1
        self._log.info(
            f"{self.name} source {what}",
            extra={"addr": self.address, "channels": self.config.channels},
        )

    def disconnected(self) -> None:
        self._metrics.source_up = 0

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
        if self._batches is None:
            c = self.config
            self._batches = BatchWriter(
                c.host, c.port, password=c.password, db=c.db, timeout=c.timeout * 5
            )
        return await self._batches.multi_exec(args, values)

    async def reset_probe(self) -> None:
        """After a failed or timed-out command the probe may be mid-reply: start afresh."""
        await quietly(self.probe.connection_pool.disconnect())

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._metrics.source_up = 0
        await quietly(self.probe.aclose())
        if self._batches is not None:
            await self._batches.aclose()


def cancel_requested() -> bool:
    """Whether this task was asked to stop, even if ``asyncio.wait_for`` ate the CancelledError.

    Python 3.11's ``wait_for`` returns (or raises) the inner call's outcome when a cancellation
    lands just as that call finishes (gh-86296, fixed in 3.12). A shutdown that cancelled the
    source during a refused connect then left it retrying forever, and the server never exited.
    """
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


async def quietly(awaitable: object) -> None:
    """Await a close call, ignoring errors: the connection is going away anyway."""
    with contextlib.suppress(RedisError, OSError, TimeoutError, RuntimeError):
        await asyncio.wait_for(awaitable, 1.0)  # type: ignore[arg-type]
