"""The periodic metrics sender: ``PLASMA_METRICS_TYPE=log|syslog``.

Every ``PLASMA_METRICS_INTERVAL`` the sender takes a snapshot; every
``PLASMA_METRICS_LOG_INTERVAL`` (or ``..._SYSLOG_INTERVAL``) it writes the latest one as a
single JSON line: to the log target behind a Go ``log`` header (prefix and flags), or to
syslog. It runs in its own tasks and never raises into the server; a failing target is
logged once.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import sys
import time
from collections.abc import Awaitable, Callable
from typing import IO, Any

import orjson

from plasma.config import MetricsConfig
from plasma.errors import StartupError
from plasma.exporters.golog import format_go_log_line
from plasma.exporters.syslog import SyslogWriter
from plasma.logging import open_log_stream

__all__ = ["MetricsSender", "SnapshotSource", "metrics_line"]

log = logging.getLogger("plasma.metrics")

SnapshotSource = Callable[[], "dict[str, Any] | Awaitable[dict[str, Any]]"]
"""Returns the snapshot to send: ``Metrics.snapshot`` or a merge across worker processes."""

# Bulky or per-process parts of a snapshot that a one-line summary leaves out.
_LEFT_OUT = frozenset({"processes", "process", "gc_counts", "gc_generations", "started"})


def metrics_line(snapshot: dict[str, Any]) -> str:
    """A snapshot as one compact JSON line; histograms keep only their count and sum."""
    out: dict[str, Any] = {}
    for key, value in snapshot.items():
        if key in _LEFT_OUT:
            continue
        if isinstance(value, dict) and "bounds" in value:
            value = {"count": value.get("count", 0), "sum": round(value.get("sum", 0.0), 6)}
        out[key] = value
    return orjson.dumps(out).decode()


class MetricsSender:
    """Owns the sampling and writing tasks and the log stream or syslog connection."""

    def __init__(self, config: MetricsConfig, snapshot: SnapshotSource) -> None:
        self._config = config
        self._snapshot = snapshot
        self._tasks: list[asyncio.Task[None]] = []
        self._stream: IO[str] | None = None
        self._own_stream = False
        self._syslog: SyslogWriter | None = None
        self._closed = False
        self._write_failing = False
        self._action_failed = False
        self.latest: dict[str, Any] | None = None
        self.lines = 0

    @property
    def enabled(self) -> bool:
        return self._config.type != ""

    def start(self) -> None:
        """Open the target and start the tasks; a bad target raises ``StartupError``."""
        config = self._config
        if not self.enabled or self._tasks or self._closed:
            return
        if config.type == "log":
            self._stream = open_log_stream(config.log_out, "PLASMA_METRICS_LOG_OUT")
            self._own_stream = self._stream not in (sys.stdout, sys.stderr)
            interval = config.log_interval
        else:
            try:
                self._syslog = SyslogWriter(
                    network=config.syslog_network,
                    addr=config.syslog_addr,
                    tag=config.syslog_tag,
                    priority=config.syslog_facility * 8 + config.syslog_severity,
                )
            except ValueError as exc:
                raise StartupError(str(exc)) from exc
            interval = config.syslog_interval
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._every(config.interval, self._sample, first_now=True)),
            loop.create_task(self._every(interval, self._send)),
        ]
        log.info(
            "metrics sender started",
            extra={"type": config.type, "interval": config.interval, "send_interval": interval},
        )

    async def _every(
        self, interval: float, action: Callable[[], Awaitable[None]], *, first_now: bool = False
    ) -> None:
        # A fixed schedule: a slow send does not make the following ones drift.
        loop = asyncio.get_running_loop()
        due = loop.time() if first_now else loop.time() + interval
        while True:
            await asyncio.sleep(max(0.0, due - loop.time()))
            due += interval
            if due < loop.time():  # fell behind (a suspended process): skip, don't burst
                due = loop.time() + interval
            try:
                await action()
            except Exception:  # a bug here must not silence metrics for good, nor spam
                if not self._action_failed:
                    self._action_failed = True
                    log.exception("metrics sender failed; it keeps trying")

    async def _sample(self) -> None:
        try:
            result = self._snapshot()
            if inspect.isawaitable(result):
                result = await result
            self.latest = result
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("metrics sampling failed")

    async def _send(self) -> None:
        if self.latest is None:
            return
        line = metrics_line(self.latest)
        if self._syslog is not None:
            if await self._syslog.send(line):
                self.lines += 1
            return
        config = self._config
        text = format_go_log_line(
            config.log_prefix, config.log_flag, line, now=time.time(), caller=_CALLER
        )
        try:
            assert self._stream is not None
            self._stream.write(text)
            self._stream.flush()
        except (OSError, ValueError) as exc:
            if not self._write_failing:
                self._write_failing = True
                log.warning(
                    "cannot write metrics log", extra={"out": config.log_out, "error": str(exc)}
                )
            return
        self._write_failing = False
        self.lines += 1

    async def aclose(self) -> None:
        """Stop the tasks and close the target; idempotent."""
        if self._closed:
            return
        self._closed = True
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._syslog is not None:
            await self._syslog.aclose()
        if self._stream is not None and self._own_stream:
            with contextlib.suppress(OSError):
                self._stream.close()
        self._stream = None


# What Go's Llongfile/Lshortfile print: the file and line that write the metrics line.
_CALLER = (__file__, MetricsSender._send.__code__.co_firstlineno)
