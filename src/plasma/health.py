"""One health state per process: what ``/hc`` and ``grpc.health.v1.Health`` both answer.

A health check has to stay cheap and true under load. Probing the broker per request made one
client's 540 checks a second time the probes out, report a healthy node down and open a
hundred broker connections. Here one task probes the source once per ``interval`` (and at once
when the source says its state changed); every ``/hc``, ``Check``, ``List`` and ``Watch``
reads the result, and watchers are told when it changes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from plasma.sources.base import Source

__all__ = ["HealthMonitor"]

log = logging.getLogger("plasma.health")

Listener = Callable[[bool], None]


class HealthMonitor:
    """Probes the source, one probe at a time, and keeps the answer for everyone who asks."""

    def __init__(
        self,
        source: Source,
        *,
        interval: float = 1.0,
        peers_healthy: Callable[[], bool] | None = None,
    ) -> None:
        self.interval = interval
        self.serving = False
        """The last probe's answer (``False`` until the first probe has finished)."""
        self.reason = f"{source.name} source is unreachable"
        """Why the process is not serving, for ``/hc``'s body."""
        self._source = source
        self._peers_healthy = peers_healthy or (lambda: True)
        self._listeners: list[Listener] = []
        self._wake: asyncio.Event | None = None
        self._probed: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._wake = asyncio.Event()
        self._probed = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._run())

    def source_changed(self) -> None:
        """The source connected or lost its broker: probe now instead of at the next interval."""
        if self._wake is not None:
            self._wake.set()

    async def current(self, wait: float = 0.9) -> bool:
        """The health state; right after start, waits (briefly) for the first probe."""
        probed = self._probed
        if probed is not None and not probed.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(probed.wait(), wait)
        return self.serving

    def add_listener(self, listener: Listener) -> None:
        """Call ``listener(serving)`` whenever the state changes."""
        self._listeners.append(listener)

    def remove_listener(self, listener: Listener) -> None:
        with contextlib.suppress(ValueError):
            self._listeners.remove(listener)

    async def _run(self) -> None:
        assert self._wake is not None and self._probed is not None
        while True:
            self._wake.clear()
            serving = await self._source.healthy()
            reason = f"{self._source.name} source is unreachable"
            if serving and not self._peers_healthy():
                serving, reason = False, "a worker's source is unreachable"
            self.reason = reason
            self._probed.set()
            if serving != self.serving:
                self.serving = serving
                log.info("health changed", extra={"serving": serving, "reason": reason})
                for listener in list(self._listeners):
                    listener(serving)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.interval)

    async def aclose(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._listeners.clear()
