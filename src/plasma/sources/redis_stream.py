"""The Redis Streams source: ``XREAD`` the configured streams; the entry id is the event id.

Unlike pub/sub, a stream keeps its entries, so this source is also the hub's *archive*: a client
resuming from an id older than the hub's in-memory history (or from before a plasma restart, or
from another plasma node reading the same streams) gets the missed range from ``XRANGE``. Every
node and worker sees the same ids, so a client may reconnect anywhere.

Publishers add one field per entry holding the event JSON, named ``event``
(``XADD mystream * event '{"meta":{"type":"a:b"},"data":1}'``); an entry with a single field of
another name is read the same way.

On a Redis Cluster (``PLASMA_SUBSCRIBER_REDIS_CLUSTER=true``) each stream is read and replayed
on its own slot's master; events keep their order per stream.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
import re
import time
from typing import TYPE_CHECKING, Any

from redis.exceptions import RedisError, ResponseError

from plasma.config import RedisConfig
from plasma.errors import InvalidEvent, SourceError
from plasma.events import Event, parse_event
from plasma.ingest import Batch
from plasma.metrics import Metrics
from plasma.sources.redis_cluster import read_streams
from plasma.sources.redis_connection import PROBE_TIMEOUT, RedisConnection, quietly

if TYPE_CHECKING:
    from plasma.hub import Hub

__all__ = ["EVENT_FIELD", "RedisStreamSource"]

log = logging.getLogger("plasma.sources.redis_stream")

EVENT_FIELD = b"event"
_STREAM_ID = re.compile(r"^(\d+)-(\d+)$")
# Most entries one XREAD returns; larger bursts are read in several calls.
_READ_COUNT = 1000
# Most entries a single resume replays from Redis.
_REPLAY_LIMIT = 100_000
# The last archive read is kept this long after its last use, if it holds at most this many.
_CACHE_SECONDS = 5.0
_CACHE_EVENTS = 20_000


def _order(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


def _text(value: Any) -> str:
    if value is None:
        return "0-0"
    return value.decode() if isinstance(value, bytes) else str(value)


def _payload(fields: dict[bytes, bytes]) -> bytes | None:
    value = fields.get(EVENT_FIELD)
    if value is None and len(fields) == 1:
        value = next(iter(fields.values()))
    return value


def _publish_entries(hub: Hub, stream: str, entries: list[Any]) -> None:
    key = stream.encode()
    raws = []
    for _, fields in entries:
        payload = _payload(fields)
        raws.append(payload if payload is not None else b"")
    hub.publish_batch(Batch(raws, [key] * len(raws), [e[0].decode() for e in entries]))


class RedisStreamSource:
    """Reads ``config.channels`` as stream keys, from where it started, across reconnects."""

    name = "redis-stream"

    def __init__(self, config: RedisConfig, metrics: Metrics) -> None:
        self._redis = RedisConnection(config, metrics, name=self.name, log=log)
        self._positions: dict[str, str] | None = None
        self._waiting: dict[str, list[asyncio.Future[list[Event] | None]]] = {}
        """Resumes waiting for the next archive read, by the id they resume from."""
        self._batches: asyncio.Task[None] | None = None
        self._cache: list[Event] = []
        """The last archive read: every entry after ``_cache_after``, kept ``_CACHE_SECONDS``."""
        self._cache_after: str | None = None
        self._cache_until = 0.0

    async def run(self, hub: Hub) -> None:
        await self._redis.run(lambda: self._listen(hub))

    async def healthy(self) -> bool:
        return await self._redis.healthy()

    async def aclose(self) -> None:
        await self._redis.aclose()

    async def _listen(self, hub: Hub) -> None:
        redis = self._redis
        c = redis.config
        client: Any = redis.cluster(timeout=None) if c.cluster else redis.client(timeout=None)
        try:
            if self._positions is None:
                self._positions = await asyncio.wait_for(self._tails(client), c.timeout * 5)
                newest = max(self._positions.values(), key=_order)
                hub.mark_start(newest)
            redis.connected("reading")
            positions = self._positions
            block_ms = max(1, int(c.timeout * 1000))
            if c.cluster:
                # Streams in different slots cannot share one XREAD: one reader per stream.
                await read_streams(
                    client,
                    positions,
                    lambda stream, entries: _publish_entries(hub, stream, entries),
                    count=_READ_COUNT,
                    block_ms=block_ms,
                )
            while True:
                reply: Any = await client.xread(
                    positions,
                    count=_READ_COUNT,
                    block=block_ms,
                )
                if not reply:
                    continue
                if len(reply) == 1:
                    key, entries = reply[0]
                    if entries:
                        positions[key.decode("utf-8", "replace")] = entries[-1][0].decode()
                    _publish_entries(hub, key.decode("utf-8", "replace"), entries)
                    continue
                batch: list[tuple[tuple[int, int], str, bytes, bytes | None]] = []
                for key, entries in reply:
                    for entry_id, fields in entries:
                        eid = entry_id.decode()
                        batch.append((_order(eid), eid, key, _payload(fields)))
                    if entries:
                        positions[key.decode("utf-8", "replace")] = entries[-1][0].decode()
                # Several streams: publish in id (time) order, as a resume from Redis would.
                batch.sort(key=lambda item: item[0])
                hub.publish_batch(
                    Batch(
                        [b"" if item[3] is None else item[3] for item in batch],
                        [item[2] for item in batch],
                        [item[1] for item in batch],
                    )
                )
        except TimeoutError as exc:
            raise SourceError(f"redis at {redis.address} did not answer") from exc
        finally:
            redis.disconnected()
            await quietly(client.aclose())

    async def _tails(self, client: Any) -> dict[str, str]:
        """Each stream's newest id now: reading starts there, missing streams at ``0-0``."""
        tails = {}
        for stream in self._redis.config.channels:
            newest = await client.xrevrange(stream, count=1)
            tails[stream] = newest[0][0].decode() if newest else "0-0"
        return tails

    async def events_after(self, event_id: str) -> list[Event] | None:
        """Every event after ``event_id`` still in the streams, or ``None`` for a gap.

        Resumes that ask while a read is under way wait for the next one, which serves them
        all: a storm of reconnecting clients costs a few ``XRANGE`` calls, not one (and an
        ``XINFO``) each, which would queue on the one probe connection and time out. Each gets
        the events after its own id, from a read that began after it asked (so nothing
        published before the hub's tap for it went up is missed).
        """
        if not _STREAM_ID.match(event_id):
            return None
        waiter: asyncio.Future[list[Event] | None] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(event_id, []).append(waiter)
        if self._batches is None or self._batches.done():
            self._batches = asyncio.get_running_loop().create_task(self._serve_waiting())
        return await waiter

    async def _serve_waiting(self) -> None:
        """Read once for every id asked so far (from the oldest), until none is waiting."""
        while self._waiting:
            waiting, self._waiting = self._waiting, {}
            ids = sorted(waiting, key=_order)
            oldest = ids[0]
            try:
                events = await self._read_cached(oldest)
            except BaseException:
                for futures in waiting.values():
                    for future in futures:
                        if not future.done():
                            future.set_result(None)
                raise
            if events is None or len(events) >= _REPLAY_LIMIT:
                # The oldest cannot be vouched for (or the read was cut): the others read again.
                for event_id in ids[1:]:
                    self._waiting.setdefault(event_id, []).extend(waiting.pop(event_id))
            orders = [_order(e.id) for e in events] if events is not None else []
            for event_id, futures in waiting.items():
                share: list[Event] | None = None
                if events is not None:
                    share = events[bisect.bisect_right(orders, _order(event_id)) :]
                for future in futures:
                    if not future.done():
                        future.set_result(share)

    async def _read_cached(self, oldest: str) -> list[Event] | None:
        """``_read_after(oldest)``, reading only what is new when the last read covers it:
        a storm's resumes arrive over seconds, and each batch would read the same range again."""
        cache, after = self._cache, self._cache_after
        now = time.monotonic()
        # One stream only: across streams a later entry may carry a smaller id than the last read.
        single = len(self._redis.config.channels) == 1
        if (
            single
            and after is not None
            and _order(after) <= _order(oldest)
            and now < self._cache_until
        ):
            delta = await self._read_after(cache[-1].id if cache else after)
            if delta is not None and len(cache) + len(delta) <= _CACHE_EVENTS:
                cache.extend(delta)
                self._cache_until = now + _CACHE_SECONDS
                start = bisect.bisect_right([_order(e.id) for e in cache], _order(oldest))
                return cache[start:]
        self._cache, self._cache_after = [], None
        events = await self._read_after(oldest)
        if single and events is not None and len(events) <= _CACHE_EVENTS:
            self._cache, self._cache_after = list(events), oldest
            self._cache_until = time.monotonic() + _CACHE_SECONDS
        return events

    async def _read_after(self, event_id: str) -> list[Event] | None:
        """Every event after ``event_id`` still in the streams, or ``None`` for a gap."""
        after = _order(event_id)
        redis = self._redis
        try:
            found: list[tuple[tuple[int, int], Event]] = []
            for stream in redis.config.channels:
                if not await self._still_has(stream, after):
                    return None
                entries: Any = await asyncio.wait_for(
                    redis.probe.xrange(stream, min=f"({event_id}", count=_REPLAY_LIMIT),
                    redis.config.timeout * 5,
                )
                for entry_id, fields in entries:
                    payload = _payload(fields)
                    if payload is None:
                        continue
                    try:
                        event = parse_event(payload)
                    except InvalidEvent:
                        continue  # counted and logged when it was read live
                    event.id = entry_id.decode()
                    found.append((_order(event.id), event))
        except (RedisError, OSError, TimeoutError) as exc:
            log.warning(
                "cannot read missed events from redis; sending a gap",
                extra={"addr": redis.address, "error": str(exc) or type(exc).__name__},
            )
            await redis.reset_probe()
            return None
        found.sort(key=lambda item: item[0])
        return [event for _, event in found]

    async def _still_has(self, stream: str, after: tuple[int, int]) -> bool:
        """Whether every entry after ``after`` is still in ``stream`` (none trimmed or deleted)."""
        try:
            probe = self._redis.probe
            info = await asyncio.wait_for(probe.xinfo_stream(stream), PROBE_TIMEOUT * 2)
        except ResponseError:  # no such stream: nothing was ever there to miss
            return True
        if after > _order(_text(info.get("last-generated-id"))):
            return False  # an id from the future: another Redis, or made up
        if _order(_text(info.get("max-deleted-entry-id"))) > after:
            return False  # XDEL removed something newer
        first = info.get("first-entry")
        if first is None:
            return True
        # XTRIM drops the oldest entries: if any were dropped and the client's id is older than
        # what is left, the entries just after its id may be among them.
        removed = int(info.get("entries-added", info.get("length", 0))) > int(info["length"])
        return not (removed and after < _order(_text(first[0])))

    async def publish_many(self, raws: list[bytes], channel: str | None = None) -> list[str | None]:
        key = channel or self._redis.config.channels[0]
        ids = await self._redis.publish_batch((b"XADD", key.encode(), b"*", EVENT_FIELD), raws)
        return [_text(entry_id) for entry_id in ids]
