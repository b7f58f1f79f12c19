"""Unit tests of the counters, histograms, snapshots, merging and runtime figures."""

from __future__ import annotations

import gc
import os
import subprocess
import sys

import orjson
import pytest

from plasma.metrics import (
    FANOUT_BUCKETS,
    LATENCY_BUCKETS,
    Histogram,
    Metrics,
    RuntimeStats,
    merge_snapshots,
)

# --- histograms ---------------------------------------------------------------------------------


def test_histogram_puts_a_value_equal_to_a_bound_in_that_bucket() -> None:
    h = Histogram((0.1, 1.0))
    for value in (0.05, 0.1, 0.5, 1.0, 7.0):
        h.observe(value)
    assert h.counts == [2, 2, 1]
    snap = h.snapshot()
    assert snap == {
        "bounds": [0.1, 1.0],
        "counts": [2, 2, 1],
        "sum": pytest.approx(8.65),
        "count": 5,
    }


def test_observe_fanout_and_latency_keep_fixed_bucket_counts() -> None:
    m = Metrics()
    m.observe_fanout(0.00002)
    m.observe_fanout(0.00002)
    m.observe_fanout(3.0)  # past the last bound: +Inf
    m.observe_latency(0.0007)
    fanout = m.snapshot()["event_fanout_seconds"]
    assert fanout["bounds"] == list(FANOUT_BUCKETS)
    assert len(fanout["counts"]) == len(FANOUT_BUCKETS) + 1
    assert fanout["counts"][FANOUT_BUCKETS.index(0.000025)] == 2
    assert fanout["counts"][-1] == 1
    assert fanout["count"] == 3
    assert fanout["sum"] == pytest.approx(3.00004)
    latency = m.snapshot()["event_write_latency_seconds"]
    assert latency["counts"][LATENCY_BUCKETS.index(0.001)] == 1
    assert latency["count"] == 1


# --- snapshots ----------------------------------------------------------------------------------


def test_snapshot_is_plain_json_with_the_original_keys() -> None:
    m = Metrics()
    m.connection_opened("sse")
    m.connection_opened("sse")
    m.connection_opened("grpc")
    m.connection_closed("sse", "slow")
    m.events_received = 5
    m.event_skipped("json")
    snap = m.snapshot()
    assert orjson.loads(orjson.dumps(snap)) == snap
    assert snap["connections"] == 2
    assert snap["connections_sse"] == 1
    assert snap["connections_grpc"] == 1
    assert snap["connections_by_transport"] == {"sse": 1, "grpc": 1}
    assert snap["connections_opened"] == {"sse": 2, "grpc": 1}
    assert snap["connections_closed"] == {"sse": {"slow": 1}}
    assert snap["events_skipped"] == 1
    assert snap["events_skipped_by_reason"] == {"json": 1}
    for key in ("python_version", "cpu_num", "memory_rss", "gc_num", "pid", "process"):
        assert key in snap
    assert snap["processes"][0]["pid"] == os.getpid()
    assert snap["workers"] == 1


def test_merge_sums_counters_histograms_and_memory_across_workers() -> None:
    a, b = Metrics(), Metrics()
    a.connection_opened("sse")
    b.connection_opened("sse")
    b.connection_opened("grpc")
    b.connection_closed("grpc", "shutdown")
    a.events_delivered, b.events_delivered = 10, 32
    a.event_skipped("json")
    b.event_skipped("json")
    b.event_skipped("type")
    a.source_up, b.source_up = 1, 0
    a.observe_fanout(0.001)
    b.observe_fanout(0.001)
    b.observe_fanout(0.2)
    sa, sb = a.snapshot(), b.snapshot()
    sb["pid"] = sb["processes"][0]["pid"] = sa["pid"] + 1  # as if another process
    merged = merge_snapshots([sa, sb])
    assert merged["workers"] == 2
    assert merged["connections"] == 2
    assert merged["connections_by_transport"] == {"sse": 2, "grpc": 0}
    assert merged["connections_opened"] == {"sse": 2, "grpc": 1}
    assert merged["connections_closed"] == {"grpc": {"shutdown": 1}}
    assert merged["events_delivered"] == 42
    assert merged["events_skipped_by_reason"] == {"json": 2, "type": 1}
    assert merged["source_up"] == 0  # one worker's source is down
    assert merged["event_fanout_seconds"]["bounds"] == list(FANOUT_BUCKETS)
    assert merged["event_fanout_seconds"]["count"] == 3
    assert sum(merged["event_fanout_seconds"]["counts"]) == 3
    assert merged["memory_rss"] == sa["memory_rss"] + sb["memory_rss"]
    assert merged["process"]["process_resident_memory_bytes"] == (
        sa["process"]["process_resident_memory_bytes"]
        + sb["process"]["process_resident_memory_bytes"]
    )
    assert merged["python_version"] == sa["python_version"]
    assert merged["pid"] == sa["pid"]  # the answering process's; all are in "processes"
    assert [p["pid"] for p in merged["processes"]] == [sa["pid"], sb["pid"]]
    assert merged["uptime_seconds"] == max(sa["uptime_seconds"], sb["uptime_seconds"])
    assert merge_snapshots([sa]) == sa


def test_merge_refuses_histograms_with_different_bounds() -> None:
    sa, sb = Metrics().snapshot(), Metrics().snapshot()
    sb["event_fanout_seconds"]["bounds"] = [1.0]
    with pytest.raises(ValueError, match="bucket bounds"):
        merge_snapshots([sa, sb])
    with pytest.raises(ValueError):
        merge_snapshots([])


# --- runtime figures ---------------------------------------------------------------------------


async def test_runtime_snapshot_keeps_the_original_runtime_neutral_keys() -> None:
    """Dashboards built on the original read these keys; Go-only ones get Python siblings."""
    runtime = RuntimeStats()
    runtime.start()
    try:
        gc.collect()
        snapshot = runtime.snapshot()
    finally:
        runtime.stop()
    neutral = [
        "cpu_num", "memory_alloc", "memory_total_alloc", "memory_sys", "memory_lookups",
        "memory_mallocs", "memory_frees", "memory_stack", "heap_alloc", "heap_sys", "heap_idle",
        "heap_inuse", "heap_released", "heap_objects", "gc_next", "gc_last", "gc_num",
        "gc_per_second", "gc_pause_per_second", "gc_pause",
    ]  # fmt: skip
    assert [k for k in neutral if k not in snapshot] == []
    assert snapshot["memory_sys"] > 0 and snapshot["heap_objects"] > 0
    assert snapshot["gc_last"] > 0 and snapshot["gc_pause"], "gc.collect() above was timed"
    assert {"python_version", "os", "arch", "thread_num"} <= snapshot.keys()


def test_reading_the_gc_rate_does_not_reset_it() -> None:
    """/metrics, the sender and sibling workers all read: each sees the same window."""
    runtime = RuntimeStats()
    for _ in range(3):
        gc.collect()
    first, second = runtime.snapshot(), runtime.snapshot()
    assert first["gc_per_second"] > 0
    assert second["gc_per_second"] > 0, "the first read must not restart the window"
    assert second["gc_num"] >= first["gc_num"] >= 3


async def test_collections_are_timed_only_while_started() -> None:
    runtime = RuntimeStats()
    gc.collect()
    assert runtime.snapshot()["gc_pause"] == [], "nothing is installed before start()"
    runtime.start()
    gc.collect()
    runtime.stop()
    timed = runtime.snapshot()["gc_pause"]
    assert timed
    gc.collect()
    assert runtime.snapshot()["gc_pause"] == timed, "stop() removed the GC callback"


def test_importing_plasma_installs_nothing() -> None:
    """No GC callback (or anything else) is installed by importing the server's modules."""
    code = (
        "import gc; before = list(gc.callbacks); "
        "import plasma.cli, plasma.server, plasma.metrics; "
        "assert gc.callbacks == before, gc.callbacks"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
