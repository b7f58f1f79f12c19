"""The reconnect policy every broker source follows, and the gap rule of live (pub/sub) sources.

A source's ``listen`` connects, subscribes, calls ``Reconnect.connected`` and reads until the
connection fails. ``Reconnect.run`` then decides what comes next:

- a connection that *was* up and is lost is retried at once: a broker restart or a dropped
  socket is usually over by then, and every moment unsubscribed loses pub/sub messages;
- a failed attempt waits ``retry_interval`` before the next one;
- ``max_retry`` failures in a row either stop the server (``die``: the last failure is logged
  as "giving up") or are logged and the count starts over (``alive``).

``connected`` returns whether this connection replaces one that was lost: a pub/sub source then
calls ``Hub.announce_gap``, since what was published in between is gone for good.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Protocol

from plasma.errors import SourceError, SourceGaveUp
from plasma.metrics import Metrics

__all__ = ["Reconnect", "RetryPolicy", "cancel_requested"]


class RetryPolicy(Protocol):
    """The retry settings (``PLASMA_SUBSCRIBER_REDIS_RETRY_INTERVAL`` and its siblings)."""

    @property
    def retry_interval(self) -> float: ...
    @property
    def max_retry(self) -> int: ...
    @property
    def over_max_retry(self) -> str: ...


class Reconnect:
    """One source's connection state: failures in a row, up/down, and whether it was ever up."""

    def __init__(
        self,
        policy: RetryPolicy,
        metrics: Metrics,
        *,
        name: str,
        address: str,
        log: logging.Logger,
        errors: tuple[type[BaseException], ...] = (),
    ) -> None:
        self.policy = policy
        self.name = name
        self.address = address
        self._metrics = metrics
        self._log = log
        self._errors: tuple[type[BaseException], ...] = (OSError, SourceError, *errors)
        self._failures = 0
        self._up = False
        self._ever_up = False

    async def run(self, listen: Callable[[], Awaitable[None]]) -> None:
        """Call ``listen`` again after every failure; raise ``SourceGaveUp`` to stop."""
        p = self.policy
        while True:
            try:
                await listen()
            except self._errors as exc:
                if cancel_requested():
                    raise asyncio.CancelledError from exc
                lost, self._up = self._up, False
                self.disconnected()
                self._failures += 1
                error = str(exc) or type(exc).__name__
                gives_up = self._failures >= p.max_retry and p.over_max_retry == "die"
                wait = 0.0 if lost else p.retry_interval
                if gives_up:
                    self._log.error(
                        f"{self.name} source connection failed; giving up",
                        extra={"addr": self.address, "error": error, "failures": self._failures},
                    )
                    raise SourceGaveUp(
                        f"{self.name} at {self.address} failed {self._failures} times in a row "
                        f"(PLASMA_SUBSCRIBER_REDIS_MAX_RETRY={p.max_retry}, "
                        "PLASMA_SUBSCRIBER_REDIS_OVER_MAX_RETRY_BEHAVIOR=die)"
                    ) from exc
                self._log.warning(
                    f"{self.name} source connection "
                    + ("lost; retrying at once" if lost else "failed; retrying"),
                    extra={
                        "addr": self.address,
                        "error": error,
                        "failures": self._failures,
                        "retry_in_seconds": wait,
                    },
                )
                if self._failures >= p.max_retry:
                    self._log.error(
                        f"{self.name} source still unreachable; keeping on retrying (alive)",
                        extra={"addr": self.address, "failures": self._failures},
                    )
                    self._failures = 0
                await asyncio.sleep(wait)

    def connected(self, what: str, **extra: object) -> bool:
        """A (re)connection succeeded: the retry budget starts over. True if one was lost."""
        again = self._ever_up and not self._up
        if self._failures:
            self._metrics.source_reconnects += 1
        self._failures = 0
        self._up = self._ever_up = True
        self._metrics.source_up = 1
        self._log.info(f"{self.name} source {what}", extra={"addr": self.address, **extra})
        return again

    def disconnected(self) -> None:
        """The connection is down (or closing): ``/metrics`` says so at once."""
        self._metrics.source_up = 0


def cancel_requested() -> bool:
    """Whether this task was asked to stop, even if ``asyncio.wait_for`` ate the CancelledError.

    Python 3.11's ``wait_for`` returns (or raises) the inner call's outcome when a cancellation
    lands just as that call finishes (gh-86296, fixed in 3.12). A shutdown that cancelled the
    source during a refused connect then left it retrying forever, and the server never exited.
    """
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0
