"""Fixed-rate latency with a native load generator (``bench/native/sse_latency.c``).

The Python subscribers cost ~10 us per delivery when events are spaced, which on 2 cores
makes them, not the server, the bottleneck of the 100 events/s figure. This scenario compiles
the C client with the machine's ``cc``, starts redis-server and plasma, and publishes the same
bench events at a fixed rate while the C client measures publish-to-receive latency.

    ./scripts/bench --native-latency [--rate 100] [--rate-seconds 10] [--rate-subscribers 1000]
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import redis

from plasma_bench.procstat import cpu_seconds
from plasma_bench.servers import REPO, PlasmaServer, RedisServer
from plasma_bench.wire import event_json

__all__ = ["run_native_latency"]

SOURCE = REPO / "bench" / "native" / "sse_latency.c"


def build_client() -> Path:
    """Compile the C client into a temporary directory; fail clearly without a compiler."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        raise RuntimeError("--native-latency needs a C compiler (cc/gcc) on PATH")
    out = Path(tempfile.mkdtemp(prefix="plasma-native-")) / "sse_latency"
    subprocess.run([cc, "-O2", "-Wall", "-o", str(out), str(SOURCE)], check=True)
    return out


def run_native_latency(
    *, rate: float, seconds: float, subscribers: int, event_bytes: int, env: dict[str, str]
) -> dict[str, Any]:
    binary = build_client()
    store = RedisServer().start()
    server = PlasmaServer(f"{store.host}:{store.port}", "bench", env).start()
    client: subprocess.Popen[str] | None = None
    try:
        count = max(1, round(rate * seconds))
        epoch = time.time_ns()
        client = subprocess.Popen(
            [
                str(binary),
                "127.0.0.1",
                str(server.port),
                str(subscribers),
                "bench",
                str(epoch),
                "0",
                str(count),
                str(seconds + 15),
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert client.stdout is not None
        if client.stdout.readline().strip() != "ready":
            raise RuntimeError("native client did not get every stream")
        pids = server.server_pids()
        r = redis.Redis(host=store.host, port=store.port)
        cpu_before = cpu_seconds(pids)
        start = time.perf_counter()
        for seq in range(count):
            delay = start + seq / rate - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            r.publish("bench", event_json("bench", seq, time.time_ns() - epoch, event_bytes))
        result: dict[str, Any] = json.loads(client.stdout.readline())
        server_cpu = cpu_seconds(pids) - cpu_before
        result.update(
            rate=rate,
            seconds=seconds,
            server_cpu_seconds=round(server_cpu, 3),
            server_cpu_s_per_M=round(server_cpu / max(1, result["deliveries"]) * 1e6, 2),
            loadgen_cpu_s_per_M=round(
                result["cpu_seconds"] / max(1, result["deliveries"]) * 1e6, 2
            ),
        )
        return result
    finally:
        if client is not None:
            client.kill()
            client.wait()
        server.stop()
        store.stop()
