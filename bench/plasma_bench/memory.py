"""Memory held per event: publish N events of one size, read the server's RSS and history bytes.

    PYTHONPATH=bench .venv/bin/python -m plasma_bench.memory            # 1 KB, 100 KB, 900 KB
    PYTHONPATH=bench .venv/bin/python -m plasma_bench.memory --sizes 900000 --count 100
    ... --env PYTHONPATH=/path/to/other/src    # measure another checkout of plasma

For each size: a fresh redis-server and plasma (history large enough for every event, no age
bound), one SSE subscriber that reads and discards everything, the idle RSS, then N events
published in paced batches (so Redis never cuts the subscription), then, once the subscriber
has read everything, the RSS again. Per event held = (RSS after - idle RSS) / N; a server that
reports ``history_bytes`` is also checked against 2 x (history + queued client bytes) + idle.
"""

from __future__ import annotations

import argparse
import json
import socket
import threading
import time
import urllib.request
from typing import Any

import redis

from plasma_bench.procstat import rss_bytes
from plasma_bench.servers import PlasmaServer, RedisServer

_DEFAULT_COUNTS = {1_000: 10_000, 100_000: 400, 900_000: 100}
_BATCH_BYTES = 4 << 20  # per pipelined write: well under Redis's 32 MB pub/sub limit


def _metrics(port: int) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        return dict(json.loads(r.read()))


class _Reader(threading.Thread):
    """One SSE subscriber that reads as fast as it can and keeps only a byte count."""

    def __init__(self, port: int, event_type: str) -> None:
        super().__init__(daemon=True)
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.sendall(
            f"GET /?eventType={event_type} HTTP/1.1\r\nHost: x\r\n"
            "Accept: text/event-stream\r\n\r\n".encode()
        )
        self.received = 0

    def run(self) -> None:
        while True:
            try:
                data = self.sock.recv(1 << 20)
            except OSError:
                return
            if not data:
                return
            self.received += len(data)


def _event(size: int, n: int) -> bytes:
    head = b'{"meta":{"type":"mem"},"data":{"n":%d,"p":"' % n
    return head + b"x" * max(0, size - len(head) - 3) + b'"}}'


def measure(size: int, count: int, env: dict[str, str]) -> dict[str, Any]:
    """One fresh server; returns the figures for ``count`` events of ``size`` bytes."""
    redis_server = RedisServer().start()
    server_env = {
        "PLASMA_HISTORY_SIZE": str(count + 10),
        "PLASMA_HISTORY_TTL": "0",
        "PLASMA_HISTORY_MAX_BYTES": str(4 << 30),
        "PLASMA_MAX_BUFFERED_BYTES": str(4 << 30),
        **env,
    }
    plasma = PlasmaServer(f"127.0.0.1:{redis_server.port}", "mem", server_env).start()
    try:
        reader = _Reader(plasma.port, "mem")
        reader.start()
        time.sleep(1.0)
        pids = plasma.server_pids()
        idle = rss_bytes(pids)
        published = 0
        with redis.Redis(host="127.0.0.1", port=redis_server.port) as r:
            per_batch = max(1, _BATCH_BYTES // size)
            while published < count:
                pipe = r.pipeline(transaction=False)
                for n in range(published, min(count, published + per_batch)):
                    pipe.publish("mem", _event(size, n))
                published += len(pipe.execute())
                deadline = time.monotonic() + 60
                while _metrics(plasma.port)["events_received"] < published:
                    if time.monotonic() > deadline:
                        raise RuntimeError("plasma did not receive the events in 60 s")
                    time.sleep(0.02)
        # Everything read by the subscriber: the bytes written stop growing.
        last = -1
        while reader.received != last:
            last = reader.received
            time.sleep(0.5)
        time.sleep(1.0)
        held = rss_bytes(pids)
        m = _metrics(plasma.port)
        reader.sock.close()
        out: dict[str, Any] = {
            "size": size,
            "count": count,
            "idle_rss": idle,
            "rss": held,
            "per_event": (held - idle) / count,
            "per_event_ratio": (held - idle) / count / size,
            "history_events": m.get("history_events"),
            "history_bytes": m.get("history_bytes"),
            "client_buffered_bytes": m.get("client_buffered_bytes"),
            "received_by_client": reader.received,
        }
        if m.get("history_bytes") is not None:
            bound = idle + 2 * (m["history_bytes"] + (m.get("client_buffered_bytes") or 0))
            out["bound"] = bound
            out["within_bound"] = held <= bound
        return out
    finally:
        plasma.stop()
        redis_server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(prog="plasma_bench.memory", description=__doc__)
    parser.add_argument("--sizes", default="1000,100000,900000", help="event sizes in bytes")
    parser.add_argument("--count", type=int, default=0, help="events per size (0: per size)")
    parser.add_argument(
        "--env", action="append", default=[], metavar="KEY=VALUE", help="server environment"
    )
    parser.add_argument("--json", action="store_true", help="print JSON lines only")
    args = parser.parse_args()
    env = dict(item.split("=", 1) for item in args.env)
    for size in (int(s) for s in args.sizes.split(",")):
        count = args.count or _DEFAULT_COUNTS.get(size, max(10, (64 << 20) // size))
        result = measure(size, count, env)
        if args.json:
            print(json.dumps(result), flush=True)
            continue
        print(
            f"{size:>8} B x {count:>6}: idle {result['idle_rss'] / 2**20:.1f} MiB, "
            f"after {result['rss'] / 2**20:.1f} MiB, per event {result['per_event'] / 1024:.1f} "
            f"KiB = {result['per_event_ratio']:.2f} x size, history_bytes "
            f"{result['history_bytes']}, within 2x bound: {result.get('within_bound')}",
            flush=True,
        )


if __name__ == "__main__":
    main()
