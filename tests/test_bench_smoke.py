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
    idle_grpc = run["grpc_idle"]  # real grpcio clients: every stream held, every event received
    assert idle_grpc["connected"] == idle_grpc["requested"] == 4, idle_grpc
    assert idle_grpc["received"] == idle_grpc["expected"] > 0, idle_grpc
    assert idle_grpc["all_receiving"]
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


@pytest.mark.skipif(shutil.which("nats-server") is None, reason="nats-server not installed")
def test_bench_smoke_ingest_and_unicast_on_every_source(tmp_path: Path) -> None:
    """``--ingest`` and ``--unicast`` run on each broker the bench starts; every event reaches
    its one subscriber (its own ``user:<n>`` type for unicast) once and in order."""
    out = tmp_path / "results"
    sources = ["redis", "redis-stream", "redis-cluster", "nats", "nats-jetstream"]
    _bench(out, "--smoke", "--ingest", "--unicast", "--source", ",".join(sources))
    rows = json.loads((out / "ingest.json").read_text())["runs"]
    assert [(r["scenario"], r["source"]) for r in rows] == [
        (scenario, source) for source in sources for scenario in ("ingest", "unicast")
    ]
    for row in rows:
        assert "error" not in row, row
        _clean(row)
        assert row["publisher_errors"] == []
        if row["scenario"] == "ingest":
            assert row["subscribers"] == 1
            assert row["deliveries"] == 2000
        else:
            assert row["subscribers"] == 50
            assert row["deliveries"] == 500


@pytest.mark.skipif(shutil.which("nats-server") is None, reason="nats-server not installed")
def test_bench_smoke_fanout_through_brokers(tmp_path: Path) -> None:
    """The burst scenario through a Redis Cluster and NATS, each with the same subscribers,
    and plasma started by an explicit interpreter (``--plasma-python``, the A/B switch)."""
    out = tmp_path / "results"
    _bench(
        out,
        "--smoke",
        "--scenarios",
        "burst",
        "--source",
        "redis-cluster,nats",
        "--plasma-python",
        sys.executable,
    )
    runs = json.loads((out / "results.json").read_text())["runs"]
    assert [r["label"] for r in runs] == ["plasma redis-cluster", "plasma nats"]
    for run in runs:
        (level,) = run["sweep"]["levels"]
        assert level["subscribers"] == 50
        _clean(level["burst"])


def _nchan_installed() -> bool:
    return shutil.which("nginx") is not None or Path("/usr/sbin/nginx").exists()


def test_bench_smoke_tls(tmp_path: Path) -> None:
    """``--smoke --tls``: plasma (and Nchan where installed) serve every subscriber over TLS
    with the run's own certificate; SSE bursts, the fixed rate and gRPC arrive whole."""
    out = tmp_path / "results"
    with_nchan = ["--against", "nchan"] if _nchan_installed() else []
    _bench(out, "--smoke", "--tls", *with_nchan)
    results = json.loads((out / "results.json").read_text())
    assert results["settings"]["tls"] is True
    runs = {run["target"]: run for run in results["runs"]}
    assert set(runs) == {"plasma", *(["nchan"] if with_nchan else [])}
    for run in runs.values():
        assert run["label"].endswith(" tls")
        (level,) = run["sweep"]["levels"]
        assert level["subscribers"] == 50
        _clean(level["burst"])
        _clean(run["sweep"]["rate"])
    _clean(runs["plasma"]["grpc"]["burst"])
    _clean(runs["plasma"]["grpc"]["rate"])


@pytest.mark.skipif(shutil.which("cc") is None, reason="no C compiler for the native client")
@pytest.mark.skipif(
    not Path("/usr/include/openssl/ssl.h").exists(), reason="no OpenSSL headers (libssl-dev)"
)
def test_native_latency_client_tls(tmp_path: Path) -> None:
    """``--native-latency --tls``: the C client built with OpenSSL reads every delivery over
    TLS; ``--workers 1,2 --rate-repeat 2`` interleaves one and two workers (and Nchan) and
    reports each target's median of the runs."""
    out = tmp_path / "results"
    with_nchan = ["--against", "nchan"] if _nchan_installed() else []
    _bench(
        out,
        *("--native-latency", "--tls", "--workers", "1,2", *with_nchan),
        *("--rate", "50", "--rate-seconds", "1", "--rate-subscribers", "20", "--rate-repeat", "2"),
    )
    report = json.loads((out / "native-latency.json").read_text())
    keys = ["plasma w=1", "plasma w=2", *(["nchan"] if with_nchan else [])]

    def key(run: dict[str, Any]) -> str:
        return f"plasma w={run['workers']}" if run["target"] == "plasma" else run["target"]

    assert [key(run) for run in report["runs"]] == keys * 2
    for run in report["runs"]:
        assert run["tls"] is True
        assert run["deliveries"] == run["expected"] == 20 * 50
        assert run["lost"] == run["duplicated"] == run["reordered"] == 0
    medians = report["medians"]
    assert list(medians) == keys
    for name, median in medians.items():
        p99s = [r["arrival_ms"]["p99"] for r in report["runs"] if key(r) == name]
        assert median["runs"] == 2
        assert median["arrival_p99_all"] == p99s
        assert median["arrival_p99_ms"] == round((p99s[0] + p99s[1]) / 2, 3)


@pytest.mark.parametrize("source", ["redis", "redis-stream"])
def test_publish_api_bench(tmp_path: Path, source: str) -> None:
    """``--publish-api`` posts its batches and accounts for every event (two workers, so the
    per-process CPU split is exercised too)."""
    out = tmp_path / "results"
    _bench(
        out,
        "--publish-api",
        "--batch",
        "10",
        "--batches",
        "16",
        "--publishers",
        "4",
        "--repeat",
        "1",
        "--source",
        source,
        "--env",
        "PLASMA_WORKERS=2",
    )
    (row,) = json.loads((out / "publish-api.json").read_text())["runs"]
    assert row["events"] == 160 and row["errors"] == 0
    assert row["workers"] == 2 and "workers_cpu_s_per_million" in row
    assert "readback_cpu_s_per_million" in row and "api_cpu_s_per_million" in row
    # Read back whole (per reading process: with streams each worker reads for itself): the
    # API's warm-up and run, then the same events straight into Redis.
    readers = row["received_direct"] // 160
    assert readers in (1, 2) and row["received_direct"] == 160 * readers
    assert row["received_api"] == (20 * 10 + 160) * readers
    if source == "redis-stream":
        assert row["xlen"] == 20 * 10 + 160 + 160  # warm-up, API, then straight into Redis


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
