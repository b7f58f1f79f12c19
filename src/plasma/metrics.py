"""Counters the hot path bumps as plain integers, and the JSON that ``GET /metrics`` answers.

Plain attribute increments cost tens of nanoseconds; exporters (the JSON endpoint, the
Prometheus exposition, the periodic sender) read these counters when asked, so nothing on the
fan-out path calls into an exporter.
"""

from __future__ import annotations

import gc
import os
import platform
import resource
import sys
import threading
import time
from collections import Counter
from typing import Any

__all__ = ["Metrics", "runtime_snapshot"]


class Metrics:
    """Process-wide counters: events in, skipped, delivered, and connections by transport."""

    def __init__(self) -> None:
        self.started = time.time()
        self.events_received = 0
        self.events_delivered = 0
        self.events_skipped: Counter[str] = Counter()
        self.events_published_debug = 0
        self.bytes_written = 0
        self.connections: Counter[str] = Counter()
        self.connections_opened: Counter[str] = Counter()
        self.connections_closed: Counter[str] = Counter()
        self.clients_dropped: Counter[str] = Counter()
        self.source_up = 0
        self.source_reconnects = 0

    def event_skipped(self, reason: str) -> None:
        self.events_skipped[reason] += 1

    def connection_opened(self, transport: str) -> None:
        self.connections[transport] += 1
        self.connections_opened[transport] += 1

    def connection_closed(self, transport: str, reason: str = "client") -> None:
        self.connections[transport] -= 1
        self.connections_closed[reason] += 1

    @property
    def connection_count(self) -> int:
        return sum(self.connections.values())

    def snapshot(self) -> dict[str, Any]:
        """The JSON body of ``GET /metrics``: runtime figures plus plasma's counters."""
        out = runtime_snapshot()
        out.update(
            connections=self.connection_count,
            connections_sse=self.connections["sse"],
            connections_grpc=self.connections["grpc"],
            events_received=self.events_received,
            events_delivered=self.events_delivered,
            events_skipped=sum(self.events_skipped.values()),
            events_skipped_by_reason=dict(self.events_skipped),
            bytes_written=self.bytes_written,
            clients_dropped=sum(self.clients_dropped.values()),
            source_up=self.source_up,
            source_reconnects=self.source_reconnects,
            uptime_seconds=round(time.time() - self.started, 3),
        )
        return out


_last_gc: dict[str, float] = {"time": time.monotonic(), "collections": 0.0}


def runtime_snapshot() -> dict[str, Any]:
    """Python's nearest equivalents of the Go runtime figures in the original's table."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    stats = gc.get_stats()
    collections = sum(s["collections"] for s in stats)
    now = time.monotonic()
    elapsed = max(now - _last_gc["time"], 1e-9)
    gc_per_second = (collections - _last_gc["collections"]) / elapsed
    _last_gc.update(time=now, collections=collections)
    return {
        "python_version": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "os": sys.platform,
        "arch": platform.machine(),
        "cpu_num": os.cpu_count() or 1,
        "thread_num": threading.active_count(),
        "pid": os.getpid(),
        "memory_rss": _rss_bytes(),
        "memory_max_rss": usage.ru_maxrss * 1024,
        "cpu_user_seconds": usage.ru_utime,
        "cpu_system_seconds": usage.ru_stime,
        "gc_num": collections,
        "gc_per_second": round(gc_per_second, 3),
        "gc_generations": [s["collections"] for s in stats],
        "gc_counts": list(gc.get_count()),
        "open_fds": _open_fds(),
    }


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * resource.getpagesize()
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _open_fds() -> int | None:
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:
        return None
