"""Events in per second (``--ingest``, issue 23) and unicast (``--unicast``, issue 14 §4).

``--ingest``: ``events`` events of ``event_bytes`` published to the broker in pipelined batches
of ``batch`` (each batch written at once, then its replies awaited) as fast as the publisher
goes, one SSE subscriber of the type. Reported: publisher events/s, end-to-end events/s (until
the subscriber has every event, each checked to arrive once and in order) and server CPU-s per
million events.

``--unicast``: ``users`` SSE subscribers, connection ``n`` on its own type ``user:<n>``; events
addressed to single users round-robin, published the same way, each user receiving
``events / users`` of them in order. Reported: deliveries/s end to end and server CPU-s per
million deliveries (every event is one delivery: this is per-event cost, not fan-out).

For each source of ``--source`` one broker is started; each ``--plasma-python`` interpreter
runs its own plasma against it, interleaved ``repeat`` times (A/B in one run).
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from plasma_bench.brokers import Broker, BrokerPublisher, start_broker
from plasma_bench.pool import ClientPool
from plasma_bench.report import profile_summary
from plasma_bench.runner import Meter, delivery_check, py_spy_binary
from plasma_bench.servers import PlasmaServer
from plasma_bench.wire import event_json

__all__ = ["IngestSettings", "ingest_line", "run_ingest"]

USER_PREFIX = "user:"
INGEST_TYPE = "bench"


@dataclass
class IngestSettings:
    """What ``cli.py`` asks for."""

    sources: list[str]
    pythons: list[str]
    ingest: bool
    unicast: bool
    events: int
    batch: int
    users: int
    unicast_events: int
    event_bytes: int
    repeat: int
    strict: bool
    connect_timeout: float
    env: dict[str, str] = field(default_factory=dict)
    profile: Path | None = None
    """With ``--profile``: the directory for py-spy recordings of the measured phases."""


def _python_label(python: str, pythons: list[str]) -> str:
    """A short name for an interpreter: its checkout's directory when several are compared."""
    if len(pythons) == 1:
        return "plasma"
    parts = python.split(os.sep)
    if ".venv" in parts:
        return parts[parts.index(".venv") - 1] or python
    return python


class _Run:
    """One plasma process on one broker: the ingest run, then the unicast run."""

    def __init__(
        self,
        s: IngestSettings,
        pool: ClientPool,
        broker: Broker,
        python: str,
        log: Callable[[str], None],
    ) -> None:
        self.s = s
        self.pool = pool
        self.broker = broker
        self.python = python
        self.log = log
        self.epoch_ns = time.time_ns()
        self.seq = 1
        # A cluster spreads unicast users over its three masters: one channel per master.
        self.channels = broker.channels(3 if broker.source == "redis-cluster" else 1)
        self.server: PlasmaServer | None = None
        self.publisher: BrokerPublisher | None = None

    async def start(self) -> None:
        env = {
            # Room for a whole run queued to the one ingest subscriber: never cut as slow.
            "PLASMA_CLIENT_BUFFER": str(256 << 20),
            **self.broker.plasma_env(self.channels),
            **self.s.env,
        }
        server = PlasmaServer("", "", env, python=self.python)
        self.server = await asyncio.to_thread(server.start)
        self.publisher = self.broker.publisher(
            self.channels, INGEST_TYPE, self.s.event_bytes, self.epoch_ns
        )
        await self.publisher.connect()

    async def stop(self) -> None:
        if self.publisher is not None:
            await self.publisher.close()
            self.publisher = None
        if self.server is not None:
            server, self.server = self.server, None
            await asyncio.to_thread(server.stop)

    def _meter(self) -> Meter:
        assert self.server is not None
        return Meter(self.server.server_pids, self.pool.pids, self.broker.pids())

    def _event(self, etype: str, seq: int, t: int) -> bytes:
        return event_json(etype, seq, t, self.s.event_bytes)

    async def _send(self, batches: dict[int, list[bytes]]) -> None:
        """Write one pipelined batch (per channel), then wait for the broker's replies."""
        assert self.publisher is not None
        for channel, events in batches.items():
            if events:
                await self.publisher.send(events, channel)
        await self.publisher.drain()
        if not await self.publisher.wait_replies(60.0):
            raise RuntimeError("the broker did not acknowledge a batch within 60 s")

    async def _warmup(self, per_user: bool) -> bool:
        """Publish until every connection has an event: proves the subscriptions."""
        await self.pool.phase("warmup", self.seq, 1)
        deadline = time.monotonic() + 30.0
        rounds = 0
        while time.monotonic() < deadline:
            t = time.time_ns() - self.epoch_ns
            if per_user:
                batches = self._unicast_batch(0, self.s.users, self.seq, t)
            else:
                batches = {0: [self._event(INGEST_TYPE, self.seq, t)]}
            await self._send(batches)
            self.seq += 1
            rounds += 1
            done, _ = await self.pool.wait_done(0.5 if rounds < 5 else 2.0)
            if done:
                await asyncio.sleep(0.3)
                await self.pool.collect()
                return True
        return False

    def _unicast_batch(self, first: int, last: int, seq: int, t: int) -> dict[int, list[bytes]]:
        """Events ``seq`` for users ``first`` … ``last - 1``, grouped by the user's channel."""
        n = len(self.channels)
        batches: dict[int, list[bytes]] = {c: [] for c in range(n)}
        for u in range(first, last):
            batches[u % n].append(self._event(f"{USER_PREFIX}{u}", seq, t))
        return batches

    async def _measure(self, kind: str, per_conn: int, publish: Any) -> dict[str, Any]:
        """Start a check phase, run ``publish(base)``, wait for every delivery, report."""
        assert self.publisher is not None
        base = self.seq
        conns = await self.pool.phase("check", base, per_conn)
        meter = self._meter()
        before = meter.sample()
        load = os.getloadavg()
        spy = self._profile_start(kind)
        t0 = time.time_ns()
        await publish(base)
        t_pub = time.time_ns()
        self.seq += per_conn
        expected = conns * per_conn
        done, last_ns = await self.pool.wait_done(max(30.0, expected / 5_000))
        after = meter.sample()
        profile = await self._profile_stop(spy)
        got = await self.pool.collect()
        if not done:
            last_ns = got["last_ns"] or time.time_ns()
        delivered = got["received"] - got["stale"]
        cpu = Meter.delta(before, after)
        e2e = max(1e-9, (last_ns - t0) / 1e9)
        pub = max(1e-9, (t_pub - t0) / 1e9)
        assert self.server is not None
        return {
            "scenario": kind,
            "source": self.broker.source,
            "plasma": _python_label(self.python, self.s.pythons),
            "python": self.python,
            "subscribers": conns,
            "events": expected,
            "batch": self.s.batch,
            "event_bytes": self.s.event_bytes,
            **delivery_check(got, expected, delivered, done),
            "publish_seconds": round(pub, 4),
            "publisher_events_per_s": round(expected / pub),
            "seconds": round(e2e, 4),
            "events_per_s": round(delivered / e2e),
            "cpu": cpu,
            "server_cpu_s_per_M": _per_million(cpu["server"], delivered),
            "broker_cpu_s_per_M": _per_million(cpu["redis"], delivered),
            "loadgen_cpu_s_per_M": _per_million(cpu["loadgen"], delivered),
            "loadavg": [round(x, 2) for x in load],
            "publisher_errors": self.publisher.error_samples,
            "errors": got["errors"],
            **({"profile": profile} if profile else {}),
        }

    def _profile_start(self, kind: str) -> tuple[subprocess.Popen[bytes], Path] | None:
        """py-spy on the server for the measured phase only (``--profile``)."""
        if self.s.profile is None or self.server is None:
            return None
        label = _python_label(self.python, self.s.pythons)
        name = f"profile-{kind}-{self.broker.source}-{label}-{self.epoch_ns}.txt"
        path = self.s.profile / name
        proc = subprocess.Popen(
            [
                *(py_spy_binary(), "record", "-p", str(self.server.pid), "--subprocesses"),
                *("-r", "250", "--format", "raw", "-o", str(path)),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(0.5)  # py-spy attaches before the first event is written
        return proc, path

    async def _profile_stop(
        self, spy: tuple[subprocess.Popen[bytes], Path] | None
    ) -> dict[str, Any] | None:
        if spy is None:
            return None
        proc, path = spy
        proc.send_signal(signal.SIGINT)
        try:
            await asyncio.to_thread(proc.wait, 30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        if not path.exists():
            return None
        summary = profile_summary(path, top=15)
        self.log(f"  py-spy {path.name}: {summary['samples']} samples; top self time:")
        for fn, pct in summary["self"][:10]:
            self.log(f"    {pct:5.1f}%  {fn}")
        return {"file": path.name, **summary}

    async def ingest(self) -> dict[str, Any]:
        assert self.server is not None
        srv = self.server
        await self.pool.connect(
            "sse",
            srv.host,
            srv.port,
            1,
            path=srv.sse_path(INGEST_TYPE),
            types=[INGEST_TYPE],
            strict=self.s.strict,
            timeout=self.s.connect_timeout,
        )
        try:
            if not await self._warmup(per_user=False):
                raise RuntimeError("the ingest subscriber received no event in 30 s")
            n, b = self.s.events, self.s.batch

            async def publish(base: int) -> None:
                for start in range(0, n, b):
                    t = time.time_ns() - self.epoch_ns
                    ev = [
                        self._event(INGEST_TYPE, base + i, t)
                        for i in range(start, min(n, start + b))
                    ]
                    await self._send({0: ev})

            return await self._measure("ingest", n, publish)
        finally:
            await self.pool.close()

    async def unicast(self) -> dict[str, Any]:
        assert self.server is not None
        srv = self.server
        users = self.s.users
        per_user = max(1, self.s.unicast_events // users)
        conn = await self.pool.connect(
            "sse",
            srv.host,
            srv.port,
            users,
            path=srv.sse_path("{type}"),
            types=[USER_PREFIX],
            strict=self.s.strict,
            timeout=self.s.connect_timeout,
            unicast=True,
        )
        try:
            if conn["failed"]:
                raise RuntimeError(
                    f"{conn['failed']} of {users} connections failed: {conn['errors']}"
                )
            self.log(f"  connected {conn['ok']} unicast subscribers")
            if not await self._warmup(per_user=True):
                raise RuntimeError("not every unicast subscriber received its warm-up event")
            step = max(1, self.s.batch)

            async def publish(base: int) -> None:
                # Round-robin: event k of user 0, of user 1, … then event k + 1 of each.
                for k in range(per_user):
                    for first in range(0, users, step):
                        t = time.time_ns() - self.epoch_ns
                        last = min(users, first + step)
                        await self._send(self._unicast_batch(first, last, base + k, t))

            return await self._measure("unicast", per_user, publish)
        finally:
            await self.pool.close()


def _per_million(cpu: float, n: int) -> float | None:
    return round(cpu / n * 1e6, 3) if n else None


def ingest_line(r: dict[str, Any]) -> str:
    """One run as a line of the console report."""
    if "error" in r:
        return f"  {r['scenario']:7} {r['source']:15} {r['plasma']}: FAILED {r['error']}"
    unit = "deliveries" if r["scenario"] == "unicast" else "events"
    return (
        f"  {r['scenario']:7} {r['source']:15} {r['plasma']}: {r['deliveries']:,}/"
        f"{r['expected']:,} {unit} to {r['subscribers']:,} SSE; publisher "
        f"{r['publisher_events_per_s']:,}/s, end to end {r['events_per_s']:,}/s "
        f"({r['seconds']:.2f} s); server {r['server_cpu_s_per_M']} CPU-s/M, broker "
        f"{r['broker_cpu_s_per_M']}, load {r['loadavg'][0]}; lost {r['lost']} "
        f"dup {r['duplicated']} reord {r['reordered']}"
        + (f" strict {r['strict_errors']}" if r["strict_errors"] else "")
    )


async def run_ingest(
    s: IngestSettings, pool: ClientPool, log: Callable[[str], None]
) -> list[dict[str, Any]]:
    """Every source, repeat and interpreter; one row per scenario run, failures recorded."""
    rows: list[dict[str, Any]] = []
    for source in s.sources:
        log(f"[{source}] starting the broker")
        broker = await asyncio.to_thread(start_broker, source)
        try:
            for _ in range(s.repeat):
                for python in s.pythons:
                    run = _Run(s, pool, broker, python, log)
                    todo = [("ingest", run.ingest)] if s.ingest else []
                    todo += [("unicast", run.unicast)] if s.unicast else []
                    try:
                        try:
                            await run.start()
                        except Exception as exc:  # plasma did not start: say so, go on
                            started: Exception | None = exc
                        else:
                            started = None
                        for name, scenario in todo:
                            try:
                                if started is not None:
                                    raise started
                                row = await scenario()
                            except Exception as exc:
                                row = {
                                    "scenario": name,
                                    "source": source,
                                    "plasma": _python_label(python, s.pythons),
                                    "error": repr(exc),
                                }
                            rows.append(row)
                            log(ingest_line(row))
                    finally:
                        await run.stop()
        finally:
            await asyncio.to_thread(broker.stop)
    return rows
