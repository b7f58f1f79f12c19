"""Several worker processes on one port: a supervisor that starts, restarts and drains them.

Each worker is a whole plasma server (hub, history, transports) bound to the same port with
``SO_REUSEPORT``, so the kernel spreads connections over the workers and per-delivery cost stays
what it is in one process. The supervisor serves no client: it reads the source once for the
node (``plasma.reader``, a thread) and feeds every worker the same numbered events, so any
worker resumes any id the node issued; it restarts a worker that dies (the new one gets the
node's history before it listens), and on SIGTERM/SIGINT/SIGHUP/SIGQUIT asks every worker to
drain and waits for them. Sources that carry broker ids (Redis Streams) are read by each worker.
Workers share their metrics through small snapshot files (see ``plasma.peers``), so ``/metrics``
and ``/hc`` on any worker speak for the whole server.

Workers are forked from a fork server that has imported the server's modules once (not the
supervisor: it runs the reader thread, and forking a threaded process is unsafe). They share
those pages instead of importing everything again, ~30 MB each; a worker's first act is
``gc.freeze()`` so the collector never writes to (and so copies) the inherited objects. A
restarted worker starts in milliseconds, as it imports nothing.
"""

from __future__ import annotations

import gc
import logging
import multiprocessing
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from multiprocessing.connection import wait
from multiprocessing.context import ForkServerContext, SpawnContext
from multiprocessing.process import BaseProcess

from plasma.config import Config
from plasma.errors import StartupError
from plasma.logging import configure_logging
from plasma.process import EXIT_SOURCE_GAVE_UP, EXIT_STARTUP, run_server
from plasma.reader import NodeReader, start_reader

__all__ = ["run_workers", "worker_count"]

log = logging.getLogger("plasma.workers")

_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)
_DRAIN_TIMEOUT = 10.0
_RESTART_DELAY = 0.5
_MAX_RESTART_DELAY = 30.0
# A worker that dies sooner than this after starting doubles the next restart delay.
_CRASH_LOOP_WINDOW = 10.0
# What the fork server imports before it forks workers: everything a worker runs.
_PRELOAD = ["plasma.server", "plasma.logging", "uvloop"]


def worker_count(config: Config) -> int:
    """``PLASMA_WORKERS``: 0 means one per core."""
    return config.workers or (os.cpu_count() or 1)


def _check_port(config: Config) -> None:
    """Fail early, in the supervisor, when the port is taken by a process that does not share it."""
    family = socket.AF_INET6 if ":" in config.host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        try:
            probe.bind((config.host or "", config.port))
        except OSError as exc:
            raise StartupError(
                f"PLASMA_PORT={config.port}: the port is already in use; stop the other process "
                "or choose another port"
            ) from exc


def _worker_main(config: Config, worker_id: int, peers_dir: str, feed_path: str) -> None:
    """Entry point of one worker process."""
    gc.freeze()  # the fork server's objects: never traversed (written to) by this process's GC
    configure_logging(config.error_log, config.access_log)
    sys.exit(run_server(config, worker_id=worker_id, peers_dir=peers_dir, feed_path=feed_path))


def _worker_context() -> ForkServerContext | SpawnContext:
    """A fork server preloaded with the server's modules, where the platform has one."""
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(_PRELOAD)
    return context


class _Supervisor:
    def __init__(self, config: Config, count: int) -> None:
        self.config = config
        self.count = count
        self.peers_dir = tempfile.mkdtemp(
            prefix="plasma-workers-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None
        )
        self.context = _worker_context()
        self.workers: dict[int, BaseProcess] = {}
        self.stopping = False
        self.exit_code = 0
        self.started_at: dict[int, float] = {}
        self.delays: dict[int, float] = {}
        self.reader: NodeReader | None = None

    def spawn(self, worker_id: int) -> None:
        process = self.context.Process(
            target=_worker_main,
            args=(self.config, worker_id, self.peers_dir, self.reader.path if self.reader else ""),
            name=f"plasma-worker-{worker_id}",
            daemon=False,
        )
        process.start()
        self.workers[worker_id] = process
        self.started_at[worker_id] = time.monotonic()
        log.info("worker started", extra={"worker": worker_id, "pid": process.pid})

    def request_stop(self, signum: int, _frame: object) -> None:
        self.stopping = True

    def run(self) -> int:
        for sig in _STOP_SIGNALS:
            signal.signal(sig, self.request_stop)
        try:
            self.reader = start_reader(self.config, self.peers_dir)
            for worker_id in range(self.count):
                self.spawn(worker_id)
            while not self.stopping:
                sentinels = {p.sentinel: wid for wid, p in self.workers.items()}
                ready = wait(list(sentinels), timeout=0.5)
                for sentinel in ready:
                    self._reap(sentinels[sentinel])  # type: ignore[index]
                if self.reader is not None and self.reader.exit_code is not None:
                    self.exit_code = self.reader.exit_code
                    self.stopping = True
        except StartupError as exc:
            log.critical(str(exc))
            print(f"plasma: {exc}", file=sys.stderr)
            self.exit_code = EXIT_STARTUP
        finally:
            self._drain()
            if self.reader is not None:
                self.reader.stop()  # after the workers: they drain with the feed still open
            shutil.rmtree(self.peers_dir, ignore_errors=True)
        return self.exit_code

    def _reap(self, worker_id: int) -> None:
        process = self.workers.pop(worker_id)
        process.join()
        code = process.exitcode
        if self.stopping:
            return
        if code in (EXIT_STARTUP, EXIT_SOURCE_GAVE_UP):
            log.critical(
                "worker cannot run; stopping the server",
                extra={"worker": worker_id, "pid": process.pid, "exit_code": code},
            )
            self.exit_code = code or 1
            self.stopping = True
            return
        # A worker that keeps dying at start is restarted ever more slowly, not in a tight loop.
        lived = time.monotonic() - self.started_at.get(worker_id, 0.0)
        delay = self.delays.get(worker_id, _RESTART_DELAY)
        delay = min(delay * 2, _MAX_RESTART_DELAY) if lived < _CRASH_LOOP_WINDOW else _RESTART_DELAY
        self.delays[worker_id] = delay
        log.error(
            "worker died; restarting it",
            extra={
                "worker": worker_id,
                "pid": process.pid,
                "exit_code": code,
                "restart_in_seconds": delay,
            },
        )
        deadline = time.monotonic() + delay
        while not self.stopping and time.monotonic() < deadline:
            time.sleep(0.1)  # a stop signal during a long back-off is honoured at once
        if not self.stopping:
            self.spawn(worker_id)

    def _drain(self) -> None:
        for process in self.workers.values():
            if process.is_alive() and process.pid is not None:
                os.kill(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + _DRAIN_TIMEOUT
        for worker_id, process in self.workers.items():
            process.join(max(0.0, deadline - time.monotonic()))
            if process.is_alive():
                log.error("worker did not stop in time; killing it", extra={"worker": worker_id})
                process.kill()
                process.join()
        self.workers.clear()
        log.info("all workers stopped")


def run_workers(config: Config) -> int:
    """Run ``PLASMA_WORKERS`` server processes on one port until a stop signal."""
    count = worker_count(config)
    try:
        _check_port(config)
    except StartupError as exc:
        log.critical(str(exc))
        return EXIT_STARTUP
    log.info("starting workers", extra={"workers": count, "port": config.port})
    return _Supervisor(config, count).run()
