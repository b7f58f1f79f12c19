"""The benchmark's smoke mode runs end to end: servers start, subscribers receive everything.

This is the CI check that ``./scripts/bench`` keeps working. It never asserts timings: only that
the JSON report exists, that deliveries happened, and that nothing was lost, duplicated or
reordered (the smoke mode parses every frame strictly, so the wire format is checked too).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server not installed"),
]


def _clean(d: dict[str, Any]) -> None:
    assert d["deliveries"] > 0
    assert d["deliveries"] == d["expected"]
    assert d["lost"] == 0
    assert d["duplicated"] == 0
    assert d["reordered"] == 0
    assert d["strict_errors"] == 0


def _bench(out: Path, *args: str) -> None:
    """Run ``./scripts/bench`` with this interpreter; fail with its output if it fails."""
    proc = subprocess.run(
        [str(ROOT / "scripts" / "bench"), *args, "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=110,
        env={**os.environ, "PLASMA_BENCH_PYTHON": sys.executable},
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


def test_bench_smoke(tmp_path: Path) -> None:
    out = tmp_path / "results"
    _bench(out, "--smoke")
    results = json.loads((out / "results.json").read_text())
    (run,) = results["runs"]
    assert run["target"] == "plasma"
    levels = run["sweep"]["levels"]
    assert levels and levels[0]["subscribers"] == 50
    _clean(levels[0]["burst"])
    _clean(run["sweep"]["rate"])
    assert run["sweep"]["rate"]["latency_ms"]["samples"] == run["sweep"]["rate"]["deliveries"]
    grpc = run["grpc"]
    assert grpc["available"], grpc
    _clean(grpc["burst"])
    _clean(grpc["rate"])
    assert (out / "results.md").exists()


@pytest.mark.skipif(shutil.which("cc") is None, reason="no C compiler for the native client")
def test_native_latency_client(tmp_path: Path) -> None:
    """``--native-latency`` compiles the C client, streams from plasma and accounts for every
    delivery; the kernel's arrival time of a delivery can never be after its read."""
    out = tmp_path / "results"
    _bench(
        out,
        "--native-latency",
        "--keep-deliveries",
        "--rate",
        "50",
        "--rate-seconds",
        "1",
        "--rate-subscribers",
        "20",
    )
    (run,) = json.loads((out / "native-latency.json").read_text())["runs"]
    assert run["target"] == "plasma"
    assert run["connections"] == 20
    assert run["deliveries"] == run["expected"] == 20 * 50
    assert run["lost"] == run["duplicated"] == run["reordered"] == 0
    assert run["fanout"]["events"] == 50
    rows = [tuple(map(int, line.split())) for line in (out / "deliveries-1.txt").open()]
    assert len(rows) == run["deliveries"]
    assert {(seq, conn) for seq, conn, *_ in rows} == {(s, c) for s in range(50) for c in range(20)}
    for _seq, _conn, published, arrived, read in rows:
        assert published < arrived <= read


def test_scale_smoke(tmp_path: Path) -> None:
    """``--scale --smoke``: a few hundred streams from two load-generator processes on two
    loopback addresses, two workers; every broadcast event reaches every stream."""
    out = tmp_path / "results"
    _bench(out, "--scale", "--smoke")
    result = json.loads((out / "scale.json").read_text())
    assert result["connections"] == 300 and result["workers"] == 2
    assert len(result["events"]) == 2
    assert all(e["copies"] == 300 and e["lost"] == 0 for e in result["events"])
    assert result["held"]["pss"] > 0 and result["held"]["rss"] >= result["held"]["pss"]


def test_storm_smoke(tmp_path: Path) -> None:
    """``--storm --smoke``: plasma (redis-stream source) killed under 200 streams and started
    again on its port; every stream comes back and has every event once, in order."""
    out = tmp_path / "results"
    _bench(out, "--storm", "--smoke")
    result = json.loads((out / "storm.json").read_text())
    assert result["connections"] == 200
    assert result["events"] > 0
    assert result["complete_streams"] == result["caught_up"] == 200
    assert result["lost"] == result["duplicated_or_reordered"] == result["errors"] == 0
