"""The node feed: how a worker gets the events its node's one source reader numbered.

With ``PLASMA_WORKERS`` above 1 and a source that does not name its own events (Redis pub/sub,
the mock), the supervisor reads the source once for the node (``plasma.reader``), gives every
event the node's next id and hands it to every worker over a Unix socket. Every worker thus
holds the same ids and resumes any id the node issued. A worker joining (at start, or restarted
after a crash) first receives the reader's whole history, then the live events, before it
listens: a client resuming on it finds what the node still holds.

The wire is a stream of frames, ``kind`` (1 byte) and payload length (4 bytes) then the
payload; an ``EVENTS`` frame carries every event of one reader loop turn, so a burst costs one
write per worker, not one per event. Both ends run on the same machine, one build of plasma.
"""

from __future__ import annotations

import asyncio
import logging
import struct
from collections.abc import Iterable, Iterator

from plasma.errors import FeedLost, SourceError
from plasma.events import Event
from plasma.hub import GAP_TYPE, Hub
from plasma.metrics import Metrics
from plasma.sources.base import Source

__all__ = ["NodeFeed", "events_frame", "frame", "read_events"]

log = logging.getLogger("plasma.feed")

FRAME = struct.Struct("<BI")
"""Frame header: kind, payload length."""
RECORD = struct.Struct("<dIII")
"""Event record header in an ``EVENTS`` payload: received (monotonic), id, type, data lengths."""
REQUEST = struct.Struct("<I")
LENGTH = struct.Struct("<I")
"""The length of one record of a ``PUBLISH`` frame."""
"""The request number that opens ``PUBLISH`` and ``PUBLISHED`` payloads."""

# Reader -> worker.
EVENTS = 1
"""Events in id order (records, see ``RECORD``)."""
START = 2
"""The id that stands for "before every event still to come" (the node's start)."""
READY = 3
"""The history is complete: what follows is live. Empty payload."""
STATUS = 4
"""One byte: whether the node's source is connected (the workers' ``source_up``)."""
PUBLISHED = 5
"""Answer to ``PUBLISH``: request number, then the error text (empty: published)."""
# Worker -> reader.
PUBLISH = 6
"""Publish raw events through the node's source (``POST /debug``, the publish API): request
number, then the channel and each event as length-prefixed records (``pack_publish``)."""

_JOIN_TIMEOUT = 30.0
"""A history of 10,000 events arrives in well under a second; the reader may be busy."""
_PUBLISH_TIMEOUT = 5.0
"""The reader's source answers a publish within its own timeout (about a second)."""


def pack_publish(number: int, channel: str | None, raws: list[bytes]) -> bytes:
    """The payload of a ``PUBLISH`` frame (``unpack_publish`` reads it)."""
    parts = [REQUEST.pack(number), _record(channel.encode() if channel else b"")]
    parts.extend(_record(raw) for raw in raws)
    return b"".join(parts)


def unpack_publish(payload: bytes) -> tuple[int, str | None, list[bytes]]:
    """Request number, channel (``None``: the source's first) and events of a ``PUBLISH``."""
    (number,) = REQUEST.unpack_from(payload)
    records: list[bytes] = []
    pos = REQUEST.size
    while pos < len(payload):
        (size,) = LENGTH.unpack_from(payload, pos)
        pos += LENGTH.size
        records.append(payload[pos : pos + size])
        pos += size
    channel = records.pop(0).decode() if records else ""
    return number, channel or None, records


def _record(data: bytes) -> bytes:
    return LENGTH.pack(len(data)) + data


def frame(kind: int, payload: bytes = b"") -> bytes:
    return FRAME.pack(kind, len(payload)) + payload


def events_frame(events: Iterable[Event]) -> bytes:
    """One ``EVENTS`` frame holding ``events``; encoded once, written to every worker."""
    parts = [b""]
    pack = RECORD.pack
    for event in events:
        event_id = event.id.encode()
        event_type = event.type.encode("utf-8", "surrogatepass")
        parts.append(pack(event.received, len(event_id), len(event_type), len(event.data)))
        parts += (event_id, event_type, event.data)
    payload = b"".join(parts)
    return FRAME.pack(EVENTS, len(payload)) + payload


def read_events(payload: bytes) -> Iterator[Event]:
    """The events of an ``EVENTS`` payload, with the reader's ids and arrival times."""
    unpack = RECORD.unpack_from
    size = RECORD.size
    pos = 0
    end = len(payload)
    while pos < end:
        received, id_len, type_len, data_len = unpack(payload, pos)
        pos += size
        event_id = payload[pos : pos + id_len].decode()
        pos += id_len
        event_type = payload[pos : pos + type_len].decode("utf-8", "surrogatepass")
        pos += type_len
        event = Event(
            event_type, payload[pos : pos + data_len], name="gap" if event_type == GAP_TYPE else ""
        )
        pos += data_len
        event.id = event_id
        event.received = received  # CLOCK_MONOTONIC is one clock for every process
        yield event


class FrameBuffer:
    """Splits a byte stream into ``(kind, payload)`` frames."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> Iterator[tuple[int, bytes]]:
        buffer = self._buffer
        buffer += data
        pos = 0
        header = FRAME.size
        while len(buffer) - pos >= header:
            kind, length = FRAME.unpack_from(buffer, pos)
            if len(buffer) - pos - header < length:
                break
            start = pos + header
            pos = start + length
            yield kind, bytes(buffer[start:pos])
        del buffer[:pos]


class _FeedProtocol(asyncio.Protocol):
    def __init__(self, feed: NodeFeed) -> None:
        self.feed = feed
        self.frames = FrameBuffer()

    def data_received(self, data: bytes) -> None:
        for kind, payload in self.frames.feed(data):
            self.feed.received(kind, payload)

    def connection_lost(self, exc: Exception | None) -> None:
        self.feed.lost()


class NodeFeed:
    """A worker's source when its node reads the source once: the reader's numbered events.

    ``local`` is this worker's own instance of the configured source: it answers ``/hc`` and
    gRPC health (its probe pings the broker) but does not read. ``publish`` (``POST /debug``)
    goes through the reader, so every worker gets the event, with one id.
    """

    def __init__(self, path: str, local: Source, metrics: Metrics) -> None:
        self.path = path
        self.name = local.name
        self._local = local
        self._metrics = metrics
        self._hub: Hub | None = None
        self._transport: asyncio.Transport | None = None
        self._ready: asyncio.Future[None] | None = None
        self._closed: asyncio.Future[None] | None = None
        self._requests: dict[int, asyncio.Future[str]] = {}
        self._next_request = 0

    async def join(self, hub: Hub) -> None:
        """Connect to the reader and take in its history; return once the feed is live."""
        loop = asyncio.get_running_loop()
        self._hub = hub
        self._ready = loop.create_future()
        self._closed = loop.create_future()
        try:
            transport, _ = await loop.create_unix_connection(lambda: _FeedProtocol(self), self.path)
        except OSError as exc:
            raise FeedLost(f"cannot reach the node's source reader at {self.path}: {exc}") from exc
        self._transport = transport
        try:
            await asyncio.wait_for(asyncio.shield(self._ready), _JOIN_TIMEOUT)
        except TimeoutError:
            transport.close()
            raise FeedLost("the node's source reader sent no history in time") from None
        log.info("joined the node's events", extra={"history": len(hub.history)})

    def received(self, kind: int, payload: bytes) -> None:
        hub = self._hub
        assert hub is not None
        if kind == EVENTS:
            if self._ready is not None and not self._ready.done():
                append = hub.history.append  # the history before this worker listened
                for event in read_events(payload):
                    append(event)
            else:
                # The frame is one read of the node's source: published as one batch.
                batch: list[Event] = []
                for event in read_events(payload):
                    if event.type == GAP_TYPE:  # the reader lost events: every stream hears it
                        if batch:
                            hub.publish_events(batch)
                            batch = []
                        hub.broadcast_gap(event)
                    else:
                        batch.append(event)
                if batch:
                    hub.publish_events(batch)
        elif kind == START:
            hub.mark_start(payload.decode())
        elif kind == READY:
            if self._ready is not None and not self._ready.done():
                self._ready.set_result(None)
        elif kind == STATUS:
            self._metrics.source_up = payload[0]
        elif kind == PUBLISHED:
            (number,) = REQUEST.unpack_from(payload)
            waiter = self._requests.pop(number, None)
            if waiter is not None and not waiter.done():
                waiter.set_result(payload[REQUEST.size :].decode("utf-8", "replace"))

    def lost(self) -> None:
        self._metrics.source_up = 0
        for waiter in self._requests.values():
            if not waiter.done():
                waiter.set_result("the node's source reader went away")
        self._requests.clear()
        if self._ready is not None and not self._ready.done():
            self._ready.set_exception(FeedLost("the node's source reader closed the feed"))
            self._ready.exception()  # retrieved: join() reports it
        if self._closed is not None and not self._closed.done():
            self._closed.set_result(None)

    async def run(self, hub: Hub) -> None:
        """Wait while the feed lasts; its end ends this worker (the supervisor starts another)."""
        if self._closed is None:
            await self.join(hub)
        assert self._closed is not None
        await self._closed
        raise FeedLost("the node's source reader closed the feed")

    async def healthy(self) -> bool:
        if self._transport is None or self._transport.is_closing():
            return False
        return await self._local.healthy()

    async def publish_many(self, raws: list[bytes], channel: str | None = None) -> list[str | None]:
        """Through the node's reader, whose source publishes (so every worker's clients get the
        events, each with one id); the ids are given as the events arrive."""
        transport = self._transport
        if transport is None or transport.is_closing():
            raise SourceError("the node's source reader is not reachable")
        self._next_request = number = (self._next_request + 1) & 0xFFFFFFFF
        waiter = asyncio.get_running_loop().create_future()
        self._requests[number] = waiter
        transport.write(frame(PUBLISH, pack_publish(number, channel, raws)))
        try:
            error = await asyncio.wait_for(waiter, _PUBLISH_TIMEOUT)
        except TimeoutError:
            raise SourceError("the node's source reader did not answer in time") from None
        finally:
            self._requests.pop(number, None)
        if error:
            raise SourceError(error)
        return [None] * len(raws)

    async def aclose(self) -> None:
        if self._transport is not None:
            self._transport.close()
        await self._local.aclose()
