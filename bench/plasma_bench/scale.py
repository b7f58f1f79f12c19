"""Scale scenarios (issue 16): many SSE connections on one node, and a reconnect storm.

``./scripts/bench --scale``: ``--connections`` streams (100,000) to plasma with ``--workers``
worker processes, from ``--swarms`` load-generator processes (``plasma_bench.swarm``), each
from its own loopback address 127.0.0.(2+i). Records the accept rate, the server's memory
before and after (summed VmRSS of the supervisor, fork server and workers, which counts shared
pages once per process, and summed PSS, which counts each page once: the memory in all), the
bytes per connection, and for each of ``--events`` broadcast events the time from publish to
the kernel's arrival of its last copy, and copies lost.

``./scripts/bench --storm``: ``--connections`` streams (20,000) to plasma reading a Redis
stream, events arriving at ``--rate`` (100/s); plasma is killed (every process, SIGKILL; or
SIGTERM with ``--storm-signal term``) and started again on the same port; every stream
reconnects at once with its ``Last-Event-ID``. Records how long after the restart the last
stream is back and caught up (it has received, in order, an event published after the
restart), every event exactly once and in order per stream, and how streams were refused
(``503`` with ``Retry-After`` is honoured by the load generator; anything else is an error).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import redis

from plasma_bench.procstat import cpu_seconds, rss_bytes
from plasma_bench.servers import BENCH_DIR, PlasmaServer, RedisServer

__all__ = ["pss_bytes", "run_scale", "run_storm"]

_PATH = "/?eventType=bench"


def pss_bytes(pids: list[int]) -> int:
    """Proportional set size of each process, summed: shared pages counted once in all."""
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1]) * 1024
                    break
        except OSError:
            continue
    return total


def _load() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


class _Swarms:
    """The load-generator processes and their line protocol."""

    def __init__(self, port: int, total: int, count: int, mode: str) -> None:
        per = -(-total // count)
        env = {**os.environ, "PYTHONPATH": str(BENCH_DIR)}
        self.procs: list[subprocess.Popen[str]] = []
        left = total
        for i in range(count):
            n = min(per, left)
            left -= n
            if n <= 0:
                break
            self.procs.append(
                subprocess.Popen(
                    [
                        *(sys.executable, "-m", "plasma_bench.swarm", "127.0.0.1", str(port)),
                        *(_PATH, str(n), f"127.0.0.{2 + i}", mode),
                    ],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    text=True,
                    env=env,
                )
            )

    def _line(self, proc: subprocess.Popen[str]) -> dict[str, Any]:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError(f"load generator {proc.pid} exited ({proc.poll()})")
        return dict(json.loads(line))

    def wait_ready(self) -> list[dict[str, Any]]:
        return [self._line(p) for p in self.procs]

    def ask(self, command: str) -> list[dict[str, Any]]:
        for p in self.procs:
            assert p.stdin is not None
            p.stdin.write(command + "\n")
            p.stdin.flush()
        return [self._line(p) for p in self.procs]

    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                try:
                    assert p.stdin is not None
                    p.stdin.write("quit\n")
                    p.stdin.close()
                except OSError:
                    pass
        for p in self.procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)


def _event(seq: int, pad: int) -> bytes:
    return b'{"meta":{"type":"bench"},"data":{"s":%d,"t":%d,"p":"%s"}}' % (
        seq,
        time.time_ns(),
        b"x" * pad,
    )


def _memory(pids: list[int]) -> dict[str, int]:
    return {"rss": rss_bytes(pids), "pss": pss_bytes(pids)}


def _merge(reports: list[dict[str, Any]]) -> dict[str, Any]:
    copies: dict[int, int] = {}
    latest: dict[int, int] = {}
    published: dict[int, int] = {}
    for r in reports:
        for k, v in r["copies"].items():
            copies[int(k)] = copies.get(int(k), 0) + v
        for k, v in r["latest"].items():
            latest[int(k)] = max(latest.get(int(k), 0), v)
        for k, v in r["published"].items():
            published.setdefault(int(k), v)
    return {"copies": copies, "latest": latest, "published": published}


def run_scale(
    *,
    connections: int,
    workers: int,
    swarms: int,
    events: int,
    event_bytes: int,
    env: dict[str, str],
    log: Any = print,
) -> dict[str, Any]:
    """100,000 SSE streams, a few broadcast events; the figures of issue 16 item 1."""
    redis_server = RedisServer().start()
    server_env = {"PLASMA_WORKERS": str(workers), "PLASMA_MAX_CONNECTIONS": "100000", **env}
    plasma = PlasmaServer(f"127.0.0.1:{redis_server.port}", "bench", server_env).start()
    swarm: _Swarms | None = None
    result: dict[str, Any] = {
        "scenario": "scale",
        "connections": connections,
        "workers": workers,
        "swarms": swarms,
        "load_before": _load(),
    }
    try:
        time.sleep(1.0 + 0.3 * workers)  # every worker listening, the fork server settled
        pids = plasma.server_pids()
        result["base"] = _memory(pids)
        log(
            f"scale: server base RSS {result['base']['rss'] / 2**20:.1f} MiB, "
            f"PSS {result['base']['pss'] / 2**20:.1f} MiB ({len(pids)} processes)"
        )
        cpu0 = cpu_seconds(pids)
        started = time.time()
        swarm = _Swarms(plasma.port, connections, swarms, "fanout")
        ready = swarm.wait_ready()
        took = max(r["seconds"] for r in ready)
        result["connect_seconds"] = round(took, 2)
        result["accepts_per_s"] = round(connections / took)
        result["accept_cpu_s"] = round(cpu_seconds(pids) - cpu0, 2)
        log(f"scale: {connections:,} streams in {took:.1f} s ({connections / took:,.0f}/s)")
        time.sleep(2.0)
        pids = plasma.server_pids()
        held = _memory(pids)
        result["held"] = held
        result["bytes_per_connection"] = {
            k: round((held[k] - result["base"][k]) / connections) for k in held
        }
        log(
            f"scale: held RSS {held['rss'] / 2**20:.1f} MiB, PSS {held['pss'] / 2**20:.1f} MiB; "
            f"per connection {result['bytes_per_connection']}"
        )
        per_event = []
        with redis.Redis(host="127.0.0.1", port=redis_server.port) as r:
            for seq in range(events):
                cpu0 = cpu_seconds(pids)
                r.publish("bench", _event(seq, max(0, event_bytes - 80)))
                deadline = time.monotonic() + 30
                while True:
                    time.sleep(0.5)
                    merged = _merge(swarm.ask("report"))
                    got = merged["copies"].get(seq, 0)
                    if got >= connections or time.monotonic() > deadline:
                        break
                published = merged["published"].get(seq, 0)
                last = merged["latest"].get(seq, 0)
                per_event.append(
                    {
                        "seq": seq,
                        "copies": got,
                        "lost": connections - got,
                        "last_copy_ms": round((last - published) / 1e6, 1) if published else None,
                        "server_cpu_s": round(cpu_seconds(pids) - cpu0, 2),
                    }
                )
                log(
                    f"scale: event {seq}: {got:,}/{connections:,} copies, last copy "
                    f"{per_event[-1]['last_copy_ms']} ms after publish"
                )
                time.sleep(1.0)
        result["events"] = per_event
        result["lost"] = sum(e["lost"] for e in per_event)
        result["last_copy_ms_max"] = max((e["last_copy_ms"] or 0) for e in per_event)
        result["after"] = _memory(plasma.server_pids())
        result["elapsed_s"] = round(time.time() - started, 1)
        result["load_after"] = _load()
        return result
    finally:
        if swarm is not None:
            swarm.stop()
        plasma.stop(30)
        redis_server.stop()


class _Publisher(threading.Thread):
    """XADD at a fixed rate, each event carrying its sequence and publish time."""

    def __init__(self, port: int, rate: float, pad: int) -> None:
        super().__init__(daemon=True)
        self.client = redis.Redis(host="127.0.0.1", port=port)
        self.interval = 1.0 / rate
        self.pad = pad
        self.sent = 0
        self.stopping = threading.Event()

    def run(self) -> None:
        next_at = time.monotonic()
        while not self.stopping.is_set():
            self.client.xadd("bench", {"event": _event(self.sent, self.pad)})
            self.sent += 1
            next_at += self.interval
            delay = next_at - time.monotonic()
            if delay > 0:
                time.sleep(delay)


def _kill_tree(plasma: PlasmaServer, how: str) -> None:
    """SIGKILL every process of the server (supervisor first), or SIGTERM the supervisor."""
    pids = plasma.server_pids()
    if how == "term":
        os.kill(plasma.pid, signal.SIGTERM)
    else:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    assert plasma.proc is not None
    plasma.proc.wait(30)
    deadline = time.monotonic() + 10
    while any(Path(f"/proc/{p}").exists() for p in pids[1:]) and time.monotonic() < deadline:
        time.sleep(0.02)


def run_storm(
    *,
    connections: int,
    workers: int,
    swarms: int,
    rate: float,
    before_s: float,
    after_s: float,
    event_bytes: int,
    how: str,
    env: dict[str, str],
    log: Any = print,
) -> dict[str, Any]:
    """Kill plasma under ``connections`` streams; how soon is every one back and caught up."""
    redis_server = RedisServer().start()
    server_env = {
        "PLASMA_SUBSCRIBER_TYPE": "redis-stream",
        "PLASMA_WORKERS": str(workers),
        "PLASMA_MAX_CONNECTIONS": str(max(50_000, connections)),
        **env,
    }
    addr = f"127.0.0.1:{redis_server.port}"
    plasma = PlasmaServer(addr, "bench", server_env).start()
    port = plasma.port
    swarm: _Swarms | None = None
    publisher: _Publisher | None = None
    result: dict[str, Any] = {
        "scenario": "storm",
        "connections": connections,
        "workers": workers,
        "rate": rate,
        "signal": how,
        "load_before": _load(),
    }
    try:
        time.sleep(0.5 + 0.3 * workers)
        swarm = _Swarms(port, connections, swarms, "storm")
        ready = swarm.wait_ready()
        log(f"storm: {connections:,} streams in {max(r['seconds'] for r in ready):.1f} s")
        publisher = _Publisher(redis_server.port, rate, max(0, event_bytes - 80))
        publisher.start()
        time.sleep(before_s)
        _kill_tree(plasma, how)
        killed = time.time_ns()
        plasma = PlasmaServer(addr, "bench", server_env)
        plasma.port = port
        restarted = time.time_ns()  # the clock of "within 10 s of the restart" starts here
        swarm.ask(f"mark {restarted}")
        plasma.start()
        listening = time.time_ns()
        log(
            f"storm: killed ({how}); the new plasma listens "
            f"{(listening - restarted) / 1e9:.2f} s after it was started"
        )
        deadline = time.monotonic() + after_s
        caught: list[int] = []
        while time.monotonic() < deadline:
            time.sleep(1.0)
            reports = swarm.ask("report")
            caught = [t for r in reports for t in r["first_after_mark"]]
            if all(caught):
                break
        publisher.stopping.set()
        publisher.join()
        final = publisher.sent
        # Every stream has every event (or the time is up).
        wait_until = time.monotonic() + 30
        while True:
            reports = swarm.ask("report")
            nexts = [n for r in reports for n in r["next"]]
            if all(n >= final for n in nexts) or time.monotonic() > wait_until:
                break
            time.sleep(1.0)
        caught = [t for r in reports for t in r["first_after_mark"]]
        back = [t for t in caught if t]
        result.update(
            {
                "events": final,
                "down_s": round((restarted - killed) / 1e9, 2),
                "start_to_listening_s": round((listening - restarted) / 1e9, 2),
                "caught_up": len(back),
                "caught_up_s_max": round((max(back) - restarted) / 1e9, 2) if back else None,
                "caught_up_s_p50": (
                    round((sorted(back)[len(back) // 2] - restarted) / 1e9, 2) if back else None
                ),
                "complete_streams": sum(1 for n in nexts if n >= final),
                "lost": sum(r["lost"] for r in reports),
                "duplicated_or_reordered": sum(r["duplicated"] for r in reports),
                "retried_503": sum(r["retried_503"] for r in reports),
                "refused_connects": sum(r["refused"] for r in reports),
                "errors": sum(r["errors"] for r in reports),
                "statuses": _sum_dicts([r["statuses"] for r in reports]),
                "connects": sum(r["connects"] for r in reports),
                "load_after": _load(),
            }
        )
        log(
            f"storm: {result['caught_up']:,}/{connections:,} back and caught up, the last "
            f"{result['caught_up_s_max']} s after the restart (median "
            f"{result['caught_up_s_p50']} s); {result['complete_streams']:,} streams have all "
            f"{final} events; lost {result['lost']}, duplicated/reordered "
            f"{result['duplicated_or_reordered']}; 503 retried {result['retried_503']}, "
            f"refused connects {result['refused_connects']}, other errors {result['errors']}"
        )
        return result
    finally:
        if publisher is not None:
            publisher.stopping.set()
        if swarm is not None:
            swarm.stop()
        plasma.stop(30)
        redis_server.stop()


def _sum_dicts(items: list[dict[str, int]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for item in items:
        for k, v in item.items():
            out[k] = out.get(k, 0) + v
    return out
