"""What every attack test watches: the canaries' delays and the server's memory.

The acceptance bar of the attack findings: while one client attacks, a canary SSE stream and a
canary gRPC stream on the same server receive every event within ``MAX_DELAY`` seconds, and the
server's resident memory grows by at most ``MAX_RSS_GROWTH`` bytes.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import orjson

from tests.support import PlasmaProcess, RedisServer

__all__ = ["MAX_DELAY", "MAX_RSS_GROWTH", "Canaries", "MemoryWatch", "rss"]

MAX_DELAY = 1.0
MAX_RSS_GROWTH = 64 << 20

_REPO = Path(__file__).resolve().parents[2]


def rss(pid: int) -> int:
    """Resident memory of process ``pid`` in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for pid {pid}")


class MemoryWatch:
    """Samples a process's RSS in a thread; ``growth`` is the peak over the first sample."""

    def __init__(self, pid: int, interval: float = 0.05) -> None:
        self.pid = pid
        self.baseline = rss(pid)
        self.peak = self.baseline
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> MemoryWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self.peak = max(self.peak, rss(self.pid))
            except (OSError, AssertionError):
                return

    @property
    def growth(self) -> int:
        return self.peak - self.baseline

    def assert_bounded(self) -> None:
        assert self.growth <= MAX_RSS_GROWTH, (
            f"RSS grew by {self.growth >> 20} MB (from {self.baseline >> 20} MB), "
            f"more than {MAX_RSS_GROWTH >> 20} MB"
        )


class Canaries:
    """The canary process (``tests/attacks/canary.py``) for one plasma and its redis-server."""

    def __init__(
        self, server: PlasmaProcess, redis_server: RedisServer, *, ca_file: str = ""
    ) -> None:
        self._args = [sys.executable, "-m", "tests.attacks.canary"]
        self._args += [str(server.port), str(redis_server.port)]
        if ca_file:
            self._args.append(ca_file)
        self._proc: subprocess.Popen[bytes] | None = None
        self.report: dict[str, Any] = {}

    def __enter__(self) -> Canaries:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PLASMA_")}
        self._proc = subprocess.Popen(
            self._args,
            cwd=_REPO,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        assert self._proc.stdout is not None
        line = self._proc.stdout.readline()
        if line.strip() != b"ready":
            self._proc.kill()
            raise AssertionError(f"the canaries did not start: {line!r}")
        return self

    def __exit__(self, *exc: object) -> None:
        proc = self._proc
        assert proc is not None and proc.stdin is not None and proc.stdout is not None
        proc.stdin.close()
        try:
            out = proc.stdout.read()
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise AssertionError("the canaries did not stop") from None
        lines = out.strip().splitlines()
        if lines:
            self.report = orjson.loads(lines[-1])

    def assert_on_time(self) -> None:
        """Both canaries heard every event, none later than ``MAX_DELAY`` after publication."""
        report = self.report
        assert report, "the canaries reported nothing"
        assert report["published"] > 0
        for name in ("sse", "grpc"):
            heard = report[name]
            assert not heard["missing"], f"{name} canary missed events {heard['missing'][:20]}"
            assert heard["max_delay"] <= MAX_DELAY, (
                f"{name} canary heard an event {heard['max_delay']:.2f}s late"
            )
