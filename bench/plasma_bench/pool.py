"""The controller's side of the subscriber processes: start them, command them, gather replies."""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing as mp
from array import array
from collections.abc import Iterable
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any

from plasma_bench.clients import client_main

__all__ = ["ClientPool"]


class ClientPool:
    """``procs`` subscriber processes, each holding an equal share of the connections."""

    def __init__(self, procs: int) -> None:
        ctx = mp.get_context("spawn")
        # Two one-way pipes per process: uvloop makes a watched fd non-blocking, so the child
        # watches only its command pipe and writes replies (latency arrays of MBs) blocking.
        self._cmd: list[Connection] = []
        self._conns: list[Connection] = []
        self._procs: list[BaseProcess] = []
        self._inbox: list[asyncio.Queue[tuple[str, Any]]] = []
        for i in range(procs):
            cmd_r, cmd_w = ctx.Pipe(duplex=False)
            rep_r, rep_w = ctx.Pipe(duplex=False)
            p = ctx.Process(
                target=client_main, args=(cmd_r, rep_w, i), daemon=True, name=f"bench-{i}"
            )
            p.start()
            cmd_r.close()
            rep_w.close()
            self._cmd.append(cmd_w)
            self._conns.append(rep_r)
            self._procs.append(p)
        self.pids: list[int] = []
        self.nofile: list[int] = []
        self.errors: list[str] = []
        self._done: dict[int, int] = {}

    @property
    def size(self) -> int:
        return len(self._procs)

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        for i, conn in enumerate(self._conns):
            q: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
            self._inbox.append(q)
            loop.add_reader(conn.fileno(), self._on_message, i)
        hellos = await self._gather("hello", range(self.size), 30.0)
        self.pids = [h["pid"] for h in hellos]
        self.nofile = hellos[0]["nofile"]

    def _on_message(self, i: int) -> None:
        conn = self._conns[i]
        try:
            while conn.poll():
                kind, *rest = conn.recv()
                if kind == "error":
                    self.errors.append(str(rest[0]))
                    continue
                self._inbox[i].put_nowait((kind, rest[0] if rest else None))
        except (EOFError, OSError):
            asyncio.get_running_loop().remove_reader(conn.fileno())
            self._inbox[i].put_nowait(("eof", None))

    def send(self, i: int, cmd: str, **args: Any) -> None:
        self._cmd[i].send((cmd, args))

    def broadcast(self, cmd: str, **args: Any) -> None:
        for i in range(self.size):
            self.send(i, cmd, **args)

    async def _wait(self, i: int, kind: str, timeout: float) -> Any:
        async with asyncio.timeout(timeout):
            while True:
                got, payload = await self._inbox[i].get()
                if got == kind:
                    return payload
                if got == "eof":
                    raise RuntimeError(f"client process {i} exited: {self.errors}")
                # Replies of an earlier, timed-out step (e.g. a late "done") are dropped.

    async def _gather(self, kind: str, which: Iterable[int], timeout: float) -> list[Any]:
        return list(await asyncio.gather(*(self._wait(i, kind, timeout) for i in which)))

    async def connect(
        self,
        kind: str,
        host: str,
        port: int,
        count: int,
        *,
        path: str,
        types: list[str],
        strict: bool,
        timeout: float,
        concurrency: int = 200,
        auth: dict[str, str] | None = None,
        unicast: bool = False,
        tls: str | None = None,
    ) -> dict[str, Any]:
        """Open ``count`` more connections, split over the processes; wait for all.

        ``unicast``: SSE connection ``n`` (0 … count-1) subscribes to its own type
        ``types[0] + str(n)``, and ``path`` holds ``{type}`` where that type goes."""
        shares = [
            count // self.size + (1 if i < count % self.size else 0) for i in range(self.size)
        ]
        firsts = [sum(shares[:i]) for i in range(self.size)]
        for i, n in enumerate(shares):
            self.send(
                i,
                "connect",
                kind=kind,
                host=host,
                port=port,
                count=n,
                path=path,
                types=types,
                concurrency=concurrency,
                timeout=timeout,
                strict=strict,
                auth=auth,
                unicast_from=firsts[i] if unicast else None,
                tls=tls,
            )
        replies = await self._gather("connected", range(self.size), timeout + 30)
        errors: dict[str, int] = {}
        for r in replies:
            for k, v in r["errors"].items():
                errors[k] = errors.get(k, 0) + v
        return {
            "ok": sum(r["ok"] for r in replies),
            "failed": sum(r["failed"] for r in replies),
            "errors": errors,
            "total": sum(r["total"] for r in replies),
        }

    async def phase(
        self, mode: str, base: int, count: int, *, latency: bool = False, epoch_ns: int = 0
    ) -> int:
        """Start a phase in every process; return the number of live connections."""
        self._done = {}
        for q in self._inbox:  # drop stale "done" replies of an earlier phase
            while not q.empty():
                q.get_nowait()
        self.broadcast(
            "phase", mode=mode, base=base, count=count, latency=latency, epoch_ns=epoch_ns
        )
        started = await self._gather("phase_started", range(self.size), 30.0)
        return sum(s["conns"] for s in started)

    async def wait_done(self, timeout: float) -> tuple[bool, int]:
        """Wait (at most ``timeout`` s) until every process has the whole phase.

        Returns (all done, the latest completion time in ns). May be called again after a
        timeout: processes already done are remembered.
        """
        waiting = [i for i in range(self.size) if i not in self._done]
        results = await asyncio.gather(
            *(self._wait(i, "done", timeout) for i in waiting), return_exceptions=True
        )
        for i, r in zip(waiting, results, strict=True):
            if isinstance(r, dict):
                self._done[i] = r["done_ns"]
        return len(self._done) == self.size, max(self._done.values(), default=0)

    async def collect(self) -> dict[str, Any]:
        """Every process's phase figures, summed; latencies concatenated (ns)."""
        self.broadcast("collect")
        replies = await self._gather("collected", range(self.size), 60.0)
        total: dict[str, Any] = {}
        for key in (
            "conns",
            "incomplete",
            "received",
            "lost",
            "duplicated",
            "reordered",
            "stale",
            "strict_errors",
            "lost_connections",
        ):
            total[key] = sum(r[key] for r in replies)
        firsts = [r["first_ns"] for r in replies if r["first_ns"]]
        total["first_ns"] = min(firsts, default=0)
        total["last_ns"] = max((r["last_ns"] for r in replies), default=0)
        lat = array("q")
        for r in replies:
            lat.frombytes(r["latencies"])
        total["latencies"] = lat
        errors: dict[str, int] = {}
        for r in replies:
            for k, v in r["errors"].items():
                errors[k] = errors.get(k, 0) + v
        total["errors"] = errors
        total["cpu"] = sum(r["cpu"] for r in replies)
        return total

    async def close(self, kind: str = "") -> None:
        self.broadcast("close", kind=kind)
        await self._gather("closed", range(self.size), 60.0)

    async def stop(self) -> None:
        loop = asyncio.get_running_loop()
        for cmd, conn in zip(self._cmd, self._conns, strict=True):
            with contextlib.suppress(OSError):
                cmd.send(("stop", {}))
            loop.remove_reader(conn.fileno())
        for p in self._procs:
            await asyncio.to_thread(p.join, 10)
            if p.is_alive():
                p.kill()
                p.join(5)
        for conn in (*self._cmd, *self._conns):
            conn.close()
