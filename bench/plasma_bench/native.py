"""Fixed-rate latency with a native load generator (``bench/native/sse_latency.c``).

The Python subscribers cost ~10 us per delivery when events are spaced, which on 2 cores
makes them, not the server, the bottleneck of the 100 events/s figure. This scenario compiles
the C client with the machine's ``cc``, starts the server (plasma with redis-server, or Nchan),
and publishes the same bench events at a fixed rate while the C client measures
publish-to-receive latency. ``--against nchan`` runs Nchan the same way, after plasma.

    ./scripts/bench --native-latency [--rate 100] [--rate-seconds 10] [--rate-subscribers 1000]
    ./scripts/bench --native-latency --tls     the client built with OpenSSL (libssl-dev)
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis

from plasma_bench.procstat import cpu_seconds
from plasma_bench.servers import REPO, NchanServer, PlasmaServer, RedisServer
from plasma_bench.tls import TLSFiles
from plasma_bench.wire import event_json

__all__ = ["fanout_summary", "run_native_latency"]

SOURCE = REPO / "bench" / "native" / "sse_latency.c"
EVENT_TYPE = "bench"


def build_client(tls: bool = False) -> Path:
    """Compile the C client into a temporary directory; fail clearly without a compiler.
    With ``tls`` it is built against OpenSSL (Debian: ``libssl-dev``)."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        raise RuntimeError("--native-latency needs a C compiler (cc/gcc) on PATH")
    out = Path(tempfile.mkdtemp(prefix="plasma-native-")) / "sse_latency"
    flags = ["-DSSE_TLS"] if tls else []
    libs = ["-lssl", "-lcrypto"] if tls else []
    try:
        subprocess.run([cc, "-O2", "-Wall", *flags, "-o", str(out), str(SOURCE), *libs], check=True)
    except subprocess.CalledProcessError:
        shutil.rmtree(out.parent, ignore_errors=True)
        if tls:
            raise RuntimeError(
                "--native-latency --tls builds the C client with OpenSSL: install its headers "
                "(Debian: apt-get install libssl-dev)"
            ) from None
        raise
    return out


def _percentiles(values: list[int]) -> dict[str, float]:
    """p50/p90/p99/max in ms of ns values (sorted in place)."""
    values.sort()
    last = len(values) - 1
    return {
        name: round(values[int(last * q)] / 1e6, 3)
        for name, q in (("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("max", 1.0))
    }


def fanout_summary(dump: Path) -> tuple[dict[str, Any], list[int]]:
    """Per event, from the client's delivery dump: when its first copy reached a socket
    (``start``: what the event waited before the fan-out began), how long the server took
    from the first copy to the last (``span``), and when the last copy landed (``end``).
    Also returns every arrival latency (ns, sorted) for the CDF plot."""
    first: dict[int, int] = {}
    last: dict[int, int] = {}
    arrivals: list[int] = []
    with dump.open() as f:
        for line in f:
            seq_s, _conn, published_s, arrived_s, _read = line.split()
            seq, lat = int(seq_s), int(arrived_s) - int(published_s)
            arrivals.append(lat)
            if lat < first.get(seq, 1 << 62):
                first[seq] = lat
            if lat > last.get(seq, -1):
                last[seq] = lat
    arrivals.sort()
    if not first:
        return {}, arrivals
    summary = {
        "events": len(first),
        "start_ms": _percentiles(list(first.values())),
        "span_ms": _percentiles([last[s] - first[s] for s in first]),
        "end_ms": _percentiles(list(last.values())),
    }
    return summary, arrivals


def run_native_latency(
    *,
    target: str = "plasma",
    rate: float,
    seconds: float,
    subscribers: int,
    event_bytes: int,
    env: dict[str, str],
    keep_deliveries: Path | None = None,
    tls: TLSFiles | None = None,
) -> tuple[dict[str, Any], list[int]]:
    """One fixed-rate run against ``target`` ("plasma" or "nchan"): the C client's figures
    plus the fan-out summary, and every arrival latency (ns, sorted) for plotting. The
    client's per-delivery lines are kept in ``keep_deliveries`` if given. With ``tls`` the
    server listens with that certificate and the client speaks TLS (publishers do not)."""
    binary = build_client(tls is not None)
    dump = keep_deliveries or binary.parent / "deliveries.txt"
    store: RedisServer | None = None
    server: PlasmaServer | NchanServer | None = None
    client: subprocess.Popen[str] | None = None
    publish: Callable[[bytes], object]
    try:
        if target == "nchan":
            server = NchanServer(tls).start()
            conn = http.client.HTTPConnection(server.host, server.publish_port)

            def publish(body: bytes) -> object:
                conn.request("POST", f"/pub?eventType={EVENT_TYPE}", body=body)
                return conn.getresponse().read()
        else:
            store = RedisServer().start()
            server = PlasmaServer(f"{store.host}:{store.port}", EVENT_TYPE, env, tls).start()
            r = redis.Redis(host=store.host, port=store.port)

            def publish(body: bytes) -> object:
                return r.publish(EVENT_TYPE, body)

        count = max(1, round(rate * seconds))
        epoch = time.time_ns()
        client = subprocess.Popen(
            [
                str(binary),
                "127.0.0.1",
                str(server.port),
                str(subscribers),
                server.sse_path(EVENT_TYPE),
                str(epoch),
                "0",
                str(count),
                str(seconds + 15),
            ],
            stdout=subprocess.PIPE,
            text=True,
            env={
                **os.environ,
                "SSE_LATENCY_DUMP": str(dump),
                "SSE_LATENCY_TLS_CA": str(tls.cert) if tls is not None else "",
            },
        )
        assert client.stdout is not None
        if client.stdout.readline().strip() != "ready":
            raise RuntimeError("native client did not get every stream")
        pids = server.server_pids()
        cpu_before = cpu_seconds(pids)
        start = time.perf_counter()
        for seq in range(count):
            delay = start + seq / rate - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            publish(event_json(EVENT_TYPE, seq, time.time_ns() - epoch, event_bytes))
        result: dict[str, Any] = json.loads(client.stdout.readline())
        server_cpu = cpu_seconds(pids) - cpu_before
        client.wait(10)  # the dump is complete once the client has exited
        result["fanout"], arrivals = fanout_summary(dump)
        result.update(
            target=target,
            tls=tls is not None,
            workers=env.get("PLASMA_WORKERS", "1") if target == "plasma" else "1",
            rate=rate,
            seconds=seconds,
            server_cpu_seconds=round(server_cpu, 3),
            server_cpu_s_per_M=round(server_cpu / max(1, result["deliveries"]) * 1e6, 2),
            loadgen_cpu_s_per_M=round(
                result["cpu_seconds"] / max(1, result["deliveries"]) * 1e6, 2
            ),
        )
        return result, arrivals
    finally:
        if client is not None:
            client.kill()
            client.wait()
        if server is not None:
            server.stop()
        if store is not None:
            store.stop()
        shutil.rmtree(binary.parent, ignore_errors=True)
