"""Counters the hot path bumps as plain integers, and the snapshot every exporter reads.

Plain attribute increments cost tens of nanoseconds; exporters (the JSON endpoint, the
Prometheus exposition, the periodic sender) only read ``Metrics.snapshot()``, a dict of plain
numbers, lists and dicts, so nothing on the fan-out path calls into an exporter. Snapshots of
several worker processes are summed with ``merge_snapshots`` into one for the whole server.
"""

from __future__ import annotations

import asyncio
import ctypes
import gc
import os
import platform
import resource
import sys
import threading
import time
from bisect import bisect_left
from collections import Counter, deque
from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import ProcessCollector

from plasma import __version__

__all__ = [
    "FANOUT_BUCKETS",
    "GAUGES",
    "LATENCY_BUCKETS",
    "TRANSPORTS",
    "Histogram",
    "Metrics",
    "RuntimeStats",
    "merge_snapshots",
]

TRANSPORTS = ("sse", "grpc")
"""Transports reported even before their first connection, so their series always exist."""

GAUGES = ("history_events", "history_bytes", "client_buffered_bytes", "source_queue_bytes")
"""Figures read from their owners when a snapshot is taken (``Metrics.gauge``); 0 until then."""

# Fan-out of one event: ~10 us for a handful of subscribers, tens of ms for 100k.
FANOUT_BUCKETS: tuple[float, ...] = (
    0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005,
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
)  # fmt: skip
# From the hub receiving an event to its bytes being handed to the socket.
LATENCY_BUCKETS: tuple[float, ...] = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005,
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
)  # fmt: skip


class Histogram:
    """Fixed-bucket counts in a plain list: ``observe`` is one bisect and two additions."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last slot is +Inf
        self.total = 0.0

    def observe(self, value: float) -> None:
        # bisect_left puts a value equal to a bound in that bound's bucket (Prometheus "le").
        self.counts[bisect_left(self.bounds, value)] += 1
        self.total += value

    def snapshot(self) -> dict[str, Any]:
        """Per-bucket (not cumulative) counts; the exposition accumulates them."""
        counts = list(self.counts)
        return {
            "bounds": list(self.bounds),
            "counts": counts,
            "sum": self.total,
            "count": sum(counts),
        }


class Metrics:
    """One process's counters: events in, skipped, delivered, dropped; connections; source."""

    def __init__(self) -> None:
        self.started = time.time()
        self.events_received = 0
        self.events_delivered = 0
        self.events_dropped = 0
        self.events_skipped: Counter[str] = Counter()
        self.events_published_debug = 0
        self.events_published_api = 0
        """Events the publish API handed to the source (every event of each accepted batch)."""
        self.publish_rejected: Counter[str] = Counter()
        """Publish API requests refused, by HTTP status (``"400"``, ``"413"``, ``"503"``...)."""
        self.bytes_written = 0
        self.connections: Counter[str] = Counter()
        self.connections_opened: Counter[str] = Counter()
        self.connections_closed: Counter[tuple[str, str]] = Counter()
        self.clients_dropped: Counter[str] = Counter()
        self._source_up = 0
        self.source_changed: Callable[[], None] | None = None
        """Called when ``source_up`` changes: the health monitor probes at once."""
        self.auth_failures: Counter[str] = Counter()
        """Requests refused by access control, by reason (``plasma.auth.errors.REASONS``)."""
        self.source_reconnects = 0
        self.source_gaps = 0
        """Times the source announced lost events (a pub/sub subscription was re-made)."""
        self.gaps_sent = 0
        """Gap events sent to clients: after a source gap, and on resumes that lost events."""
        self.source_queue_full = 0
        """Times reading from the source paused because the ingest queue was full."""
        self._gauges: dict[str, Callable[[], int]] = {}
        self.fanout = Histogram(FANOUT_BUCKETS)
        self.latency = Histogram(LATENCY_BUCKETS)
        self.runtime = RuntimeStats()
        """Runtime figures; the server starts and stops their sampling."""

    @property
    def source_up(self) -> int:
        """1 while the source is connected to its broker (set by the source)."""
        return self._source_up

    @source_up.setter
    def source_up(self, value: int) -> None:
        if value != self._source_up:
            self._source_up = value
            if self.source_changed is not None:
                self.source_changed()

    def gauge(self, name: str, read: Callable[[], int]) -> None:
        """Have snapshots report ``read()`` as ``name`` (one of ``GAUGES``): nothing to update."""
        self._gauges[name] = read

    def event_skipped(self, reason: str) -> None:
        self.events_skipped[reason] += 1

    def connection_opened(self, transport: str) -> None:
        self.connections[transport] += 1
        self.connections_opened[transport] += 1

    def connection_closed(self, transport: str, reason: str = "client") -> None:
        self.connections[transport] -= 1
        self.connections_closed[transport, reason] += 1

    def observe_fanout(self, seconds: float) -> None:
        """Record the time one event's fan-out took (called once per event)."""
        fanout = self.fanout
        fanout.counts[bisect_left(fanout.bounds, seconds)] += 1
        fanout.total += seconds

    def observe_latency(self, seconds: float) -> None:
        """Record the time from an event's arrival to its write (called once per flush)."""
        latency = self.latency
        latency.counts[bisect_left(latency.bounds, seconds)] += 1
        latency.total += seconds

    @property
    def connection_count(self) -> int:
        return sum(self.connections.values())

    def snapshot(self) -> dict[str, Any]:
        """Plain data (JSON-safe, mergeable): the body of ``GET /metrics`` as JSON."""
        now = time.time()
        by_transport = {t: self.connections[t] for t in TRANSPORTS} | dict(self.connections)
        opened = {t: self.connections_opened[t] for t in TRANSPORTS} | dict(self.connections_opened)
        closed: dict[str, dict[str, int]] = {}
        for (transport, reason), n in self.connections_closed.items():
            closed.setdefault(transport, {})[reason] = n
        uptime = round(now - self.started, 3)
        out: dict[str, Any] = dict(
            version=__version__,
            workers=1,
            connections=self.connection_count,
            connections_sse=self.connections["sse"],
            connections_grpc=self.connections["grpc"],
            connections_by_transport=by_transport,
            connections_opened=opened,
            connections_closed=closed,
            events_received=self.events_received,
            events_delivered=self.events_delivered,
            events_dropped=self.events_dropped,
            events_skipped=sum(self.events_skipped.values()),
            events_skipped_by_reason=dict(self.events_skipped),
            events_published_debug=self.events_published_debug,
            events_published_api=self.events_published_api,
            publish_rejected=sum(self.publish_rejected.values()),
            publish_rejected_by_status=dict(self.publish_rejected),
            bytes_written=self.bytes_written,
            clients_dropped=sum(self.clients_dropped.values()),
            clients_dropped_by_reason=dict(self.clients_dropped),
            auth_failures=sum(self.auth_failures.values()),
            auth_failures_by_reason=dict(self.auth_failures),
            source_up=self.source_up,
            source_reconnects=self.source_reconnects,
            source_gaps=self.source_gaps,
            gaps_sent=self.gaps_sent,
            source_queue_full=self.source_queue_full,
            **{name: self._gauges[name]() if name in self._gauges else 0 for name in GAUGES},
            event_fanout_seconds=self.fanout.snapshot(),
            event_write_latency_seconds=self.latency.snapshot(),
            started=self.started,
            uptime_seconds=uptime,
        )
        out.update(self.runtime.snapshot())
        out["processes"] = [
            {
                "pid": out["pid"],
                "uptime_seconds": uptime,
                "memory_rss": out["memory_rss"],
                "cpu_seconds": round(out["cpu_user_seconds"] + out["cpu_system_seconds"], 3),
                "connections": out["connections"],
                "source_up": self.source_up,
            }
        ]
        return out


# --- merging the snapshots of several worker processes --------------------------------------

_SAME = frozenset(
    {"bounds", "version", "python_version", "python_implementation", "os", "arch",
     "cpu_num", "process_max_fds"}
)  # fmt: skip
"""Figures every process shares: kept when all agree, ``None`` when they differ."""
_MIN = frozenset({"source_up", "started", "process_start_time_seconds"})
"""``source_up`` is 1 only when every worker's source is up; start times take the earliest."""
_MAX = frozenset({"uptime_seconds", "gc_last"})
_FIRST = frozenset({"pid"})
"""The answering process's own pid: callers put their own snapshot first."""
_CONCAT = frozenset({"processes", "gc_pause"})


def merge_snapshots(snapshots: list[dict[str, Any]]) -> dict[str, Any]:
    """Sum the snapshots of several processes into one for the whole server.

    Counters, gauges, histogram buckets and memory/CPU figures are summed; figures all
    processes share are kept; ``source_up`` is the minimum (1 only if every worker's source is
    up); ``pid`` is the first snapshot's (put the answering process's own first);
    ``processes`` lists every process's own figures.
    """
    if not snapshots:
        raise ValueError("merge_snapshots needs at least one snapshot")
    if len(snapshots) == 1:
        return snapshots[0]
    return _merge_dicts(snapshots)


def _merge_dicts(dicts: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    keys: dict[str, None] = {}
    for d in dicts:
        keys.update(dict.fromkeys(d))
    for key in keys:
        values = [d[key] for d in dicts if key in d]
        out[key] = _merge_values(key, values)
    return out


def _merge_values(key: str, values: list[Any]) -> Any:
    present = [v for v in values if v is not None]
    if not present:
        return None
    if key in _CONCAT:
        return [item for v in present for item in v]
    if key in _SAME:
        first = present[0]
        if all(v == first for v in present):
            return first
        if key == "bounds":
            raise ValueError("cannot merge histograms with different bucket bounds")
        return None
    if key in _FIRST:
        return present[0]
    if key in _MIN:
        return min(present)
    if key in _MAX:
        return max(present)
    first = present[0]
    if isinstance(first, dict):
        return _merge_dicts([v for v in present if isinstance(v, dict)])
    if isinstance(first, list):
        return _sum_lists(present)
    if isinstance(first, bool) or not isinstance(first, int | float):
        return first if all(v == first for v in present) else None
    total = sum(present)
    return round(total, 6) if isinstance(total, float) else total


def _sum_lists(lists: Iterable[list[Any]]) -> list[Any]:
    out: list[Any] = []
    for values in lists:
        if len(values) > len(out):
            out.extend([0] * (len(values) - len(out)))
        for i, v in enumerate(values):
            out[i] += v
    return out


# --- runtime figures ---------------------------------------------------------------------------


class _GCWatch:
    """Times every cyclic-GC pass (``gc.callbacks``): Go's PauseNs and LastGC, for Python."""

    def __init__(self) -> None:
        self.started = 0.0
        self.last_end_ns = 0
        self.paused = 0.0
        self.pauses: deque[float] = deque(maxlen=256)

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self.started = time.perf_counter()
            return
        pause = time.perf_counter() - self.started
        self.paused += pause
        self.pauses.append(pause)
        self.last_end_ns = time.time_ns()


class RuntimeStats:
    """Python's nearest equivalents of the Go runtime figures in the original's table.

    ``start`` (called by the server) installs the GC timer and samples the collection count
    every ``interval`` seconds; ``gc_per_second`` and ``gc_pause_per_second`` are rates over
    the last ``window`` seconds of samples, so they do not depend on who reads them or how
    often (``/metrics``, the metrics sender and sibling workers all read). Before ``start``
    the rates cover the time since construction and no pause is timed. ``stop`` undoes both.
    """

    def __init__(self, *, interval: float = 1.0, window: float = 10.0) -> None:
        self.interval = interval
        self._gc = _GCWatch()
        self._process = ProcessCollector(registry=None)
        self._samples: deque[tuple[float, int, float]] = deque(
            [self._sample()], maxlen=max(2, round(window / interval) + 1)
        )
        self._timer: asyncio.TimerHandle | None = None

    def start(self) -> None:
        """Time every collection and sample the counts on the running loop."""
        if self._timer is not None:
            return
        gc.callbacks.append(self._gc)
        self._timer = asyncio.get_running_loop().call_later(self.interval, self._tick)

    def stop(self) -> None:
        if self._timer is None:
            return
        self._timer.cancel()
        self._timer = None
        if self._gc in gc.callbacks:
            gc.callbacks.remove(self._gc)

    def _sample(self) -> tuple[float, int, float]:
        collections = sum(s["collections"] for s in gc.get_stats())
        return time.monotonic(), collections, self._gc.paused

    def _tick(self) -> None:
        self._samples.append(self._sample())
        self._timer = asyncio.get_running_loop().call_later(self.interval, self._tick)

    def snapshot(self) -> dict[str, Any]:
        """The figures now; reading changes nothing."""
        usage = resource.getrusage(resource.RUSAGE_SELF)
        stats = gc.get_stats()
        now, collections, paused = self._sample()
        since, collections_then, paused_then = self._samples[0]
        elapsed = max(now - since, 1e-9)
        gc_per_second = (collections - collections_then) / elapsed
        pause_per_second = (paused - paused_then) / elapsed
        heap = _malloc_figures()
        rss, max_rss = _resident_bytes()
        threshold, count = gc.get_threshold()[0], gc.get_count()[0]
        watch = self._gc
        return {
            "python_version": platform.python_version(),
            "python_implementation": platform.python_implementation(),
            "os": sys.platform,
            "arch": platform.machine(),
            "cpu_num": os.cpu_count() or 1,
            "thread_num": threading.active_count(),
            "pid": os.getpid(),
            "memory_rss": rss,
            "memory_max_rss": max_rss,
            "cpu_user_seconds": usage.ru_utime,
            "cpu_system_seconds": usage.ru_stime,
            # The original's runtime-neutral keys, with CPython's nearest measure; null where
            # CPython keeps no such figure (cumulative allocation counts, memory returned to
            # the OS).
            "memory_alloc": heap["in_use"],
            "memory_total_alloc": None,
            "memory_sys": rss,
            "memory_lookups": 0,
            "memory_mallocs": None,
            "memory_frees": None,
            "memory_stack": _stack_bytes(),
            "heap_alloc": heap["in_use"],
            "heap_sys": heap["system"],
            "heap_idle": heap["free"],
            "heap_inuse": heap["in_use"],
            "heap_released": None,
            "heap_objects": sys.getallocatedblocks(),
            "gc_next": max(0, threshold - count),
            "gc_last": watch.last_end_ns,
            "gc_num": collections,
            "gc_per_second": round(gc_per_second, 3),
            "gc_pause_per_second": round(pause_per_second, 6),
            "gc_pause": [round(p * 1000, 4) for p in watch.pauses],
            "gc_generations": [s["collections"] for s in stats],
            "gc_counts": list(gc.get_count()),
            "open_fds": _open_fds(),
            "process": _process_figures(self._process.collect),
        }


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena", "ordblks", "smblks", "hblks", "hblkhd",
            "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost",
        )
    ]  # fmt: skip


def _malloc_figures() -> dict[str, int | None]:
    """glibc's allocator figures (``mallinfo2``): Python's heap as the C allocator sees it."""
    try:
        mallinfo2 = ctypes.CDLL(None).mallinfo2
    except (AttributeError, OSError):
        return {"in_use": None, "free": None, "system": None}
    mallinfo2.restype = _MallInfo2
    info = mallinfo2()
    return {
        "in_use": int(info.uordblks + info.hblkhd),
        "free": int(info.fordblks),
        "system": int(info.arena + info.hblkhd),
    }


def _stack_bytes() -> int | None:
    try:
        with open("/proc/self/status", "rb") as f:
            for line in f:
                if line.startswith(b"VmStk:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _process_figures(collect: Callable[[], Iterable[Any]]) -> dict[str, float]:
    """prometheus-client's process collector, flattened to ``{sample name: value}``."""
    return {s.name: s.value for family in collect() for s in family.samples}


def _resident_bytes() -> tuple[int, int]:
    """Resident memory now and at its peak, from one read of ``/proc/self/status``.

    One source, so the peak is never below the current figure: ``ru_maxrss`` lags the kernel's
    own counters and also counts the parent's memory from before ``exec``.
    """
    figures: dict[bytes, int] = {}
    try:
        with open("/proc/self/status", "rb") as f:
            for line in f:
                if line.startswith((b"VmRSS:", b"VmHWM:")):
                    figures[line[:5]] = int(line.split()[1]) * 1024
    except OSError:
        pass
    if len(figures) < 2:  # no procfs: the peak is all getrusage knows
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        return peak, peak
    return figures[b"VmRSS"], figures[b"VmHWM"]


def _open_fds() -> int | None:
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:
        return None
