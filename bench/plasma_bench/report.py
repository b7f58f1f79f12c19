"""Results out: the printed table, the issue-5 target check, PNG plots, py-spy summaries."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path
from typing import Any

__all__ = ["latency_cdf", "plots", "profile_summary", "table", "targets_check"]

_LINE = re.compile(r":\d+\)$")  # py-spy frames end with ":<line>)": summarize per function


def _fmt(v: Any, spec: str = "") -> str:
    if v is None:
        return "-"
    if isinstance(v, float) and v != v:  # NaN
        return "-"
    return format(v, spec) if spec else str(v)


def _errs(d: dict[str, Any]) -> str:
    bad = [f"{k} {d[k]}" for k in ("lost", "duplicated", "reordered") if d.get(k)]
    if d.get("strict_errors"):
        bad.append(f"format {d['strict_errors']}")
    if not d.get("complete", True) and not bad:
        bad.append("incomplete")
    return ", ".join(bad) or "none"


def rows(results: dict[str, Any]) -> list[list[str]]:
    out: list[list[str]] = []
    for run in results["runs"]:
        t = run["label"]
        for name in ("idle", "sweep", "grpc", "grpc_idle"):
            if "error" in (run.get(name) or {}):
                err = run[name]["error"][:70]
                out.append([t, name, "-", "-", "-", "-", "-", "-", "-", f"ERROR {err}", "-"])
        run = {k: v for k, v in run.items() if not (isinstance(v, dict) and "error" in v)}
        idle = run.get("idle")
        if idle:
            b = idle.get("burst", {})
            out.append(
                [
                    t,
                    "idle SSE + small burst",
                    f"{idle['connected']:,}/{idle['requested']:,}",
                    f"{idle['connect']['seconds']}s",
                    _fmt(round(idle["rss_per_connection_bytes"] / 1024, 2))
                    if idle.get("rss_per_connection_bytes") is not None
                    else "-",
                    _fmt(b.get("deliveries_per_s"), ","),
                    _fmt(b.get("server_cpu_s_per_M")),
                    _fmt(b.get("loadgen_cpu_s_per_M")),
                    "-",
                    _errs(b) + ("" if idle.get("all_receiving") else " (NOT all receiving)"),
                    _other(b),
                ]
            )
        sweep = run.get("sweep") or {}
        for lvl in sweep.get("levels", []):
            b = lvl.get("burst")
            if not b:
                continue
            out.append(
                _burst_row(
                    t, "SSE", b, lvl["subscribers"], lvl["connect"], lvl["rss_per_connection_bytes"]
                )
            )
        r = sweep.get("rate")
        if r:
            out.append(_rate_row(t, "SSE", r))
        g = run.get("grpc")
        if g:
            if not g.get("available"):
                out.append([t, "gRPC", "-", "-", "-", "-", "-", "-", "-", g.get("reason", ""), "-"])
            else:
                b = g["burst"]
                out.append(
                    _burst_row(t, "gRPC", b, g["streams"], g["connect"], g["rss_per_stream_bytes"])
                )
                if g.get("rate"):
                    out.append(_rate_row(t, "gRPC", g["rate"]))
        gi = run.get("grpc_idle")
        if gi:
            per = gi.get("rss_per_stream_bytes")
            out.append(
                [
                    t,
                    "idle gRPC (grpcio clients)",
                    f"{gi['connected']:,}/{gi['requested']:,}",
                    f"{gi['connect_seconds']}s",
                    _fmt(round(per / 1024, 2)) if per is not None else "-",
                    "-",
                    "-",
                    "-",
                    "-",
                    ", ".join(f"{k} {v}" for k, v in gi["errors"].items())
                    or ("none" if gi.get("all_receiving") else "NOT all receiving"),
                    "-",
                ]
            )
    return out


def _other(d: dict[str, Any] | None) -> str:
    v = (d or {}).get("other_load_cores")
    return "-" if v is None else f"{v:.2f} cores"


def _burst_row(
    target: str,
    kind: str,
    b: dict[str, Any],
    subscribers: int,
    connect: dict[str, Any],
    rss_bytes: float,
) -> list[str]:
    """One table row for a burst phase of SSE or gRPC subscribers."""
    return [
        target,
        f"{kind} burst {b['events']} ev x{b['repeats']}",
        f"{subscribers:,}",
        f"{connect['seconds']}s",
        _fmt(round(rss_bytes / 1024, 2)),
        _fmt(b["deliveries_per_s"], ","),
        _fmt(b["server_cpu_s_per_M"]),
        _fmt(b["loadgen_cpu_s_per_M"]),
        "-",
        _errs(b),
        _other(b),
    ]


def _rate_row(target: str, kind: str, r: dict[str, Any]) -> list[str]:
    lat = r["latency_ms"]
    return [
        target,
        f"{kind} {r['rate']:g} ev/s x {r['events']}",
        f"{r['subscribers']:,}",
        "-",
        "-",
        _fmt(round(r["deliveries"] / max(1e-9, r["publish_seconds"]))) + " (avg)",
        _fmt(r["server_cpu_s_per_M"]),
        _fmt(r["loadgen_cpu_s_per_M"]),
        f"{lat['p50']}/{lat['p99']}/{lat['max']}",
        _errs(r),
        _other(r),
    ]


HEADER = [
    "target",
    "scenario",
    "subscribers",
    "connect",
    "RSS KiB/conn",
    "deliveries/s",
    "server CPU-s/M",
    "loadgen CPU-s/M",
    "lat ms p50/p99/max",
    "lost/dup/reorder",
    "other load",
]


def table(results: dict[str, Any]) -> str:
    body = rows(results)
    widths = [max(len(r[i]) for r in [HEADER, *body]) for i in range(len(HEADER))]
    lines = ["  ".join(h.ljust(w) for h, w in zip(HEADER, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    for r in body:
        lines.append("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)))
    return "\n".join(lines)


def markdown_table(results: dict[str, Any]) -> str:
    body = rows(results)
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(r) + " |" for r in body]
    return "\n".join(lines)


def _burst_at(run: dict[str, Any], n: int) -> dict[str, Any] | None:
    for lvl in (run.get("sweep") or {}).get("levels", []):
        if lvl["subscribers"] == n and lvl.get("burst"):
            return dict(lvl["burst"])
    return None


def targets_check(results: dict[str, Any]) -> list[str]:
    """Issue 5's targets, checked against plasma's figures (and Nchan's from the same run)."""
    runs = {
        r["target"]: {k: v for k, v in r.items() if not (isinstance(v, dict) and "error" in v)}
        for r in results["runs"]
    }
    p, n = runs.get("plasma"), runs.get("nchan")
    if p is None:
        return []
    out = []

    def line(ok: bool | None, text: str) -> None:
        mark = "n/a " if ok is None else ("PASS" if ok else "MISS")
        out.append(f"[{mark}] {text}")

    for subs in (1000, 5000):
        pb = _burst_at(p, subs)
        nb = _burst_at(n, subs) if n else None
        if pb is None:
            line(None, f"burst {subs} SSE: not run")
            continue
        clean = pb["lost"] == 0 and pb["duplicated"] == 0 and pb["reordered"] == 0
        if nb:
            line(
                clean and pb["deliveries_per_s"] > nb["deliveries_per_s"],
                f"burst {subs} SSE: plasma {pb['deliveries_per_s']:,}/s vs Nchan "
                f"{nb['deliveries_per_s']:,}/s, lost/dup/reordered "
                f"{pb['lost']}/{pb['duplicated']}/{pb['reordered']}",
            )
        else:
            line(None, f"burst {subs} SSE: plasma {pb['deliveries_per_s']:,}/s (no Nchan run)")
        cpu = pb["server_cpu_s_per_M"]
        line(cpu is not None and cpu <= 2.0, f"burst {subs} SSE CPU: {cpu} CPU-s/M (target <= 2)")
    r = (p.get("sweep") or {}).get("rate")
    if r and (r["subscribers"] < 1000 or r["rate"] < 100):
        line(
            None, f"fixed rate: run was {r['rate']:g} ev/s to {r['subscribers']} (target: 100/1000)"
        )
    elif r:
        p99 = r["latency_ms"]["p99"]
        line(p99 <= 10.0, f"{r['rate']:g} ev/s to {r['subscribers']} SSE: p99 {p99} ms (<= 10)")
        cpu = r["server_cpu_s_per_M"]
        line(cpu is not None and cpu <= 7.0, f"  ... server {cpu} CPU-s/M (target <= 7)")
    g = p.get("grpc")
    if g and g.get("available") and g["streams"] < 1000:
        line(None, f"gRPC: run with {g['streams']} streams (target: 1000)")
    elif g and g.get("available"):
        cpu = g["burst"]["server_cpu_s_per_M"]
        line(
            cpu is not None and cpu <= 4.0,
            f"{g['streams']} gRPC streams burst: {cpu} CPU-s/M (target <= 4); loadgen "
            f"{g['burst']['loadgen_cpu_s_per_M']} CPU-s/M",
        )
    elif g:
        line(None, f"gRPC: {g.get('reason')}")
    gi = p.get("grpc_idle")
    if gi and "error" not in gi:
        per = gi.get("rss_per_stream_bytes")
        line(
            per is not None and per <= 6 * 1024 and gi.get("all_receiving", False)
            if gi["requested"] >= 1000
            else None,
            f"idle gRPC RSS (grpcio clients): {per} bytes/stream at {gi['connected']:,} "
            f"(target <= 6144), all receiving: {gi.get('all_receiving')}",
        )
    idle = p.get("idle")
    if idle:
        per = idle.get("rss_per_connection_bytes")
        line(
            per is not None and per <= 8 * 1024,
            f"idle SSE RSS: {per} bytes/conn at {idle['connected']:,} (target <= 8192)",
        )
        capped = (
            " (fewer were asked for: this process's open-file limit; "
            "--idle 20000 --workers 2 spreads them)"
            if idle["requested"] < 20000
            else ""
        )
        line(
            idle["connected"] >= 20000 and idle.get("all_receiving", False),
            f"{idle['connected']:,} of {idle['requested']:,} connections held, all receiving: "
            f"{idle.get('all_receiving')} (target: 20,000){capped}",
        )
    return out


def latency_cdf(samples: dict[str, list[int]], path: Path, title: str, xlabel: str = "") -> bool:
    """One CDF curve per key (latencies in ns, sorted); False if nothing was drawn."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    if not any(samples.values()):
        return False
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for key, lat in samples.items():
        if not lat:
            continue
        step = max(1, len(lat) // 20000)
        xs = [v / 1e6 for v in lat[::step]]
        ys = [i / len(xs) for i in range(1, len(xs) + 1)]
        ax.plot(xs, ys, label=key)
    ax.set_xscale("log")
    ax.set_xlabel(xlabel or "publish-to-receive latency (ms)")
    ax.set_ylabel("fraction of deliveries")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def plots(results: dict[str, Any], samples: dict[str, list[int]], out: Path) -> list[str]:
    """Latency CDF and deliveries/s against subscribers; returns the files written."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    written = []
    path = out / "latency_cdf.png"
    if latency_cdf(samples, path, "Latency CDF at a fixed publish rate"):
        written.append(str(path))
    fig, ax = plt.subplots(figsize=(7, 4.5))
    drew = False
    for run in results["runs"]:
        pts = [
            (lvl["subscribers"], lvl["burst"]["deliveries_per_s"])
            for lvl in (run.get("sweep") or {}).get("levels", [])
            if lvl.get("burst")
        ]
        if pts:
            ax.plot(
                [x for x, _ in pts], [y for _, y in pts], marker="o", label=run["label"] + " SSE"
            )
            drew = True
        g = run.get("grpc")
        if g and g.get("available"):
            ax.plot(
                [g["streams"]],
                [g["burst"]["deliveries_per_s"]],
                marker="s",
                linestyle="",
                label=run["label"] + " gRPC",
            )
            drew = True
    if drew:
        ax.set_xscale("log")
        ax.set_xlabel("subscribers")
        ax.set_ylabel("deliveries/s (burst, median)")
        ax.set_title("Burst fan-out throughput")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
        path = out / "deliveries_per_s.png"
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        written.append(str(path))
    plt.close(fig)
    return written


def profile_summary(path: Path, top: int = 25) -> dict[str, Any]:
    """Self and inclusive sample counts per function from py-spy's raw (collapsed) output."""
    self_counts: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        # py-spy puts "process ..." / "thread ..." roots first when --subprocesses is on.
        frames = [_LINE.sub(")", f) for f in frames if not f.startswith(("process ", "thread "))]
        if not frames:
            continue
        total += count
        self_counts[frames[-1]] += count
        for f in set(frames):
            incl[f] += count
    return {
        "samples": total,
        "self": [(f, round(100 * c / total, 1)) for f, c in self_counts.most_common(top)]
        if total
        else [],
        "inclusive": [(f, round(100 * c / total, 1)) for f, c in incl.most_common(top)]
        if total
        else [],
    }
