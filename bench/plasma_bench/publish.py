"""Publishers: Redis ``PUBLISH`` (plasma) and HTTP ``POST`` (Nchan), pipelined on one connection."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Protocol

from plasma_bench.wire import event_json, http_post, resp_publish

__all__ = ["NchanPublisher", "Publisher", "RedisPublisher", "wait_acknowledged"]


class Acknowledged(Protocol):
    """A publisher that counts what it sent and the broker's replies, and says when a reply
    arrived."""

    sent: int
    replies: int
    _changed: asyncio.Event


async def wait_acknowledged(publisher: Acknowledged, timeout: float) -> bool:
    """Wait until ``publisher`` has a reply for everything it sent; False after ``timeout``."""
    try:
        async with asyncio.timeout(timeout):
            while publisher.replies < publisher.sent:
                publisher._changed.clear()
                await publisher._changed.wait()
    except TimeoutError:
        return False
    return True


class Publisher:
    """Writes events on one connection; a reader task counts the replies."""

    def __init__(self, host: str, port: int, event_type: str, size: int, epoch_ns: int) -> None:
        self.host, self.port = host, port
        self.event_type = event_type
        self.size = size
        self.epoch_ns = epoch_ns
        self.sent = 0
        self.replies = 0
        self.errors = 0
        self.receivers: list[int] = []
        self.reconnects = 0
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._task: asyncio.Task[None] | None = None
        self._changed = asyncio.Event()

    async def connect(self) -> None:
        self._reader, self._writer = await asyncio.open_connection(self.host, self.port)
        self._task = asyncio.get_running_loop().create_task(self._read_replies())

    async def ensure_connected(self) -> None:
        """Reconnect if the server closed the connection (nginx closes idle keep-alive
        connections when it runs short of connections, e.g. holding 20,000 subscribers)."""
        if self._task is not None and not self._task.done():
            return
        if self._writer is not None:
            self._writer.close()
        self.reconnects += 1
        self.sent = self.replies = 0
        await self.connect()

    def _frame(self, event: bytes) -> bytes:
        raise NotImplementedError

    async def _read_replies(self) -> None:
        raise NotImplementedError

    def _reply(self, ok: bool, receivers: int | None = None) -> None:
        self.replies += 1
        if not ok:
            self.errors += 1
        if receivers is not None:
            self.receivers.append(receivers)
        self._changed.set()

    def event(self, seq: int) -> bytes:
        return event_json(self.event_type, seq, time.time_ns() - self.epoch_ns, self.size)

    def publish(self, seq: int) -> None:
        """Write one event now (its timestamp is taken now)."""
        assert self._writer is not None
        self._writer.write(self._frame(self.event(seq)))
        self.sent += 1

    async def apublish(self, seq: int) -> None:
        """``publish``, with the interface of the brokers' publishers (``--source``)."""
        self.publish(seq)

    async def apublish_burst(self, first: int, count: int) -> int:
        """``publish_burst``, with the interface of the brokers' publishers (``--source``)."""
        return self.publish_burst(first, count)

    def publish_burst(self, first: int, count: int) -> int:
        """Write ``count`` events in one write; return the time (ns) just before writing."""
        assert self._writer is not None
        data = b"".join(self._frame(self.event(s)) for s in range(first, first + count))
        t0 = time.time_ns()
        self._writer.write(data)
        self.sent += count
        return t0

    async def drain(self) -> None:
        assert self._writer is not None
        await self._writer.drain()

    async def wait_replies(self, timeout: float) -> bool:
        """Wait until every event written so far has been acknowledged."""
        return await wait_acknowledged(self, timeout)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, OSError):
                await self._task
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(OSError):
                await self._writer.wait_closed()


class RedisPublisher(Publisher):
    """``PUBLISH channel event`` over RESP; the reply is the number of receivers."""

    def __init__(self, host: str, port: int, channel: str, **kw: int | str) -> None:
        super().__init__(host, port, **kw)  # type: ignore[arg-type]
        self.channel = channel.encode()

    def _frame(self, event: bytes) -> bytes:
        return resp_publish(self.channel, event)

    async def _read_replies(self) -> None:
        assert self._reader is not None
        while True:
            line = await self._reader.readline()
            if not line:
                return
            if line.startswith(b":"):
                self._reply(True, int(line[1:]))
            else:
                self._reply(False)


class NchanPublisher(Publisher):
    """``POST /pub?eventType=<type>`` with the event as the body, keep-alive and pipelined."""

    def _frame(self, event: bytes) -> bytes:
        return http_post(f"{self.host}:{self.port}", f"/pub?eventType={self.event_type}", event)

    async def _read_replies(self) -> None:
        assert self._reader is not None
        reader = self._reader
        while True:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except (asyncio.IncompleteReadError, OSError):
                return
            lines = head.decode("latin-1").split("\r\n")
            status = lines[0].split(" ")[1] if " " in lines[0] else "?"
            length = 0
            chunked = False
            for line in lines[1:]:
                name, _, value = line.partition(":")
                if name.lower() == "content-length":
                    length = int(value)
                elif name.lower() == "transfer-encoding" and "chunked" in value.lower():
                    chunked = True
            if chunked:
                while True:
                    size = int((await reader.readline()).split(b";")[0], 16)
                    await reader.readexactly(size + 2)
                    if size == 0:
                        break
            elif length:
                await reader.readexactly(length)
            self._reply(status.startswith("2"))
