"""A reconnect storm: plasma killed under a few hundred streams and started again on its port.

Real processes throughout: redis-server, plasma reading a Redis stream (two workers, so a
stream may come back on either), and real HTTP clients on asyncio sockets that do what a
browser's EventSource does: reconnect at once with ``Last-Event-ID``, retry a refused connect,
and honour ``Retry-After`` on a ``503``. Events keep arriving during the restart. Every client
must end with every event exactly once, in order. Not timed: how fast is the benchmark's job
(``./scripts/bench --storm``).
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
from pathlib import Path

import orjson
import pytest

from tests.support import PlasmaProcess, RedisServer, async_wait_for

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server not installed"),
]

CLIENTS = 300
_SEQ = re.compile(rb'"s":(\d+)')


class Client:
    """One SSE stream that resumes like an EventSource; keeps every sequence it received."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.seqs: list[int] = []
        self.last_id = ""
        self.connected = asyncio.Event()
        self.refusals: list[int] = []
        """Statuses other than 200 (each must be a 503 with Retry-After)."""
        self.without_retry_after = 0
        self.task = asyncio.get_running_loop().create_task(self.run())

    async def run(self) -> None:
        while True:
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
            except OSError:
                await asyncio.sleep(0.05)  # the server is down: try again soon
                continue
            try:
                await self._stream(reader, writer)
            except (OSError, asyncio.IncompleteReadError):
                pass
            finally:
                writer.close()
            self.connected.clear()

    async def _stream(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        resume = f"Last-Event-ID: {self.last_id}\r\n" if self.last_id else ""
        writer.write(
            f"GET /?eventType=storm HTTP/1.0\r\nHost: t\r\nAccept: text/event-stream\r\n"
            f"{resume}\r\n".encode()
        )
        head = await reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        if status != 200:
            self.refusals.append(status)
            retry = re.search(rb"(?im)^retry-after:\s*(\d+)", head)
            if retry is None:
                self.without_retry_after += 1
            await asyncio.sleep(float(retry.group(1)) if retry else 1.0)
            return
        self.connected.set()
        while True:
            frame = await reader.readuntil(b"\n\n")
            event_id = next(
                (line[4:] for line in frame.split(b"\n") if line.startswith(b"id: ")), None
            )
            match = _SEQ.search(frame)
            if match is not None:
                self.seqs.append(int(match.group(1)))
            if event_id is not None:
                self.last_id = event_id.decode()


def _tree(root: int) -> list[int]:
    """``root`` and its live descendants (the supervisor, its fork server and workers)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            children.setdefault(int(stat[stat.rindex(")") + 2 :].split()[1]), []).append(int(entry))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, ()))
    return out


async def test_a_few_hundred_streams_resume_after_a_restart_with_every_event_once_in_order(
    redis_server: RedisServer,
) -> None:
    env = {
        "PLASMA_SUBSCRIBER_TYPE": "redis-stream",
        "PLASMA_SUBSCRIBER_REDIS_ADDR": redis_server.addr,
        "PLASMA_SUBSCRIBER_REDIS_CHANNELS": "storm",
        "PLASMA_WORKERS": "2",
        "PLASMA_RETRY_MS": "1000",
    }
    first = PlasmaProcess(env=env).start()
    second: PlasmaProcess | None = None
    env["PLASMA_PORT"] = str(first.port)
    clients = [Client(first.port) for _ in range(CLIENTS)]
    sent = 0
    publishing = True
    client = redis_server.client()

    async def publish() -> None:
        nonlocal sent
        while publishing:
            body = orjson.dumps({"meta": {"type": "storm"}, "data": {"s": sent}})
            await asyncio.to_thread(client.xadd, "storm", {"event": body})
            sent += 1
            await asyncio.sleep(0.02)

    try:
        await async_wait_for(
            lambda: all(c.connected.is_set() for c in clients), timeout=60, what="every stream"
        )
        publisher = asyncio.get_running_loop().create_task(publish())
        await async_wait_for(lambda: all(len(c.seqs) >= 5 for c in clients), timeout=60)

        assert first.proc is not None
        for pid in _tree(first.proc.pid):
            os.kill(pid, signal.SIGKILL)
        first.stop()
        at_kill = sent
        second = PlasmaProcess(env=env).start(wait=False)
        second.wait_ready(timeout=60)
        await async_wait_for(lambda: sent >= at_kill + 50, timeout=60, what="events after")
        publishing = False
        await publisher
        await async_wait_for(
            lambda: all(len(c.seqs) >= sent for c in clients),
            timeout=120,
            what="every stream to catch up",
        )
    finally:
        publishing = False
        for c in clients:
            c.task.cancel()
        await asyncio.gather(*(c.task for c in clients), return_exceptions=True)
        if second is not None:
            second.stop()
        client.close()

    expected = list(range(sent))
    for c in clients:
        assert c.seqs == expected, (len(c.seqs), sent)
        assert set(c.refusals) <= {503} and c.without_retry_after == 0, c.refusals
