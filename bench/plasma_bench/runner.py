"""The scenarios: connect, idle RSS, burst fan-out, fixed-rate latency, gRPC streams, idle
grpcio streams.

One ``TargetRun`` drives one server (plasma or Nchan) through the scenarios it is asked for.
Every phase is bounded in event count and in time; a phase that times out is reported with
what was missing instead of waiting longer.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from plasma_bench.brokers import BrokerPublisher
from plasma_bench.pool import ClientPool
from plasma_bench.procstat import cpu_seconds, machine_busy_seconds, rss_bytes
from plasma_bench.publish import NchanPublisher, Publisher, RedisPublisher
from plasma_bench.servers import Target

__all__ = ["Meter", "Settings", "TargetRun", "delivery_check", "py_spy_binary"]


@dataclass
class Settings:
    """What to run; ``cli.py`` fills it from the command line."""

    scenarios: list[str]
    sse_levels: list[int]
    burst_events: int
    burst_repeat: int
    rate: float
    rate_seconds: float
    rate_subscribers: int
    grpc_streams: int
    idle_connections: int
    idle_events: int
    event_bytes: int
    event_type: str
    channel: str
    strict: bool
    connect_timeout: float
    out: Path
    profile: bool = False
    notes: list[str] = field(default_factory=list)
    auth: dict[str, str] | None = None
    """With ``--auth``: the algorithm and key the clients mint their tokens with."""
    tls: bool = False
    """With ``--tls``: every server listens with TLS, every subscriber speaks it."""
    grpcio_streams: int = 0
    """Idle grpcio streams for the ``grpc-idle`` scenario (``--grpc-idle``)."""
    procs: int = 4


class Meter:
    """CPU of the server tree, the load generator (client processes + controller), Redis."""

    def __init__(
        self, server: Callable[[], list[int]], clients: list[int], redis: int | list[int] | None
    ):
        self._server = server
        self._clients = clients
        self._redis = [redis] if isinstance(redis, int) else (redis or [])

    def sample(self) -> dict[str, float]:
        own = os.times()
        return {
            "server": cpu_seconds(self._server()),
            "loadgen": cpu_seconds(self._clients) + own.user + own.system,
            "redis": cpu_seconds(self._redis),
            **{"machine_" + k: v for k, v in machine_busy_seconds().items()},
            "wall": time.monotonic(),
        }

    @staticmethod
    def delta(a: dict[str, float], b: dict[str, float]) -> dict[str, float]:
        """CPU seconds per party over the interval; ``other`` is load that is not ours."""
        d = {k: round(b[k] - a[k], 4) for k in a}
        ours = d["server"] + d["loadgen"] + d["redis"]
        d["other"] = round(max(0.0, d["machine_tasks"] - ours), 3)
        return d


def py_spy_binary() -> str:
    """py-spy from PATH, else next to this Python (``.venv/bin``)."""
    import shutil
    import sys

    found = shutil.which("py-spy")
    if found:
        return found
    beside = Path(sys.executable).parent / "py-spy"
    if beside.exists():
        return str(beside)
    raise RuntimeError("--profile needs py-spy: pip install py-spy")


def _percentile(sorted_values: list[int], q: float) -> float:
    if not sorted_values:
        return float("nan")
    k = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return float(sorted_values[k])


def _per_million(cpu: float, deliveries: int) -> float | None:
    return round(cpu / deliveries * 1e6, 3) if deliveries else None


class TargetRun:
    """All scenarios against one kind of server."""

    def __init__(
        self,
        settings: Settings,
        pool: ClientPool,
        make_target: Callable[[], Target],
        redis: tuple[str, int] | None,
        redis_pid: int | None,
        epoch_ns: int,
        log: Callable[[str], None],
        label: str,
        make_publisher: Callable[[int], BrokerPublisher] | None = None,
        broker_pids: list[int] | None = None,
    ) -> None:
        """``make_publisher`` (given the run's epoch): publish through another broker than
        the one Redis at ``redis`` (``--source``); ``broker_pids``: its processes, for CPU."""
        self.label = label
        self.make_publisher = make_publisher
        self.broker_pids = broker_pids
        self.s = settings
        self.pool = pool
        self.make_target = make_target
        self.redis = redis
        self.redis_pid = redis_pid
        self.epoch_ns = epoch_ns
        self.log = log
        self.seq = 1
        self.target: Target | None = None
        self.publisher: Publisher | BrokerPublisher | None = None
        self.latency_samples: dict[str, list[int]] = {}
        self.profile_proc: subprocess.Popen[bytes] | None = None

    # --- plumbing -----------------------------------------------------------------------------

    async def _start(self, scenario: str) -> Target:
        target = await asyncio.to_thread(lambda: self.make_target())
        self.target = target
        if target.kind == "nchan":
            self.publisher = NchanPublisher(
                target.host,
                target.publish_port,
                event_type=self.s.event_type,
                size=self.s.event_bytes,
                epoch_ns=self.epoch_ns,
            )
        elif self.make_publisher is not None:
            self.publisher = self.make_publisher(self.epoch_ns)
        else:
            assert self.redis is not None
            self.publisher = RedisPublisher(
                self.redis[0],
                self.redis[1],
                self.s.channel,
                event_type=self.s.event_type,
                size=self.s.event_bytes,
                epoch_ns=self.epoch_ns,
            )
        await self.publisher.connect()
        if self.s.profile and target.kind == "plasma" and target.server_pids():
            self._start_profile(target, scenario)
        return target

    def _start_profile(self, target: Target, scenario: str) -> None:
        out = self.s.out / f"profile-{target.kind}-{scenario}.txt"
        pid = target.server_pids()[0]
        self.profile_proc = subprocess.Popen(
            [
                *(py_spy_binary(), "record", "-p", str(pid), "--native", "--subprocesses"),
                *("-r", "250", "--format", "raw", "-o", str(out)),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.log(f"  py-spy recording pid {pid} -> {out}")

    async def _stop(self) -> None:
        """Stop everything the scenario started; each step runs even if an earlier one fails."""
        if self.profile_proc is not None:
            self.profile_proc.send_signal(signal.SIGINT)
            try:
                await asyncio.to_thread(self.profile_proc.wait, 30)
            except subprocess.TimeoutExpired:
                self.profile_proc.kill()
                self.profile_proc.wait(5)
            self.profile_proc = None
        try:
            await self.pool.close()
        except Exception as exc:
            self.log(f"  ! closing subscribers failed: {exc!r}")
        if self.publisher is not None:
            try:
                await self.publisher.close()
            except Exception as exc:
                self.log(f"  ! closing the publisher failed: {exc!r}")
            self.publisher = None
        if self.target is not None:
            target, self.target = self.target, None
            await asyncio.to_thread(target.stop)

    def _meter(self) -> Meter:
        assert self.target is not None
        broker = self.broker_pids if self.broker_pids is not None else self.redis_pid
        return Meter(self.target.server_pids, self.pool.pids, broker)

    def _rss(self) -> int:
        assert self.target is not None
        return rss_bytes(self.target.server_pids())

    async def _connect(self, kind: str, count: int) -> dict[str, Any]:
        assert self.target is not None
        t = self.target
        meter = self._meter()
        before = meter.sample()
        started = time.monotonic()
        r = await self.pool.connect(
            kind,
            t.host,
            t.port,
            count,
            path=t.sse_path(self.s.event_type),
            types=[self.s.event_type],
            strict=self.s.strict,
            timeout=self.s.connect_timeout,
            auth=self.s.auth,
            tls=str(t.tls.cert) if t.tls is not None else None,
        )
        r["seconds"] = round(time.monotonic() - started, 3)
        r["cpu"] = Meter.delta(before, meter.sample())
        r["server_cpu_us_per_connection"] = (
            round(r["cpu"]["server"] / r["ok"] * 1e6, 1) if r["ok"] else None
        )
        r["per_second"] = round(r["ok"] / r["seconds"], 1) if r["seconds"] else None
        if r["failed"]:
            self.log(f"  ! {r['failed']} of {count} {kind} connections failed: {r['errors']}")
        if count > 1:
            self.log(
                f"  connected {r['ok']} {kind}: {r['per_second']}/s, server "
                f"{r['server_cpu_us_per_connection']} us CPU per connection"
            )
        return r

    async def _warmup(self, timeout: float = 15.0) -> dict[str, Any]:
        """Publish until every connection has received an event: proves the subscriptions."""
        assert self.publisher is not None
        await self.publisher.ensure_connected()
        conns = await self.pool.phase("warmup", self.seq, 1)
        deadline = time.monotonic() + timeout
        published = 0
        done = False
        while time.monotonic() < deadline:
            await self.publisher.apublish(self.seq)
            self.seq += 1
            published += 1
            done, _ = await self.pool.wait_done(0.3 if published < 5 else 1.0)
            if done:
                break
        await asyncio.sleep(0.3)  # let warm-up events still in flight land before measuring
        got = await self.pool.collect()
        return {"ok": done, "conns": conns, "events": published, "incomplete": got["incomplete"]}

    async def _burst(self, count: int) -> dict[str, Any]:
        assert self.publisher is not None
        await self.publisher.ensure_connected()
        base = self.seq
        conns = await self.pool.phase("check", base, count)
        meter = self._meter()
        before = meter.sample()
        t0 = await self.publisher.apublish_burst(base, count)
        self.seq += count
        await self.publisher.drain()
        timeout = min(120.0, 15.0 + conns * count / 50_000)
        done, last_ns = await self.pool.wait_done(timeout)
        after = meter.sample()
        await self.publisher.wait_replies(5.0)
        got = await self.pool.collect()
        if not done:
            last_ns = got["last_ns"]
        seconds = max(1e-9, (last_ns - t0) / 1e9)
        delivered = got["received"] - got["stale"]
        cpu = Meter.delta(before, after)
        return {
            "subscribers": conns,
            "events": count,
            **delivery_check(got, conns * count, delivered, done),
            "seconds": round(seconds, 4),
            "deliveries_per_s": round(delivered / seconds),
            "first_delivery_ms": round((got["first_ns"] - t0) / 1e6, 2)
            if got["first_ns"]
            else None,
            "cpu": cpu,
            "server_cpu_s_per_M": _per_million(cpu["server"], delivered),
            "loadgen_cpu_s_per_M": _per_million(cpu["loadgen"], delivered),
            "errors": got["errors"],
        }

    async def _rate(self, rate: float, seconds: float, kind: str = "SSE") -> dict[str, Any]:
        assert self.publisher is not None
        await self.publisher.ensure_connected()
        count = max(1, round(rate * seconds))
        base = self.seq
        conns = await self.pool.phase("check", base, count, latency=True, epoch_ns=self.epoch_ns)
        meter = self._meter()
        before = meter.sample()
        loop = asyncio.get_running_loop()
        start = loop.time()
        late = 0
        for i in range(count):
            when = start + i / rate
            delay = when - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            elif delay < -0.01:
                late += 1
            await self.publisher.apublish(base + i)
        self.seq += count
        publish_seconds = loop.time() - start
        done, _ = await self.pool.wait_done(15.0)
        after = meter.sample()
        await self.publisher.wait_replies(5.0)
        got = await self.pool.collect()
        lat = sorted(got["latencies"])
        delivered = got["received"] - got["stale"]
        cpu = Meter.delta(before, after)
        key = f"{self.label} {conns} {kind} @ {rate:g}/s"
        self.latency_samples[key] = lat
        ms = 1e6
        return {
            "subscribers": conns,
            "rate": rate,
            "events": count,
            "publish_seconds": round(publish_seconds, 3),
            "publisher_late": late,
            **delivery_check(got, conns * count, delivered, done),
            "latency_ms": {
                "p50": round(_percentile(lat, 0.50) / ms, 3),
                "p90": round(_percentile(lat, 0.90) / ms, 3),
                "p99": round(_percentile(lat, 0.99) / ms, 3),
                "max": round(lat[-1] / ms, 3) if lat else None,
                "samples": len(lat),
            },
            "cpu": cpu,
            "other_load_cores": round(cpu["other"] / max(1e-9, cpu["wall"]), 2),
            "server_cpu_s_per_M": _per_million(cpu["server"], delivered),
            "loadgen_cpu_s_per_M": _per_million(cpu["loadgen"], delivered),
            "errors": got["errors"],
        }

    def _summarize_bursts(self, bursts: list[dict[str, Any]]) -> dict[str, Any]:
        delivered = sum(b["deliveries"] for b in bursts)
        server = sum(b["cpu"]["server"] for b in bursts)
        loadgen = sum(b["cpu"]["loadgen"] for b in bursts)
        return {
            "subscribers": bursts[0]["subscribers"],
            "events": bursts[0]["events"],
            "repeats": len(bursts),
            "deliveries_per_s": round(statistics.median(b["deliveries_per_s"] for b in bursts)),
            "deliveries_per_s_all": [b["deliveries_per_s"] for b in bursts],
            "deliveries": delivered,
            "expected": sum(b["expected"] for b in bursts),
            "lost": sum(b["lost"] for b in bursts),
            "duplicated": sum(b["duplicated"] for b in bursts),
            "reordered": sum(b["reordered"] for b in bursts),
            "strict_errors": sum(b["strict_errors"] for b in bursts),
            "complete": all(b["complete"] for b in bursts),
            "other_load_cores": round(
                sum(b["cpu"]["other"] for b in bursts)
                / max(1e-9, sum(b["cpu"]["wall"] for b in bursts)),
                2,
            ),
            "server_cpu_s_per_M": _per_million(server, delivered),
            "loadgen_cpu_s_per_M": _per_million(loadgen, delivered),
            "bursts": bursts,
        }

    async def _bursts(self, label: str) -> dict[str, Any]:
        bursts = []
        for _ in range(self.s.burst_repeat):
            b = await self._burst(self.s.burst_events)
            bursts.append(b)
            self.log(
                f"  {label}: {b['deliveries']}/{b['expected']} in {b['seconds']:.3f}s = "
                f"{b['deliveries_per_s']:,}/s, CPU-s/M server {b['server_cpu_s_per_M']} "
                f"loadgen {b['loadgen_cpu_s_per_M']}, "
                f"lost {b['lost']} dup {b['duplicated']} reord {b['reordered']}, "
                f"other load {b['cpu']['other']:.2f}s/{b['cpu']['wall']:.2f}s"
            )
            await asyncio.sleep(0.3)
        return self._summarize_bursts(bursts)

    # --- scenarios ----------------------------------------------------------------------------

    async def idle(self) -> dict[str, Any]:
        """Hold many idle SSE connections: RSS per connection, then prove they all receive."""
        n = self.s.idle_connections
        self.log(f"[{self._label()}] idle: {n} SSE connections")
        await self._start("idle")
        try:
            await asyncio.sleep(1.0)
            rss0 = self._rss()
            conn = await self._connect("sse", n)
            await asyncio.sleep(2.0)
            rss1 = self._rss()
            held = conn["total"]
            result: dict[str, Any] = {
                "requested": n,
                "connected": held,
                "connect": conn,
                "rss_before_bytes": rss0,
                "rss_after_bytes": rss1,
                "rss_per_connection_bytes": round((rss1 - rss0) / held) if held else None,
            }
            self.log(
                f"  {held} held, connect {conn['seconds']}s ({conn['per_second']}/s), RSS "
                f"{rss0 / 2**20:.1f} -> {rss1 / 2**20:.1f} MiB = "
                f"{(rss1 - rss0) / max(1, held) / 1024:.2f} KiB/conn"
            )
            result["warmup"] = await self._warmup(30.0)
            b = await self._burst(self.s.idle_events)
            self.log(
                f"  all receiving: {b['deliveries']}/{b['expected']} lost {b['lost']} "
                f"dup {b['duplicated']} reord {b['reordered']} ({b['deliveries_per_s']:,}/s)"
            )
            result["burst"] = b
            result["all_receiving"] = bool(
                b["complete"] and b["lost"] == 0 and b["deliveries"] == b["expected"] and held == n
            )
            return result
        finally:
            await self._stop()

    async def sweep(self) -> dict[str, Any]:
        """SSE subscribers at increasing counts: bursts at each, fixed-rate latency at one."""
        levels = sorted(set(self.s.sse_levels))
        rate_at = self.s.rate_subscribers if "rate" in self.s.scenarios else None
        if rate_at and rate_at not in levels:
            levels = sorted({*levels, rate_at})
        self.log(f"[{self._label()}] SSE sweep: {levels}")
        await self._start("sweep")
        out: dict[str, Any] = {"levels": [], "rate": None}
        try:
            await asyncio.sleep(1.0)
            rss0 = self._rss()
            have = 0
            for level in levels:
                conn = await self._connect("sse", level - have)
                have = conn["total"]
                await asyncio.sleep(0.5)
                rss = self._rss()
                warm = await self._warmup()
                entry: dict[str, Any] = {
                    "subscribers": have,
                    "connect": conn,
                    "rss_bytes": rss,
                    "rss_per_connection_bytes": round((rss - rss0) / have) if have else None,
                    "warmup": warm,
                }
                if "burst" in self.s.scenarios:
                    entry["burst"] = await self._bursts(f"{have} SSE burst")
                if level == rate_at:
                    r = await self._rate(self.s.rate, self.s.rate_seconds)
                    self.log(
                        f"  {have} SSE @ {self.s.rate:g}/s: p50 {r['latency_ms']['p50']} ms, "
                        f"p99 {r['latency_ms']['p99']} ms, max {r['latency_ms']['max']} ms, "
                        f"server {r['server_cpu_s_per_M']} CPU-s/M, lost {r['lost']}"
                    )
                    out["rate"] = r
                out["levels"].append(entry)
            return out
        finally:
            await self._stop()

    async def grpc(self) -> dict[str, Any]:
        """gRPC server streams: bursts (and the same fixed-rate run) on their own."""
        m = self.s.grpc_streams
        self.log(f"[{self._label()}] gRPC: {m} streams")
        await self._start("grpc")
        try:
            probe = await self._connect("grpc", 1)
            if not probe["ok"]:
                return {"available": False, "reason": f"gRPC stream failed: {probe['errors']}"}
            warm = await self._warmup(3.0)
            if not warm["ok"]:
                return {"available": False, "reason": "gRPC stream received no event"}
            rss0 = self._rss()
            conn = await self._connect("grpc", m - 1)
            await asyncio.sleep(0.5)
            rss1 = self._rss()
            warm = await self._warmup()
            result: dict[str, Any] = {
                "available": True,
                "streams": conn["total"],
                "connect": conn,
                "rss_per_stream_bytes": round((rss1 - rss0) / max(1, conn["ok"])),
                "warmup": warm,
                "burst": await self._bursts(f"{conn['total']} gRPC burst"),
            }
            if "rate" in self.s.scenarios:
                r = await self._rate(self.s.rate, self.s.rate_seconds, "gRPC")
                self.log(
                    f"  {conn['total']} gRPC @ {self.s.rate:g}/s: p50 {r['latency_ms']['p50']} "
                    f"ms, p99 {r['latency_ms']['p99']} ms, server {r['server_cpu_s_per_M']} "
                    f"CPU-s/M, lost {r['lost']}"
                )
                result["rate"] = r
            return result
        finally:
            await self._stop()

    async def grpc_idle(self) -> dict[str, Any]:
        """Idle gRPC streams from real grpcio clients: RSS per stream, then prove they all
        receive. grpcio runs in processes of its own (``grpcio_clients``), not in the pool."""
        n = self.s.grpcio_streams
        self.log(f"[{self._label()}] grpc-idle: {n} grpcio streams")
        target = await self._start("grpc-idle")
        procs = max(1, min(self.s.procs, n))
        shares = [n // procs + (1 if i < n % procs else 0) for i in range(procs)]
        clients: list[asyncio.subprocess.Process] = []
        try:
            await asyncio.sleep(1.0)
            rss0 = self._rss()
            meter = self._meter()
            before = meter.sample()
            started = time.monotonic()
            for share in shares:
                clients.append(
                    await asyncio.create_subprocess_exec(
                        *(sys.executable, "-m", "plasma_bench.grpcio_clients"),
                        *(target.host, str(target.port), str(share), self.s.event_type),
                        stdin=subprocess.PIPE,
                        stdout=subprocess.PIPE,
                    )
                )
            replies = await asyncio.wait_for(
                asyncio.gather(*(_reply(c) for c in clients)), self.s.connect_timeout
            )
            seconds = time.monotonic() - started
            cpu = Meter.delta(before, meter.sample())
            held = sum(r["ready"] for r in replies)
            errors: dict[str, int] = {}
            for r in replies:
                for k, v in r["errors"].items():
                    errors[k] = errors.get(k, 0) + v
            await asyncio.sleep(2.0)
            rss1 = self._rss()
            result: dict[str, Any] = {
                "requested": n,
                "connected": held,
                "errors": errors,
                "connect_seconds": round(seconds, 3),
                "server_cpu_us_per_connection": round(cpu["server"] / held * 1e6, 1)
                if held
                else None,
                "rss_before_bytes": rss0,
                "rss_after_bytes": rss1,
                "rss_per_stream_bytes": round((rss1 - rss0) / held) if held else None,
            }
            self.log(
                f"  {held} grpcio streams held ({errors or 'no errors'}), RSS "
                f"{rss0 / 2**20:.1f} -> {rss1 / 2**20:.1f} MiB = "
                f"{(rss1 - rss0) / max(1, held) / 1024:.2f} KiB/stream"
            )
            assert self.publisher is not None
            await self.publisher.ensure_connected()
            events = max(1, self.s.idle_events)
            for _ in range(events):
                self.publisher.publish(self.seq)
                self.seq += 1
            await self.publisher.drain()
            deadline = time.monotonic() + 15.0
            while True:
                counts = await asyncio.gather(*(_ask(c) for c in clients))
                low = min(c["min"] for c in counts)
                if low >= events or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.3)
            result["events"] = events
            result["received"] = sum(c["received"] for c in counts)
            result["expected"] = held * events
            result["all_receiving"] = bool(held == n and result["received"] == held * events)
            self.log(
                f"  all receiving: {result['received']}/{result['expected']} "
                f"({result['all_receiving']})"
            )
            return result
        finally:
            for c in clients:
                if c.stdin is not None:
                    c.stdin.close()
            for c in clients:
                try:
                    await asyncio.wait_for(c.wait(), 20.0)
                except TimeoutError:
                    c.kill()
                    await c.wait()
            await self._stop()

    def _label(self) -> str:
        return self.label

    async def run(self, kind: str, save: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
        """Every scenario asked for; a failing scenario is recorded and the next one runs."""
        result: dict[str, Any] = {"target": kind, "label": self.label}
        todo: list[tuple[str, Callable[[], Any]]] = []
        if "idle" in self.s.scenarios and self.s.idle_connections:
            todo.append(("idle", self.idle))
        if {"burst", "rate"} & set(self.s.scenarios):
            todo.append(("sweep", self.sweep))
        if "grpc" in self.s.scenarios and self.s.grpc_streams and kind != "nchan":
            todo.append(("grpc", self.grpc))
        if "grpc-idle" in self.s.scenarios and self.s.grpcio_streams and kind != "nchan":
            todo.append(("grpc_idle", self.grpc_idle))
        for name, scenario in todo:
            try:
                result[name] = await scenario()
            except Exception as exc:
                import traceback

                self.log(f"  ! scenario {name} failed: {exc!r}")
                result[name] = {"error": repr(exc), "traceback": traceback.format_exc()}
            save(result)
        return result


async def _reply(proc: asyncio.subprocess.Process) -> dict[str, Any]:
    """The next JSON line a grpcio client process writes (its error lines are skipped)."""
    assert proc.stdout is not None
    while True:
        line = await proc.stdout.readline()
        if not line:
            raise RuntimeError(f"grpcio client {proc.pid} exited")
        reply: dict[str, Any] = json.loads(line)
        if "error" not in reply:
            return reply


async def _ask(proc: asyncio.subprocess.Process) -> dict[str, Any]:
    """Messages a grpcio client process has received so far (and the fewest on one stream)."""
    assert proc.stdin is not None
    proc.stdin.write(b"count\n")
    await proc.stdin.drain()
    return await _reply(proc)


def delivery_check(
    got: dict[str, Any], expected: int, delivered: int, done: bool
) -> dict[str, Any]:
    """What every phase reports about completeness: loss, duplicates, order, errors."""
    return {
        "expected": expected,
        "deliveries": delivered,
        "complete": done,
        **{
            key: got[key]
            for key in (
                "lost", "duplicated", "reordered", "stale", "strict_errors", "lost_connections",
            )
        },
    }  # fmt: skip
