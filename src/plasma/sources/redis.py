"""The Redis pub/sub source: subscribe to the configured channels and feed every message to the hub.

Connection lifecycle: connect, subscribe to every remembered channel, read until the connection
fails; then wait ``retry_interval`` and do it again. ``max_retry`` consecutive failures either
stop the server (``die``) or are logged and the count starts over (``alive``). Reads block on the
socket (``get_message`` with a timeout only to wake up), so an idle channel costs nothing and the
first event after a quiet minute arrives as fast as any other.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from plasma.config import RedisConfig
from plasma.errors import SourceError, SourceGaveUp
from plasma.metrics import Metrics

if TYPE_CHECKING:
    from plasma.hub import Hub

__all__ = ["RedisSource"]

log = logging.getLogger("plasma.sources.redis")

# /hc must answer within a second even when Redis hangs.
_PROBE_TIMEOUT = 0.8


class RedisSource:
    """Reads ``config.channels`` over one pub/sub connection; pings over a second one."""

    name = "redis"

    def __init__(self, config: RedisConfig, metrics: Metrics) -> None:
        self._config = config
        self._metrics = metrics
        self._failures = 0
        self._probe = self._client(timeout=_PROBE_TIMEOUT)
        self._closed = False

    def _client(self, timeout: float | None) -> aioredis.Redis:
        c = self._config
        return aioredis.Redis(
            host=c.host,
            port=c.port,
            password=c.password or None,
            db=c.db,
            socket_connect_timeout=min(c.timeout, _PROBE_TIMEOUT) if timeout else c.timeout,
            socket_timeout=timeout,
            socket_keepalive=True,
            retry_on_timeout=False,
            # Reconnects are this module's job (die/alive policy, metrics), not redis-py's.
            retry=Retry(NoBackoff(), 0),
        )

    @property
    def address(self) -> str:
        return f"{self._config.host}:{self._config.port}"

    async def run(self, hub: Hub) -> None:
        c = self._config
        while True:
            try:
                await self._listen(hub)
            except (RedisError, OSError, SourceError) as exc:
                if _cancel_requested():
                    raise asyncio.CancelledError from exc
                self._metrics.source_up = 0
                self._failures += 1
                log.warning(
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
                    log.error(
                        "redis source still unreachable; keeping on retrying (alive)",
                        extra={"addr": self.address, "failures": self._failures},
                    )
                    self._failures = 0
                await asyncio.sleep(c.retry_interval)

    async def _listen(self, hub: Hub) -> None:
        c = self._config
        client = self._client(timeout=None)
        pubsub = client.pubsub(ignore_subscribe_messages=True)
        try:
            await asyncio.wait_for(pubsub.subscribe(*c.channels), timeout=c.timeout * 5)
            if _cancel_requested():
                raise asyncio.CancelledError
            self._on_connected("subscribed")
            publish = hub.publish_raw
            get_message = pubsub.get_message
            while True:
                message = await get_message(ignore_subscribe_messages=True, timeout=c.timeout)
                if message is None:
                    continue
                if message["type"] in ("message", "pmessage"):
                    channel = message["channel"]
                    publish(message["data"], channel.decode("utf-8", "replace"))
        except TimeoutError as exc:
            raise SourceError(f"redis at {self.address} did not answer SUBSCRIBE") from exc
        finally:
            self._metrics.source_up = 0
            await _quietly(pubsub.aclose())  # type: ignore[no-untyped-call]
            await _quietly(client.aclose())

    def _on_connected(self, what: str) -> None:
        """A (re)connection succeeded: the retry budget starts over."""
        if self._failures:
            self._metrics.source_reconnects += 1
        self._failures = 0
        self._metrics.source_up = 1
        log.info(
            f"{self.name} source {what}",
            extra={"addr": self.address, "channels": self._config.channels},
        )

    async def healthy(self) -> bool:
        try:
            return bool(await asyncio.wait_for(self._probe.ping(), _PROBE_TIMEOUT))
        except (RedisError, OSError, TimeoutError):
            # A timed-out command leaves the connection mid-reply: start afresh next time.
            await _quietly(self._probe.connection_pool.disconnect())
            return False

    async def publish(self, raw: bytes) -> None:
        try:
            await asyncio.wait_for(
                self._probe.publish(self._config.channels[0], raw), _PROBE_TIMEOUT
            )
        except (RedisError, OSError, TimeoutError) as exc:
            await _quietly(self._probe.connection_pool.disconnect())
            raise SourceError(f"cannot publish to redis at {self.address}: {exc}") from exc

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._metrics.source_up = 0
        await _quietly(self._probe.aclose())


def _cancel_requested() -> bool:
    """Whether this task was asked to stop, even if ``asyncio.wait_for`` ate the CancelledError.

    Python 3.11's ``wait_for`` returns (or raises) the inner call's outcome when a cancellation
    lands just as that call finishes (gh-86296, fixed in 3.12). A shutdown that cancelled the
    source during a refused connect then left it retrying forever, and the server never exited.
    """
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


async def _quietly(awaitable: object) -> None:
    """Await a close call, ignoring errors: the connection is going away anyway."""
    with contextlib.suppress(RedisError, OSError, TimeoutError, RuntimeError):
        await asyncio.wait_for(awaitable, 1.0)  # type: ignore[arg-type]
