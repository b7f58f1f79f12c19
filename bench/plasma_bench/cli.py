"""``./scripts/bench``: start Redis and plasma (and Nchan), drive the subscribers, report.

./scripts/bench                     the issue-5 scenarios against plasma
./scripts/bench --against nchan     ... and the same scenarios against Nchan
./scripts/bench --smoke             a few seconds: 50 SSE, a few gRPC, 20 events (CI)
./scripts/bench --target 127.0.0.1:8080 --redis 127.0.0.1:6379   a running server
./scripts/bench --scale             100,000 SSE streams on 6 workers, broadcast events (issue 16)
./scripts/bench --storm             20,000 streams, plasma killed and restarted (issue 16)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from plasma_bench import __version__
from plasma_bench.auth import AUTH_ALGORITHMS, server_auth
from plasma_bench.clients import raise_nofile
from plasma_bench.pool import ClientPool
from plasma_bench.report import (
    latency_cdf,
    markdown_table,
    plots,
    profile_summary,
    table,
    targets_check,
)
from plasma_bench.runner import Settings, TargetRun
from plasma_bench.servers import (
    REPO,
    ExternalTarget,
    Managed,
    NchanServer,
    PlasmaServer,
    RedisServer,
    Target,
    nchan_available,
)

__all__ = ["main"]

ALL_SCENARIOS = ("idle", "burst", "rate", "grpc")


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def _addr(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host or "127.0.0.1", int(port)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="scripts/bench",
        description="plasma's load benchmark: SSE and gRPC fan-out from Redis, optionally "
        "beside Nchan. Starts its own redis-server and plasma on free loopback ports.",
    )
    p.add_argument("--smoke", action="store_true", help="a few seconds, small counts (CI)")
    p.add_argument(
        "--native-latency",
        action="store_true",
        help="only the fixed-rate SSE latency, measured by the C client in bench/native",
    )
    p.add_argument(
        "--publish-api",
        action="store_true",
        help="only the publish API: batches of --batch events POSTed to /publish, into Redis",
    )
    p.add_argument(
        "--scale",
        action="store_true",
        help="only the scale scenario: --connections SSE streams (100,000) on --workers (6), "
        "from --swarms load-generator processes, --scale-events broadcast events",
    )
    p.add_argument(
        "--storm",
        action="store_true",
        help="only the reconnect storm: --connections streams (20,000) on the redis-stream "
        "source at --rate events/s; plasma killed and restarted on the same port",
    )
    p.add_argument("--connections", type=int, default=None, help="with --scale/--storm")
    p.add_argument(
        "--swarms",
        type=int,
        default=None,
        help="with --scale/--storm: load-generator processes (one per 15,000 streams)",
    )
    p.add_argument("--scale-events", type=int, default=3, help="with --scale: events (3)")
    p.add_argument(
        "--storm-signal",
        choices=["kill", "term"],
        default="kill",
        help="with --storm: SIGKILL every server process (kill), or SIGTERM the supervisor",
    )
    p.add_argument(
        "--storm-before", type=float, default=3.0, help="with --storm: seconds before the kill"
    )
    p.add_argument(
        "--storm-after",
        type=float,
        default=30.0,
        help="with --storm: longest wait for every stream to catch up after the restart (30)",
    )
    p.add_argument("--batch", type=int, default=100, help="with --publish-api: events per POST")
    p.add_argument(
        "--batches", type=int, default=2000, help="with --publish-api: POSTs per run (2000)"
    )
    p.add_argument(
        "--publishers", type=int, default=8, help="with --publish-api: concurrent POSTs (8)"
    )
    p.add_argument(
        "--source",
        choices=["redis", "redis-stream"],
        default="redis",
        help="with --publish-api: the server's source (redis)",
    )
    p.add_argument("--repeat", type=int, default=3, help="with --publish-api/--client: runs (3)")
    p.add_argument(
        "--client",
        action="store_true",
        help="only the Python client: events/s one plasma.client.Subscriber receives, SSE vs gRPC",
    )
    p.add_argument(
        "--against",
        choices=["nchan"],
        action="append",
        default=[],
        help="also run the same scenarios against this server",
    )
    p.add_argument("--skip-plasma", action="store_true", help="run only the --against servers")
    p.add_argument(
        "--scenarios",
        default=",".join(ALL_SCENARIOS),
        help="comma list of idle,burst,rate,grpc (default: all)",
    )
    p.add_argument(
        "--sse",
        default="1000,5000",
        type=_ints,
        help="SSE subscriber counts for the burst sweep (default 1000,5000)",
    )
    p.add_argument("--burst-events", type=int, default=200, help="events per burst (200)")
    p.add_argument("--burst-repeat", type=int, default=3, help="bursts per level (3, median)")
    p.add_argument("--rate", type=float, default=100.0, help="fixed publish rate, events/s (100)")
    p.add_argument("--rate-seconds", type=float, default=10.0, help="fixed-rate duration (10)")
    p.add_argument(
        "--keep-deliveries",
        action="store_true",
        help="with --native-latency: keep every delivery (sequence, connection, publish, "
        "arrival and read times in ns) as deliveries-<run>.txt in --out",
    )
    p.add_argument(
        "--rate-repeat",
        type=int,
        default=1,
        help="with --native-latency: runs per target, interleaved (1)",
    )
    p.add_argument(
        "--rate-subscribers",
        type=int,
        default=1000,
        help="SSE subscribers for the fixed-rate run (1000)",
    )
    p.add_argument("--grpc", type=int, default=1000, help="gRPC streams (1000; 0: skip)")
    p.add_argument(
        "--idle",
        type=int,
        default=20000,
        help="idle SSE connections for the RSS scenario (20000; 0: skip)",
    )
    p.add_argument(
        "--idle-events",
        type=int,
        default=10,
        help="events sent to the idle connections to prove they all receive (10)",
    )
    p.add_argument("--event-bytes", type=int, default=200, help="event JSON size in bytes (200)")
    p.add_argument("--procs", type=int, default=4, help="subscriber processes (4)")
    p.add_argument(
        "--strict",
        action="store_true",
        help="parse every frame fully (de-chunk, JSON, protobuf); default in --smoke",
    )
    p.add_argument("--workers", type=int, default=None, help="PLASMA_WORKERS for the server")
    p.add_argument(
        "--auth",
        choices=AUTH_ALGORITHMS,
        default=None,
        help="access control on: the server verifies a JWT of this algorithm on every "
        "connection, each minted for its own user (so no cache helps)",
    )
    p.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra environment for the plasma server (repeatable)",
    )
    p.add_argument(
        "--target",
        type=_addr,
        default=None,
        metavar="HOST:PORT",
        help="benchmark a running plasma instead of starting one",
    )
    p.add_argument(
        "--target-pid",
        type=int,
        default=None,
        help="pid of the --target server, for CPU/RSS (default: found by its port)",
    )
    p.add_argument(
        "--redis",
        type=_addr,
        default=None,
        metavar="HOST:PORT",
        help="the Redis the --target server reads (default: start redis-server)",
    )
    p.add_argument("--channel", default="bench", help="Redis channel (bench)")
    p.add_argument("--event-type", default="bench", help="event type subscribed to (bench)")
    p.add_argument(
        "--profile",
        action="store_true",
        help="record the plasma server with py-spy (--native) in each scenario",
    )
    p.add_argument("--out", type=Path, default=Path("bench-results"), help="output directory")
    p.add_argument(
        "--connect-timeout",
        type=float,
        default=120.0,
        help="seconds allowed for one step of connections (120)",
    )
    args = p.parse_args(argv)
    if args.scale or args.storm:
        default = 100_000 if args.scale else 20_000
        if args.smoke:
            default = 300 if args.scale else 200
            args.scale_events = 2
            args.rate = 50.0
            args.storm_before = 1.0
            args.storm_after = 15.0
            args.event_bytes = 100
        args.connections = args.connections or default
        args.swarms = args.swarms or max(2, -(-args.connections // 15_000))
        if args.workers is None:
            args.workers = 2 if (args.storm or args.smoke) else 6
        return args
    if args.smoke:
        args.sse = [50]
        args.burst_events = 20
        args.burst_repeat = 1
        args.rate = 50.0
        args.rate_seconds = 0.4
        args.rate_subscribers = 50
        args.grpc = 4 if args.grpc else 0
        args.idle = 0
        args.procs = 2
        args.strict = True
        args.connect_timeout = 20.0
    return args


def machine() -> dict[str, Any]:
    info: dict[str, Any] = {
        "nproc": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                info["memory_gib"] = round(int(line.split()[1]) / 2**20, 1)
                break
    except OSError:
        pass
    for mod in ("uvloop", "aiohttp", "h2", "orjson", "redis"):
        try:
            m = __import__(mod)
            info[mod] = getattr(m, "__version__", "?")
        except ImportError:
            info[mod] = None
    try:
        rev = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(REPO), "status", "--porcelain", "--", "src"],
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
        info["plasma_rev"] = rev + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        pass
    import resource

    info["nofile"] = list(resource.getrlimit(resource.RLIMIT_NOFILE))
    return info


def pid_listening_on(port: int) -> int | None:
    """The pid owning the listening TCP socket on ``port`` (same user only), or None."""
    inodes = set()
    for table_path in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table_path).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            f = line.split()
            if f[3] == "0A" and int(f[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(f[9])
    if not inodes:
        return None
    for pid in (d for d in os.listdir("/proc") if d.isdigit()):
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
                if link.startswith("socket:[") and link[8:-1] in inodes:
                    return int(pid)
        except OSError:
            continue
    return None


async def run(args: argparse.Namespace) -> dict[str, Any]:
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    Managed.keep_logs = out / "logs"
    scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    unknown = set(scenarios) - set(ALL_SCENARIOS)
    if unknown:
        raise SystemExit(f"bench: unknown scenarios {sorted(unknown)}; use {ALL_SCENARIOS}")
    notes: list[str] = []
    _soft, hard = raise_nofile()
    idle = args.idle
    if idle and not args.target and (args.workers in (None, 1)) and idle > hard - 64:
        notes.append(
            f"idle connections capped at {hard - 64:,} (asked {idle:,}): RLIMIT_NOFILE hard limit "
            f"is {hard:,} here and one server process needs one descriptor per connection"
        )
        idle = hard - 64
    auth_env: dict[str, str] = {}
    auth: dict[str, str] | None = None
    if args.auth:
        if args.target or args.against:
            raise SystemExit("bench: --auth starts its own plasma: not with --target or --against")
        auth_env, auth = server_auth(args.auth, out)
    settings = Settings(
        scenarios=scenarios,
        sse_levels=args.sse,
        burst_events=args.burst_events,
        burst_repeat=args.burst_repeat,
        rate=args.rate,
        rate_seconds=args.rate_seconds,
        rate_subscribers=args.rate_subscribers,
        grpc_streams=args.grpc,
        idle_connections=idle,
        idle_events=args.idle_events,
        event_bytes=args.event_bytes,
        event_type=args.event_type,
        channel=args.channel,
        strict=args.strict,
        connect_timeout=args.connect_timeout,
        out=out,
        profile=args.profile,
        notes=notes,
        auth=auth,
    )
    started = time.time()
    results: dict[str, Any] = {
        "bench_version": __version__,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "argv": sys.argv[1:],
        "machine": machine(),
        "settings": {
            k: (str(v) if isinstance(v, Path) else v)
            for k, v in vars(settings).items()
            if k != "auth"  # holds the key: never written out
        }
        | {"auth": args.auth},
        "notes": notes,
        "runs": [],
    }

    def log(msg: str) -> None:
        print(msg, flush=True)

    for n in notes:
        log(f"note: {n}")
    redis: RedisServer | None = None
    redis_addr = args.redis
    redis_pid = None
    pool = ClientPool(args.procs)
    samples: dict[str, list[int]] = {}
    try:
        await pool.start()
        if not args.skip_plasma and redis_addr is None:
            redis = await asyncio.to_thread(lambda: RedisServer().start())
            redis_addr = (redis.host, redis.port)
            redis_pid = redis.pid
        elif redis_addr is not None:
            redis_pid = pid_listening_on(redis_addr[1])
        epoch_ns = time.time_ns()
        runs: list[tuple[str, str, Any]] = []
        if not args.skip_plasma:
            if args.target:
                host, port = args.target
                pid = args.target_pid or pid_listening_on(port)
                if pid is None:
                    notes.append("server pid unknown: no server CPU or RSS figures")

                def make_external() -> Target:
                    return ExternalTarget(host, port, pid)

                runs.append(("plasma", f"plasma@{host}:{port}", make_external))
            else:
                env = {**auth_env, **dict(kv.split("=", 1) for kv in args.env)}
                if args.workers is not None:
                    env["PLASMA_WORKERS"] = str(args.workers)
                assert redis_addr is not None
                addr = f"{redis_addr[0]}:{redis_addr[1]}"

                def make_plasma() -> Target:
                    return PlasmaServer(addr, args.channel, env).start()

                label = "plasma" + (f" w={args.workers}" if args.workers is not None else "")
                label += f" auth={args.auth}" if args.auth else ""
                runs.append(("plasma", label, make_plasma))
        if "nchan" in args.against:
            why = nchan_available()
            if why:
                notes.append(f"nchan skipped: {why}")
                log(f"note: nchan skipped: {why}")
            else:
                runs.append(("nchan", "nchan", lambda: NchanServer().start()))
        for kind, label, make in runs:
            tr = TargetRun(settings, pool, make, redis_addr, redis_pid, epoch_ns, log, label)
            results["runs"].append({"target": kind, "label": label})

            def save(partial: dict[str, Any]) -> None:
                results["runs"][-1] = partial
                _write_json(out, results)

            await tr.run(kind, save)
            samples.update(tr.latency_samples)
    finally:
        await pool.stop()
        if redis is not None:
            await asyncio.to_thread(redis.stop)
    results["seconds"] = round(time.time() - started, 1)
    if args.profile:
        results["profiles"] = {}
        for path in sorted(out.glob("profile-*.txt")):
            results["profiles"][path.name] = profile_summary(path)
    results["targets"] = targets_check(results)
    results["plots"] = plots(results, samples, out)
    return results


def _write_json(out: Path, results: dict[str, Any]) -> Path:
    path = out / "results.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(results, indent=2, default=str) + "\n")
    tmp.replace(path)
    return path


def _native(args: argparse.Namespace) -> int:
    """Fixed-rate latency with the C client: each target ``--rate-repeat`` times, interleaved."""
    from plasma_bench.native import run_native_latency

    if "nchan" in args.against and (why := nchan_available()) is not None:
        print(f"bench: --against nchan: {why}", file=sys.stderr)
        return 2
    env = dict(kv.split("=", 1) for kv in args.env)
    if args.workers is not None:
        env["PLASMA_WORKERS"] = str(args.workers)
    runs: list[dict[str, Any]] = []
    samples: dict[str, list[int]] = {}
    ok = True
    args.out.mkdir(parents=True, exist_ok=True)
    for _ in range(args.rate_repeat):
        for target in ["plasma", *args.against]:
            result, arrivals = run_native_latency(
                target=target,
                rate=args.rate,
                seconds=args.rate_seconds,
                subscribers=args.rate_subscribers,
                event_bytes=args.event_bytes,
                env=env,
                keep_deliveries=(
                    args.out / f"deliveries-{len(runs) + 1}.txt" if args.keep_deliveries else None
                ),
            )
            runs.append(result)
            label = result["target"]
            if target == "plasma":
                label += f" ({result['workers']} worker{'s' if result['workers'] != '1' else ''})"
            samples[f"{label} #{len(runs)}"] = arrivals
            print(_native_line(result), flush=True)
            ok = ok and result["lost"] == 0 and result["reordered"] == 0
    path = args.out / "native-latency.json"
    path.write_text(json.dumps({"runs": runs}, indent=2) + "\n")
    print(f"wrote {path}")
    plot = args.out / "native_latency_cdf.png"
    title = f"{args.rate_subscribers} SSE subscribers, {args.rate:g} events/s (C client)"
    if latency_cdf(samples, plot, title, "publish to arrival on the subscriber's socket (ms)"):
        print(f"wrote {plot}")
    return 0 if ok else 1


def _native_line(result: dict[str, Any]) -> str:
    lat, arr = result["latency_ms"], result["arrival_ms"]
    none = {"p50": "-", "p99": "-"}
    start, span = result["fanout"].get("start_ms", none), result["fanout"].get("span_ms", none)
    workers = f", {result['workers']} worker(s)" if result["target"] == "plasma" else ""
    return (
        f"{result['target']}: {result['connections']} SSE @ {result['rate']:g}/s for "
        f"{result['seconds']:g}s{workers}\n"
        f"  publish to socket arrival: p50 {arr['p50']} ms, p90 {arr['p90']} ms, "
        f"p99 {arr['p99']} ms, max {arr['max']} ms\n"
        f"  publish to client read:    p50 {lat['p50']} ms, p90 {lat['p90']} ms, "
        f"p99 {lat['p99']} ms, max {lat['max']} ms\n"
        f"  per event: fan-out starts p50 {start['p50']} ms, p99 {start['p99']} ms after "
        f"publish; first to last copy p50 {span['p50']} ms, p99 {span['p99']} ms\n"
        f"  server {result['server_cpu_s_per_M']} CPU-s/M, load generator "
        f"{result['loadgen_cpu_s_per_M']} CPU-s/M; deliveries {result['deliveries']}/"
        f"{result['expected']}, lost {result['lost']}, duplicated {result['duplicated']}, "
        f"reordered {result['reordered']}"
    )


def _api(args: argparse.Namespace) -> int:
    from plasma_bench.api import run_client, run_publish_api

    if args.publish_api:
        rows = run_publish_api(
            batch_size=args.batch,
            batches=args.batches,
            publishers=args.publishers,
            source=args.source,
            workers=args.workers or 1,
            repeat=args.repeat,
        )
    else:
        rows = run_client(events=50_000, repeat=args.repeat)
    args.out.mkdir(parents=True, exist_ok=True)
    name = "publish-api.json" if args.publish_api else "client.json"
    (args.out / name).write_text(json.dumps({"machine": machine(), "runs": rows}, indent=2))
    print(f"wrote {args.out / name}")
    return 1 if any(row.get("errors") for row in rows) else 0


def _scale(args: argparse.Namespace) -> int:
    """``--scale`` or ``--storm``: one run, its figures printed and written as JSON."""
    from plasma_bench.scale import run_scale, run_storm

    env = dict(kv.split("=", 1) for kv in args.env)
    Managed.keep_logs = args.out / "logs"

    def overdue(_signum: int, _frame: object) -> None:
        raise TimeoutError("bench: the scenario took over 15 minutes; stopping its processes")

    # A load generator that stops answering must not hang the run: the servers are stopped
    # by the scenario's ``finally`` when this fires.
    signal.signal(signal.SIGALRM, overdue)
    signal.alarm(900)
    if args.scale:
        result = run_scale(
            connections=args.connections,
            workers=args.workers,
            swarms=args.swarms,
            events=args.scale_events,
            event_bytes=args.event_bytes,
            env=env,
        )
        ok = result["lost"] == 0
    else:
        result = run_storm(
            connections=args.connections,
            workers=args.workers,
            swarms=args.swarms,
            rate=args.rate,
            before_s=args.storm_before,
            after_s=args.storm_after,
            event_bytes=args.event_bytes,
            how=args.storm_signal,
            env=env,
        )
        ok = (
            result["lost"] == result["duplicated_or_reordered"] == result["errors"] == 0
            and result["complete_streams"] == result["connections"]
        )
    result["machine"] = machine()
    result["argv"] = sys.argv[1:]
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"{result['scenario']}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {path}")
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.scale or args.storm:
        return _scale(args)
    if args.native_latency:
        return _native(args)
    if args.publish_api or args.client:
        return _api(args)
    results = asyncio.run(run(args))
    out: Path = args.out
    path = _write_json(out, results)
    (out / "results.md").write_text(markdown_table(results) + "\n")
    print()
    print(table(results))
    if results["targets"]:
        print("\nissue 5 targets:")
        for line in results["targets"]:
            print("  " + line)
    for name, prof in (results.get("profiles") or {}).items():
        print(f"\n{name}: {prof['samples']} samples; top self time:")
        for fn, pct in prof["self"][:12]:
            print(f"  {pct:5.1f}%  {fn}")
    print(f"\nwrote {path}, {out / 'results.md'}" + "".join(f", {p}" for p in results["plots"]))
    bad = [
        r
        for r in results["runs"]
        if any(
            (lvl.get("burst") or {}).get("lost") for lvl in (r.get("sweep") or {}).get("levels", [])
        )
    ]
    return 1 if bad else 0
