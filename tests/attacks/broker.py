"""A hostile Redis peer: a small asyncio server speaking RESP2, written to misbehave.

It is not a stand-in for Redis (the real ``redis-server`` serves every other test): it answers
what a client needs to subscribe, and then does what a broken or old broker does. ``commands``
records every command received, so a test can see what plasma asked.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable

from tests.support import free_port

__all__ = ["HostileBroker", "Reply"]

Reply = Callable[[list[bytes]], bytes | None]
"""Given a command (name and arguments), the raw bytes to answer (``None``: say nothing)."""


def _bulk(value: bytes) -> bytes:
    return b"$%d\r\n%b\r\n" % (len(value), value)


def redis7(command: list[bytes]) -> bytes | None:
    """A current Redis's answers, as far as subscribing and ``PING`` go (RESP2 or RESP3)."""
    name = command[0].upper()
    if name == b"HELLO":
        return b"%1\r\n$5\r\nproto\r\n:" + (command[1] if len(command) > 1 else b"2") + b"\r\n"
    if name == b"CLIENT":
        return b"+OK\r\n"
    return redis5(command)


def redis5(command: list[bytes]) -> bytes | None:
    """How a Redis older than 6 answers: no ``HELLO``, no ``CLIENT SETINFO``."""
    name = command[0].upper()
    if name == b"HELLO":
        return b"-ERR unknown command 'HELLO'\r\n"
    if name == b"CLIENT":
        return (
            b"-ERR Syntax error, try CLIENT (LIST | KILL | GETNAME | SETNAME | PAUSE | REPLY)\r\n"
        )
    if name in (b"SUBSCRIBE", b"PSUBSCRIBE"):
        kind = name.lower()
        return b"".join(
            b"*3\r\n" + _bulk(kind) + _bulk(channel) + b":%d\r\n" % n
            for n, channel in enumerate(command[1:], 1)
        )
    if name == b"PING":
        return b"+PONG\r\n"
    if name in (b"AUTH", b"SELECT"):
        return b"+OK\r\n"
    return b"-ERR unknown command\r\n"


class HostileBroker:
    """Serves RESP on a free loopback port from a thread of its own; ``reply`` decides answers."""

    def __init__(self, reply: Reply = redis5) -> None:
        self.port = free_port()
        self.reply = reply
        self.commands: list[list[bytes]] = []
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> HostileBroker:
        self._thread.start()
        self._ready.wait(5)
        return self

    def stop(self) -> None:
        async def close() -> None:
            if self._server is not None:
                self._server.close()
            for writer in list(self._writers):
                writer.close()

        asyncio.run_coroutine_threadsafe(close(), self._loop).result(5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    def names(self) -> list[bytes]:
        return [command[0].upper() for command in list(self.commands)]

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._server = self._loop.run_until_complete(
            asyncio.start_server(self._serve, "127.0.0.1", self.port)
        )
        self._ready.set()
        self._loop.run_forever()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            while True:
                command = await _read_command(reader)
                if command is None:
                    return
                self.commands.append(command)
                answer = self.reply(command)
                if answer:
                    writer.write(answer)
                    await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        finally:
            self._writers.discard(writer)
            writer.close()


async def _read_command(reader: asyncio.StreamReader) -> list[bytes] | None:
    """One command as clients send it: an array of bulk strings."""
    line = await reader.readline()
    if not line:
        return None
    if not line.startswith(b"*"):
        return line.split()
    parts = []
    for _ in range(int(line[1:])):
        size = int((await reader.readline())[1:])
        parts.append((await reader.readexactly(size + 2))[:-2])
    return parts
