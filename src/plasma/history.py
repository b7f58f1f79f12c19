"""Bounded in-memory history: the recent events, so a reconnecting client misses nothing.

Every event the hub publishes is appended, subscribers or not. The history is bounded by a
count, an age and a number of bytes (each event's body plus ``EVENT_OVERHEAD``; the oldest go
first, and the newest event is always kept); ``after(id)`` answers "everything since this id"
in O(1) plus the size of the answer, or ``None`` when the id is unknown here (evicted, from
another process, or made up) — the caller then asks the source's own archive or sends the gap
signal.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterator, Sequence

from plasma.events import EVENT_OVERHEAD, Event

__all__ = ["History"]


class History:
    """The last ``size`` events no older than ``ttl`` seconds (``ttl`` 0: no age limit) that
    together hold at most ``max_bytes`` (0: no byte bound)."""

    def __init__(self, size: int, ttl: float, max_bytes: int = 0) -> None:
        self.size = size
        self.ttl = ttl
        self.max_bytes = max_bytes
        self.bytes = 0
        """What the events held cost, as ``Event.held_bytes`` counts it."""
        self._events: deque[Event] = deque()
        self._positions: dict[str, int] = {}
        self._base = 0  # absolute position of self._events[0]
        self._next = 0  # absolute position of the next event appended

    def __len__(self) -> int:
        return len(self._events)

    def __iter__(self) -> Iterator[Event]:
        """The events held, oldest first (a joining worker's copy of the node's history)."""
        return iter(self._events)

    def mark(self, event_id: str) -> None:
        """Remember an id that precedes every event still to come (the start of time)."""
        if self.size and not self._events:
            self._positions[event_id] = self._next - 1

    def append(self, event: Event) -> None:
        if not self.size:
            return
        events = self._events
        events.append(event)
        self._positions[event.id] = self._next
        self._next += 1
        self.bytes += len(event.body) + EVENT_OVERHEAD
        if len(events) > self.size:
            self._evict_one()
        if self.max_bytes:
            while self.bytes > self.max_bytes and len(events) > 1:
                self._evict_one()
        if self.ttl:
            deadline = event.received - self.ttl
            while events and events[0].received < deadline:
                self._evict_one()

    def extend(self, events: Sequence[Event]) -> None:
        """``append`` each of ``events`` (one batch), with the bounds applied once at the end:
        the same events are kept as after appending them one by one."""
        if not self.size or not events:
            return
        held = self._events
        positions = self._positions
        position = self._next
        added = 0
        for event in events:
            held.append(event)
            positions[event.id] = position
            position += 1
            added += len(event.body)
        self._next = position
        self.bytes += added + EVENT_OVERHEAD * len(events)
        excess = len(held) - self.size
        if excess > 0:  # ``_evict_one`` inlined: a full history drops one event per event added
            popleft = held.popleft
            forget = positions.pop
            dropped = 0
            for _ in range(excess):
                old = popleft()
                forget(old.id, None)
                dropped += len(old.body)
            self.bytes -= dropped + EVENT_OVERHEAD * excess
            self._base += excess
        if self.max_bytes:
            while self.bytes > self.max_bytes and len(held) > 1:
                self._evict_one()
        if self.ttl:
            deadline = events[-1].received - self.ttl
            while held and held[0].received < deadline:
                self._evict_one()

    def _evict_one(self) -> None:
        old = self._events.popleft()
        self._positions.pop(old.id, None)
        self.bytes -= len(old.body) + EVENT_OVERHEAD
        self._base += 1  # a start-of-time mark now lies before the base: after() says None

    def after(self, event_id: str) -> list[Event] | None:
        """Events after ``event_id`` in order, or ``None`` if this history cannot vouch for it."""
        pos = self._positions.get(event_id)
        if pos is None:
            return None
        self._expire()
        start = pos + 1 - self._base
        if start < 0:
            return None
        events = self._events
        if start == 0:
            return list(events)
        return [events[i] for i in range(start, len(events))]

    def _expire(self) -> None:
        if self.ttl and self._events:
            deadline = time.monotonic() - self.ttl
            while self._events and self._events[0].received < deadline:
                self._evict_one()

    @property
    def last_id(self) -> str | None:
        """The newest id in history."""
        return self._events[-1].id if self._events else None
