"""A pub/sub subscription read straight off its socket: large reads, hiredis, one batch per read.

redis-py's ``PubSub.get_message`` cost about half of plasma's CPU per event in (a timeout
context, a retry wrapper, a dict and a handler lookup per message): 15-16 µs per message
against 1.1-1.2 µs here, same minutes on a loaded machine (docs/benchmarks.md, "Ingest
(issue 23)"). Here redis-py only opens the connection (TLS, AUTH with an ACL user, SELECT,
Sentinel's current master); plasma then writes ``SUBSCRIBE``/``PSUBSCRIBE`` itself and reads
the connection's stream in chunks of up to ``READ_BYTES``, feeding each chunk to one
``hiredis.Reader`` and taking every complete message out of it: a message cut by a chunk
boundary stays in the reader until the next chunk. It relies on redis-py's connection keeping
its ``asyncio`` stream in ``_reader``/``_writer`` (checked when opening: a redis-py without
them fails loudly rather than reads wrongly).

Shapes: one server, Sentinel, TLS, ACL users, patterns and classic pub/sub on a cluster node
all take this path. Sharded pub/sub on a Redis Cluster (``SSUBSCRIBE``) stays on redis-py
(``redis_cluster.listen_sharded``): its subscriptions follow slot moves across nodes.

Reads block on the socket with no timeout, so an idle channel costs nothing and the first
event after a quiet hour is read as soon as it arrives.
"""

from __future__ import annotations

import asyncio
from typing import Any

import hiredis
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import InvalidResponse, ResponseError

from plasma.ingest import Batch

__all__ = ["READ_BYTES", "Subscription", "command"]

READ_BYTES = 256 * 1024
"""Most bytes read per call: ~1,000 messages of 200 bytes, one batch for the hub."""

_MESSAGE = b"message"
_PMESSAGE = b"pmessage"


def command(*args: bytes) -> bytes:
    """One command in RESP (what the subscription sends: ``SUBSCRIBE a b``)."""
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        parts.append(b"$%d\r\n%s\r\n" % (len(arg), arg))
    return b"".join(parts)


class Subscription:
    """One subscribed connection that redis-py opened and plasma reads itself."""

    def __init__(self, connection: Any, reader: asyncio.StreamReader) -> None:
        self._connection = connection
        self._stream = reader
        self._parser = hiredis.Reader(protocolError=InvalidResponse, replyError=ResponseError)

    @classmethod
    async def open(
        cls, client: aioredis.Redis, channels: list[str], patterns: list[str]
    ) -> Subscription:
        """Connect through ``client``'s pool and send the subscriptions (their confirmations
        are read, and skipped, by ``read``)."""
        connection = await client.connection_pool.get_connection()  # type: ignore[no-untyped-call]
        reader = getattr(connection, "_reader", None)
        writer = getattr(connection, "_writer", None)
        if not isinstance(reader, asyncio.StreamReader) or writer is None:
            raise RedisConnectionError("redis-py gave a connection without a stream to read")
        out = b""
        if channels:
            out += command(b"SUBSCRIBE", *(c.encode() for c in channels))
        if patterns:
            out += command(b"PSUBSCRIBE", *(p.encode() for p in patterns))
        writer.write(out)
        await writer.drain()
        return cls(connection, reader)

    async def confirmations(self, count: int) -> Batch:
        """Read until ``count`` subscribe confirmations came; the messages that arrived
        meanwhile are the first batch (often empty)."""
        batch = Batch([], [], None)
        seen = 0
        while seen < count:
            seen += self._parse(await self._read(), batch)
        return batch

    async def read(self) -> Batch:
        """The next batch: every complete message of one read (waits for at least one)."""
        while True:
            batch = Batch([], [], None)
            self._parse(await self._read(), batch)
            if batch.raws:
                return batch

    async def _read(self) -> bytes:
        data = await self._stream.read(READ_BYTES)
        if not data:
            raise RedisConnectionError("redis closed the subscription's connection")
        return data

    def _parse(self, data: bytes, batch: Batch) -> int:
        """Add every complete message in the reader to ``batch``; count confirmations."""
        parser = self._parser
        parser.feed(data)
        raws = batch.raws
        channels = batch.channels
        confirmations = 0
        gets = parser.gets
        reply = gets()
        while reply is not False:
            if isinstance(reply, list):  # RESP3 (a push) too, though plasma asks for RESP2
                kind = reply[0]
                if kind == _MESSAGE:
                    channels.append(reply[1])
                    raws.append(reply[2])
                elif kind == _PMESSAGE:
                    channels.append(reply[2])
                    raws.append(reply[3])
                else:  # subscribe / psubscribe confirmations
                    confirmations += 1
            elif isinstance(reply, ResponseError):
                raise reply
            reply = gets()
        return confirmations

    async def aclose(self) -> None:
        await self._connection.disconnect()
