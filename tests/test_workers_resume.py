"""Several workers, one id space: a client resumes on whichever worker its reconnect reaches.

Twenty clients read a few events at a time, hang up and reconnect with their ``Last-Event-ID``
while events flow; ``SO_REUSEPORT`` sends each reconnect to any worker. Every client must end
up with every event exactly once, in order, and never see a gap event (the node holds every
event in its history). Mid-run one worker is killed with SIGKILL; its clients reconnect
elsewhere, and its replacement, which joins with the node's history, resumes ids issued before
it existed.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import re
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

import orjson
import pytest
import redis.asyncio as aioredis

from tests.support import PlasmaProcess, RedisServer, async_wait_for

pytestmark = pytest.mark.integration

CLIENTS = 20
TYPE = "churn"
# Events before the kill, right after it (before the replacement exists), and at the end.
PHASES = (100, 20, 100)
_FRAME = re.compile(rb"(?:event: (\w+)\n)?id: ([^\n]*)\ndata: ([^\n]*)\n\n")
_LENGTH = re.compile(rb"content-length: *(\d+)", re.IGNORECASE)


@dataclass
class Session:
    """One connection: the worker that served it and the id it resumed from."""

    pid: int
    last_id: str | None
    last_seq: int | None
    events: int = 0


@dataclass
class Client:
    port: int
    total: int
    rng: random.Random
    seqs: list[int] = field(default_factory=list)
    gaps: list[bytes] = field(default_factory=list)
    sessions: list[Session] = field(default_factory=list)
    last_id: str | None = None
    live: asyncio.Event = field(default_factory=asyncio.Event)
    """Set once the current session's stream has opened."""
    writer: asyncio.StreamWriter | None = None

    @property
    def done(self) -> bool:
        return bool(self.seqs) and self.seqs[-1] >= self.total - 1

    async def run(self) -> None:
        while not self.done:
            with contextlib.suppress(OSError, asyncio.IncompleteReadError):
                await self.session(self.rng.randint(2, 12))

    async def session(self, wanted: int) -> None:
        """Ask ``/metrics`` which worker this is, then stream on the same connection."""
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        self.writer = writer
        try:
            writer.write(b"GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n")
            head = await reader.readuntil(b"\r\n\r\n")
            length = _LENGTH.search(head)
            assert length is not None, head
            pid = orjson.loads(await reader.readexactly(int(length.group(1))))["pid"]
            resume = f"Last-Event-ID: {self.last_id}\r\n" if self.last_id else ""
            writer.write(
                f"GET /?eventType={TYPE} HTTP/1.1\r\nHost: t\r\nAccept: text/event-stream\r\n"
                f"{resume}\r\n".encode()
            )
            session = Session(pid, self.last_id, self.seqs[-1] if self.seqs else None)
            self.sessions.append(session)
            buffer = b""
            while session.events < wanted and not self.done:
                chunk = await reader.read(65536)
                if not chunk:
                    return  # the worker went away: reconnect
                buffer += chunk
                if b"retry:" in buffer:
                    self.live.set()
                end = 0
                for match in _FRAME.finditer(buffer):
                    end = match.end()
                    name, event_id, data = match.groups()
                    if name == b"gap":
                        self.gaps.append(data)
                        continue
                    self.seqs.append(orjson.loads(data)["data"])
                    self.last_id = event_id.decode()
                    session.events += 1
                buffer = buffer[end:]
        finally:
            writer.close()

    def hang_up(self) -> None:
        """End the current session now (the client reconnects with its last id)."""
        self.live.clear()
        if self.writer is not None:
            self.writer.close()


def _log_time(line: dict[str, object]) -> float:
    return datetime.fromisoformat(str(line["time"]).replace("Z", "+00:00")).timestamp()


def _lines(server: PlasmaProcess, msg: str) -> list[dict[str, object]]:
    return [line for line in server.log_lines() if line.get("msg") == msg]


@pytest.mark.parametrize("workers", [2, 4])
async def test_reconnects_resume_on_any_worker_even_across_a_worker_kill(
    redis_plasma: Callable[..., PlasmaProcess], redis_server: RedisServer, workers: int
) -> None:
    server = redis_plasma(wait=False, PLASMA_WORKERS=str(workers))
    server.wait_ready(timeout=30)

    await async_wait_for(
        lambda: len(_lines(server, "plasma listening")) == workers,
        timeout=30,
        what="every worker to listen",
    )
    await async_wait_for(lambda: redis_server.numsub("events") == 1, what="the node's reader")
    total = sum(PHASES)
    rng = random.Random(19)
    clients = [Client(server.port, total, random.Random(rng.random())) for _ in range(CLIENTS)]
    tasks = [asyncio.create_task(c.run()) for c in clients]
    for c in clients:
        await asyncio.wait_for(c.live.wait(), 20)

    published_at: list[float] = []
    publisher = aioredis.Redis(host="127.0.0.1", port=redis_server.port)

    async def publish(count: int) -> None:
        for _ in range(count):
            published_at.append(time.time())
            body = orjson.dumps({"meta": {"type": TYPE}, "data": len(published_at) - 1})
            await publisher.publish("events", body)
            await asyncio.sleep(0.01)

    try:
        await publish(PHASES[0])
        victim = min(int(str(line["pid"])) for line in _lines(server, "worker started"))
        os.kill(victim, signal.SIGKILL)
        await publish(PHASES[1])
        await async_wait_for(
            lambda: len(_lines(server, "plasma listening")) == workers + 1,
            timeout=30,
            what="the replacement to listen",
        )
        replacement = int(str(_lines(server, "worker started")[-1]["pid"]))
        joined = _log_time(_lines(server, "joined the node's events")[-1])
        # Hang every client up until a reconnect lands on the replacement: it resumes ids
        # issued before it joined, so only the node's history it received can vouch for them.
        for _ in range(10):
            before = sum(len(c.sessions) for c in clients)
            for c in clients:
                c.hang_up()
            for c in clients:
                await asyncio.wait_for(c.live.wait(), 20)
            if any(s.pid == replacement for c in clients for s in c.sessions[-1:]):
                break
            assert sum(len(c.sessions) for c in clients) >= before + CLIENTS
        await publish(PHASES[2])
        _, waiting = await asyncio.wait(tasks, timeout=30)
        assert not waiting, [(len(c.seqs), c.seqs[-3:], c.gaps[:2]) for c in clients if not c.done]
    finally:
        for task in tasks:
            task.cancel()
        await publisher.aclose()

    for c in clients:
        assert c.gaps == [], "a gap event although the node held every event"
        assert c.seqs == list(range(total)), "every event exactly once, in order"

    resumes = [(c, s) for c in clients for s in c.sessions if s.last_id is not None]
    # SO_REUSEPORT spread the reconnects: many resumed on a worker that never served the client.
    crossed = [
        b
        for c in clients
        for a, b in zip(c.sessions, c.sessions[1:], strict=False)
        if b.last_id is not None and a.pid != b.pid
    ]
    assert len(crossed) > len(resumes) // (2 * workers), (len(crossed), len(resumes))
    from_history = [
        s
        for _, s in resumes
        if s.pid == replacement and s.last_seq is not None and published_at[s.last_seq] < joined
    ]
    assert from_history, "no client resumed on the replacement with an id older than it"
    assert server.stop() == 0
