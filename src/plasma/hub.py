"""The hub: topic index, event ids and fan-out. It knows subscribers only by this protocol.

The hot path is ``Hub.publish``: find the subscribers of an event's type and of each colon prefix,
hand each one the bytes its transport wants (encoded once per event, shared by all), and schedule
one flush for the loop iteration. Flushing joins everything pending for a connection into one
``write``: a loopback write costs 5-7 us of kernel time, the Python work per delivery well
under 1 us, so the number of writes decides throughput (DESIGN.md, "The hot path").
"""

from __future__ import annotations

import asyncio
import logging
from typing import Protocol

from plasma.errors import InvalidEvent
from plasma.events import Encoder, Event, parse_event
from plasma.metrics import Metrics

__all__ = ["Flushable", "Hub", "Subscriber"]

log = logging.getLogger("plasma.hub")

# Flushing this many connections per loop callback keeps a huge fan-out from starving reads.
_FLUSH_BATCH = 2048


class Flushable(Protocol):
    """Something with bytes queued for the socket."""

    def flush(self) -> None:
        """Write everything queued in one call; never awaits, never raises."""


class Subscriber(Protocol):
    """One client's subscription, as the hub sees it."""

    encoder: Encoder
    """Turns an event into this subscriber's wire bytes; shared by all subscribers of a kind."""
    last_seq: int
    """The hub's de-duplication mark: the sequence of the last event pushed here."""

    def push(self, data: bytes) -> Flushable | None:
        """Queue ``data``; return what to flush if it was not already waiting. Never awaits."""


class Hub:
    """Owns the topic index and event ids, and fans events out to subscribers."""

    def __init__(self, metrics: Metrics, *, max_event_bytes: int | None = None) -> None:
        self.metrics = metrics
        self._index: dict[str, dict[Subscriber, None]] = {}
        self._types: dict[Subscriber, tuple[str, ...]] = {}
        self._seq = 0
        self._dirty: list[Flushable] = []
        self._flush_scheduled = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._max_event_bytes = max_event_bytes or (1 << 20)

    # --- subscriptions ---------------------------------------------------------------------

    def subscribe(self, subscriber: Subscriber, types: tuple[str, ...]) -> None:
        """Deliver events of ``types`` (and their sub-types) to ``subscriber`` from now on."""
        self.unsubscribe(subscriber)
        if not types:
            return
        self._types[subscriber] = types
        for t in types:
            self._index.setdefault(t, {})[subscriber] = None

    async def resume(
        self, subscriber: Subscriber, types: tuple[str, ...], last_event_id: str | None
    ) -> None:
        """Subscribe, first replaying the events after ``last_event_id`` (or a gap signal)."""
        self.subscribe(subscriber, types)

    def unsubscribe(self, subscriber: Subscriber) -> None:
        """Stop delivering to ``subscriber``; unknown subscribers are ignored."""
        types = self._types.pop(subscriber, ())
        for t in types:
            bucket = self._index.get(t)
            if bucket is not None:
                bucket.pop(subscriber, None)
                if not bucket:
                    del self._index[t]

    @property
    def subscriber_count(self) -> int:
        return len(self._types)

    # --- events in ---------------------------------------------------------------------------

    def publish_raw(self, raw: bytes | str, channel: str = "") -> Event | None:
        """Parse a broker message and publish it; count, log and skip it if it is invalid."""
        self.metrics.events_received += 1
        try:
            event = parse_event(raw, self._max_event_bytes)
        except InvalidEvent as exc:
            self.metrics.event_skipped(exc.reason)
            shown = raw[:200] if isinstance(raw, str) else raw[:200].decode("utf-8", "replace")
            log.warning(
                "skipped invalid event",
                extra={
                    "channel": channel,
                    "reason": exc.reason,
                    "error": str(exc),
                    "payload": shown,
                },
            )
            return None
        self.publish(event)
        return event

    def publish(self, event: Event) -> int:
        """Give ``event`` an id and queue it for every matching subscriber; return how many."""
        self._seq += 1
        seq = self._seq
        event.id = str(seq)
        index = self._index
        t = event.type
        buckets = []
        i = t.find(":")
        while i != -1:
            bucket = index.get(t[:i])
            if bucket:
                buckets.append(bucket)
            i = t.find(":", i + 1)
        bucket = index.get(t)
        if bucket:
            buckets.append(bucket)
        if not buckets:
            return 0
        encoded = event.encode
        dirty = self._dirty
        count = 0
        for bucket in buckets:
            for sub in bucket:
                # A subscriber of both "a" and "a:b" gets an "a:b:c" event once.
                if sub.last_seq == seq:
                    continue
                sub.last_seq = seq
                target = sub.push(encoded(sub.encoder))
                if target is not None:
                    dirty.append(target)
                count += 1
        self.metrics.events_delivered += count
        if dirty and not self._flush_scheduled:
            self._schedule_flush()
        return count

    def mark_dirty(self, target: Flushable) -> None:
        """Queue ``target`` for the next flush (for bytes a transport queued on its own)."""
        self._dirty.append(target)
        if not self._flush_scheduled:
            self._schedule_flush()

    # --- events out ----------------------------------------------------------------------------

    def _schedule_flush(self) -> None:
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        self._flush_scheduled = True
        self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        dirty = self._dirty
        if len(dirty) > _FLUSH_BATCH:
            batch, self._dirty = dirty[:_FLUSH_BATCH], dirty[_FLUSH_BATCH:]
        else:
            batch, self._dirty = dirty, []
        for target in batch:
            target.flush()
        if self._dirty:
            self._loop.call_soon(self._flush)  # type: ignore[union-attr]
        else:
            self._flush_scheduled = False
