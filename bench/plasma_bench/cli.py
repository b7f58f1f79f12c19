"""``./scripts/bench``: start Redis and plasma (and Nchan), drive the subscribers, report.

./scripts/bench                     the issue-5 scenarios against plasma
./scripts/bench --against nchan     ... and the same scenarios against Nchan
./scripts/bench --smoke             a few seconds: 50 SSE, a few gRPC, 20 events (CI)
./scripts/bench --ingest --unicast --source redis,redis-cluster,nats   events in per second
./scripts/bench --scenarios burst --sse 1000 --source redis,redis-cluster,nats   fan-out
./scripts/bench --tls --against nchan   the same, every subscriber over TLS
./scripts/bench --native-latency --workers 1,2 --against nchan --rate-repeat 5
                                    fixed rate, C client, interleaved; medians per target
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
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from plasma_bench import __version__
from plasma_bench.auth import AUTH_ALGORITHMS, server_auth
from plasma_bench.brokers import SOURCES, Broker, start_broker
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
from plasma_bench.tls import TLSFiles, make_certificate

__all__ = ["main"]

ALL_SCENARIOS = ("idle", "burst", "rate", "grpc", "grpc-idle")


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def _sources(text: str) -> list[str]:
    names = [x.strip() for x in text.split(",") if x.strip()]
    bad = [n for n in names if n not in SOURCES]
    if bad or not names:
        raise argparse.ArgumentTypeError(f"unknown source {bad}; use {', '.join(SOURCES)}")
    return names


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
        type=_sources,
        default=["redis"],
        help="the server's source(s), a comma list of " + ", ".join(SOURCES) + ": each "
        "runs in turn on its own broker started here (default redis; --publish-api: redis or "
        "redis-stream, the first one)",
    )
    p.add_argument(
        "--repeat",
        type=int,
        default=None,
        help="runs: --publish-api/--client (3), --ingest/--unicast (1, interleaved)",
    )
    p.add_argument(
        "--ingest",
        action="store_true",
        help="only events in per second: --events events in pipelined batches of "
        "--ingest-batch, one SSE subscriber, per --source",
    )
    p.add_argument(
        "--unicast",
        action="store_true",
        help="only unicast: --users SSE subscribers each on its own type user:<n>, "
        "--unicast-events events round-robin over them, per --source",
    )
    p.add_argument("--events", type=int, default=50_000, help="with --ingest: events (50,000)")
    p.add_argument(
        "--ingest-batch",
        type=int,
        default=1000,
        help="with --ingest/--unicast: events per pipelined batch (1,000)",
    )
    p.add_argument("--users", type=int, default=10_000, help="with --unicast: subscribers (10,000)")
    p.add_argument(
        "--unicast-events",
        type=int,
        default=200_000,
        help="with --unicast: events in all, split evenly over the users (200,000)",
    )
    p.add_argument(
        "--plasma-python",
        action="append",
        default=[],
        metavar="PYTHON",
        help="run plasma with this interpreter (e.g. another checkout's .venv/bin/python, "
        "which runs that checkout's plasma); repeat it to compare, interleaved, in one run "
        "(default: this interpreter)",
    )
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
        help="comma list of idle,burst,rate,grpc,grpc-idle (default: all)",
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
        "--grpc-idle",
        type=int,
        default=1000,
        help="idle streams from real grpcio clients for the grpc-idle scenario (1000; 0: skip)",
    )
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
    p.add_argument(
        "--workers",
        type=_ints,
        default=None,
        help="PLASMA_WORKERS for the server; with --native-latency a comma list (1,2) runs "
        "plasma once per count in each round, interleaved",
    )
    p.add_argument(
        "--tls",
        action="store_true",
        help="every server listens with TLS (one self-signed certificate, made for the run) "
        "and every subscriber speaks TLS; publishers stay cleartext (Redis; Nchan's /pub on "
        "a second port)",
    )
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
        help="record the plasma server with py-spy in each scenario (--native for the fan-out "
        "ones; the measured phase only for --ingest/--unicast)",
    )
    p.add_argument("--out", type=Path, default=Path("bench-results"), help="output directory")
    p.add_argument(
        "--connect-timeout",
        type=float,
        default=120.0,
        help="seconds allowed for one step of connections (120)",
    )
    args = p.parse_args(argv)
    args.worker_counts = args.workers or []
    if len(args.worker_counts) > 1 and not args.native_latency:
        p.error("--workers takes one count, except with --native-latency")
    args.workers = args.worker_counts[0] if args.worker_counts else None
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
        args.grpc_idle = 4 if args.grpc_idle else 0
        args.idle = 0
        args.procs = 2
        args.strict = True
        args.connect_timeout = 20.0
        args.events = 2000
        args.ingest_batch = 500
        args.users = 50
        args.unicast_events = 500
    if args.repeat is None:
        args.repeat = 1 if (args.ingest or args.unicast) else 3
    # Absolute (not resolved: a venv's python is a symlink), since plasma runs elsewhere.
    args.plasma_python = [os.path.abspath(p) for p in args.plasma_python] or [sys.executable]
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
    tls: TLSFiles | None = None
    if args.tls:
        if args.target:
            raise SystemExit("bench: --tls starts its own servers: not with --target")
        tls = make_certificate(Path(tempfile.mkdtemp(prefix="plasma-bench-tls-")))
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
        tls=args.tls,
        grpcio_streams=args.grpc_idle,
        procs=args.procs,
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
        # (kind, label, factory, source): a source other than "redis" runs on its own broker,
        # started before its first run and stopped after its last.
        runs: list[tuple[str, str, Any, str | None]] = []
        brokers: dict[str, Broker] = {}
        if not args.skip_plasma:
            if args.target:
                host, port = args.target
                pid = args.target_pid or pid_listening_on(port)
                if pid is None:
                    notes.append("server pid unknown: no server CPU or RSS figures")

                def make_external() -> Target:
                    return ExternalTarget(host, port, pid)

                runs.append(("plasma", f"plasma@{host}:{port}", make_external, None))
            else:
                env = {**auth_env, **dict(kv.split("=", 1) for kv in args.env)}
                if args.workers is not None:
                    env["PLASMA_WORKERS"] = str(args.workers)
                assert redis_addr is not None
                addr = f"{redis_addr[0]}:{redis_addr[1]}"
                for source in args.source:
                    for python in args.plasma_python:
                        label = "plasma" + (
                            f" w={args.workers}" if args.workers is not None else ""
                        )
                        label += f" auth={args.auth}" if args.auth else ""
                        label += " tls" if tls else ""
                        label += f" {source}" if args.source != ["redis"] else ""
                        if len(args.plasma_python) > 1:
                            label += f" [{_python_name(python)}]"
                        runs.append(
                            (
                                "plasma",
                                label,
                                _plasma_factory(addr, args, env, python, source, brokers, tls),
                                source,
                            )
                        )
        if "nchan" in args.against:
            why = nchan_available()
            if why:
                notes.append(f"nchan skipped: {why}")
                log(f"note: nchan skipped: {why}")
            else:
                runs.append(
                    (
                        "nchan",
                        "nchan tls" if tls else "nchan",
                        lambda: NchanServer(tls).start(),
                        None,
                    )
                )
        try:
            for kind, label, make, source in runs:
                make_publisher = None
                broker_pids = None
                if source is not None and source != "redis" and source not in brokers:
                    for old in list(brokers):
                        await asyncio.to_thread(brokers.pop(old).stop)
                    log(f"[{source}] starting the broker")
                    brokers[source] = await asyncio.to_thread(start_broker, source)
                if source is not None and source in brokers:
                    broker = brokers[source]
                    channels = broker.channels(1)
                    broker_pids = broker.pids()

                    def make_publisher(
                        epoch: int, b: Broker = broker, c: list[str] = channels
                    ) -> Any:
                        return b.publisher(c, args.event_type, args.event_bytes, epoch)

                tr = TargetRun(
                    settings, pool, make, redis_addr, redis_pid, epoch_ns, log, label,
                    make_publisher=make_publisher, broker_pids=broker_pids,
                )  # fmt: skip
                results["runs"].append({"target": kind, "label": label})

                def save(partial: dict[str, Any]) -> None:
                    results["runs"][-1] = partial
                    _write_json(out, results)

                await tr.run(kind, save)
                samples.update(tr.latency_samples)
        finally:
            for b in brokers.values():
                await asyncio.to_thread(b.stop)
    finally:
        await pool.stop()
        if redis is not None:
            await asyncio.to_thread(redis.stop)
        if tls is not None:
            shutil.rmtree(tls.cert.parent, ignore_errors=True)
    results["seconds"] = round(time.time() - started, 1)
    if args.profile:
        results["profiles"] = {}
        for path in sorted(out.glob("profile-*.txt")):
            results["profiles"][path.name] = profile_summary(path)
    results["targets"] = targets_check(results)
    results["plots"] = plots(results, samples, out)
    return results


def _python_name(python: str) -> str:
    """A checkout's name from its interpreter's path (``/x/main/.venv/bin/python``: main)."""
    parts = Path(python).parts
    return parts[parts.index(".venv") - 1] if ".venv" in parts[1:] else python


def _plasma_factory(
    addr: str,
    args: argparse.Namespace,
    env: dict[str, str],
    python: str,
    source: str,
    brokers: dict[str, Broker],
    tls: TLSFiles | None = None,
) -> Any:
    """A function that starts plasma with ``python`` on ``source`` (the one Redis at ``addr``
    for ``redis``, else the broker started for it then)."""

    def make() -> Target:
        if source == "redis":
            return PlasmaServer(addr, args.channel, env, python=python, tls=tls).start()
        broker = brokers[source]
        own = {**broker.plasma_env(broker.channels(1)), **env}
        return PlasmaServer("", "", own, python=python, tls=tls).start()

    return make


def _write_json(out: Path, results: dict[str, Any]) -> Path:
    path = out / "results.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(results, indent=2, default=str) + "\n")
    tmp.replace(path)
    return path


def _native(args: argparse.Namespace) -> int:
    """Fixed-rate latency with the C client: each target ``--rate-repeat`` times, interleaved."""
    if "nchan" in args.against and (why := nchan_available()) is not None:
        print(f"bench: --against nchan: {why}", file=sys.stderr)
        return 2
    env = dict(kv.split("=", 1) for kv in args.env)
    runs: list[dict[str, Any]] = []
    samples: dict[str, list[int]] = {}
    args.out.mkdir(parents=True, exist_ok=True)
    tls = make_certificate(Path(tempfile.mkdtemp(prefix="plasma-bench-tls-"))) if args.tls else None
    try:
        ok = _native_runs(args, env, runs, samples, tls)
    finally:
        if tls is not None:
            shutil.rmtree(tls.cert.parent, ignore_errors=True)
    medians = native_medians(runs)
    if args.rate_repeat > 1:
        for line in _median_lines(medians):
            print(line, flush=True)
    path = args.out / "native-latency.json"
    path.write_text(json.dumps({"runs": runs, "medians": medians}, indent=2) + "\n")
    print(f"wrote {path}")
    plot = args.out / "native_latency_cdf.png"
    title = f"{args.rate_subscribers} SSE subscribers, {args.rate:g} events/s (C client)"
    if latency_cdf(samples, plot, title, "publish to arrival on the subscriber's socket (ms)"):
        print(f"wrote {plot}")
    return 0 if ok else 1


def _native_runs(
    args: argparse.Namespace,
    env: dict[str, str],
    runs: list[dict[str, Any]],
    samples: dict[str, list[int]],
    tls: TLSFiles | None,
) -> bool:
    """The interleaved runs (plasma at each --workers count, then each --against target,
    --rate-repeat times); each result goes into ``runs`` as it ends. True if nothing was
    lost or reordered."""
    from plasma_bench.native import run_native_latency

    ok = True
    plasmas = [
        ("plasma", {**env, "PLASMA_WORKERS": str(n)} if n is not None else env)
        for n in (args.worker_counts or [None])
    ]
    for _ in range(args.rate_repeat):
        for target, target_env in [*plasmas, *((name, env) for name in args.against)]:
            result, arrivals = run_native_latency(
                target=target,
                rate=args.rate,
                seconds=args.rate_seconds,
                subscribers=args.rate_subscribers,
                event_bytes=args.event_bytes,
                env=target_env,
                keep_deliveries=(
                    args.out / f"deliveries-{len(runs) + 1}.txt" if args.keep_deliveries else None
                ),
                tls=tls,
            )
            runs.append(result)
            label = result["target"]
            if target == "plasma":
                label += f" ({result['workers']} worker{'s' if result['workers'] != '1' else ''})"
            samples[f"{label} #{len(runs)}"] = arrivals
            print(_native_line(result), flush=True)
            ok = ok and result["lost"] == 0 and result["reordered"] == 0
    return ok


def native_medians(runs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per target (plasma with its worker count, nchan): the median over its runs of the
    p99s and of the CPU per delivery: the figure issue 16 asks to hold "in the median of
    five interleaved runs"."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in runs:
        key = r["target"] + (f" w={r['workers']}" if r["target"] == "plasma" else "")
        groups.setdefault(key, []).append(r)
    return {
        key: {
            "runs": len(rs),
            "arrival_p99_ms": round(statistics.median(r["arrival_ms"]["p99"] for r in rs), 3),
            "read_p99_ms": round(statistics.median(r["latency_ms"]["p99"] for r in rs), 3),
            "arrival_p50_ms": round(statistics.median(r["arrival_ms"]["p50"] for r in rs), 3),
            "server_cpu_s_per_M": round(statistics.median(r["server_cpu_s_per_M"] for r in rs), 3),
            "arrival_p99_all": [r["arrival_ms"]["p99"] for r in rs],
            "lost": sum(r["lost"] for r in rs),
        }
        for key, rs in groups.items()
    }


def _median_lines(medians: dict[str, dict[str, Any]]) -> list[str]:
    lines = ["medians per target:"]
    for key, m in medians.items():
        lines.append(
            f"  {key}: {m['runs']} runs, arrival p99 median {m['arrival_p99_ms']} ms "
            f"(runs {', '.join(str(v) for v in m['arrival_p99_all'])}), read p99 median "
            f"{m['read_p99_ms']} ms, arrival p50 median {m['arrival_p50_ms']} ms, server "
            f"{m['server_cpu_s_per_M']} CPU-s/M, lost {m['lost']}"
        )
    return lines


def _native_line(result: dict[str, Any]) -> str:
    lat, arr = result["latency_ms"], result["arrival_ms"]
    none = {"p50": "-", "p99": "-"}
    start, span = result["fanout"].get("start_ms", none), result["fanout"].get("span_ms", none)
    workers = f", {result['workers']} worker(s)" if result["target"] == "plasma" else ""
    tls = " TLS" if result.get("tls") else ""
    return (
        f"{result['target']}: {result['connections']} SSE{tls} @ {result['rate']:g}/s for "
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
        if args.source[0] not in ("redis", "redis-stream"):
            raise SystemExit("bench: --publish-api runs on --source redis or redis-stream")
        rows = run_publish_api(
            batch_size=args.batch,
            batches=args.batches,
            publishers=args.publishers,
            source=args.source[0],
            workers=args.workers or 1,
            repeat=args.repeat,
            env=dict(kv.split("=", 1) for kv in args.env),
        )
    else:
        rows = run_client(events=50_000, repeat=args.repeat)
    args.out.mkdir(parents=True, exist_ok=True)
    name = "publish-api.json" if args.publish_api else "client.json"
    (args.out / name).write_text(json.dumps({"machine": machine(), "runs": rows}, indent=2))
    print(f"wrote {args.out / name}")
    return 1 if any(row.get("errors") for row in rows) else 0


def _ingest(args: argparse.Namespace) -> int:
    """``--ingest`` / ``--unicast``: per source, per interpreter; writes ingest.json."""
    from plasma_bench.ingest import IngestSettings, ingest_line, run_ingest

    env = dict(kv.split("=", 1) for kv in args.env)
    if args.workers is not None:
        env["PLASMA_WORKERS"] = str(args.workers)
    settings = IngestSettings(
        sources=args.source,
        pythons=args.plasma_python,
        ingest=args.ingest,
        unicast=args.unicast,
        events=args.events,
        batch=args.ingest_batch,
        users=args.users,
        unicast_events=args.unicast_events,
        event_bytes=args.event_bytes,
        repeat=args.repeat,
        strict=args.strict,
        connect_timeout=args.connect_timeout,
        env=env,
        profile=args.out if args.profile else None,
    )
    args.out.mkdir(parents=True, exist_ok=True)
    Managed.keep_logs = args.out / "logs"

    async def go() -> list[dict[str, Any]]:
        raise_nofile()
        pool = ClientPool(args.procs)
        await pool.start()
        try:
            return await run_ingest(settings, pool, lambda m: print(m, flush=True))
        finally:
            await pool.stop()

    rows = asyncio.run(go())
    path = args.out / "ingest.json"
    path.write_text(
        json.dumps({"argv": sys.argv[1:], "machine": machine(), "runs": rows}, indent=2) + "\n"
    )
    print("\nsummary:")
    for row in rows:
        print(ingest_line(row))
    print(f"wrote {path}")
    bad = [
        r
        for r in rows
        if "error" in r or r["lost"] or r["duplicated"] or r["reordered"] or r["strict_errors"]
    ]
    return 1 if bad else 0


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
    if args.ingest or args.unicast:
        return _ingest(args)
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
