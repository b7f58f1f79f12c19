"""The hub: topic index, event ids and fan-out. It knows subscribers only by this protocol.

The hot path is ``Hub.publish_events`` (a source's whole read at once): for each event find the
subscribers of its type and of each colon prefix, hand each one the bytes its transport wants
(encoded once per event, shared by all), and schedule one flush for the loop iteration.
Flushing joins everything pending for a connection into one ``write``: a loopback write costs
5-7 us of kernel time, the Python work per delivery well under 1 us, so the number of writes
decides throughput (docs/architecture.md, "The hot path").
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import secrets
from collections.abc import Sequence
from time import monotonic, perf_counter
from typing import Protocol, runtime_checkable

import orjson

from plasma.errors import InvalidEvent
from plasma.events import (
    MAX_EVENT_BYTES,
    Encoder,
    Event,
    batch_is_exact,
    parse_event,
    type_prefixes,
)
from plasma.history import History
from plasma.ingest import Batch, Ingest
from plasma.logging import LogThrottle
from plasma.metrics import Metrics

__all__ = ["GAP_TYPE", "Archive", "Flushable", "Hub", "Subscriber", "ingest_bytes"]

log = logging.getLogger("plasma.hub")

# Connections flushed per loop callback (~1 ms of writes). Between batches the loop reads its
# sockets: an event that arrives mid-fan-out is published at once, joins the bytes still
# waiting for the rest of this fan-out (one write carries both), and never waits for a whole
# fan-out to finish. A server that falls behind thus catches up instead of queueing.
_FLUSH_BATCH = 128
# Events replayed to one resuming subscriber per loop turn. 2,000 clients resuming 9,800 events
# each in one go held live events back by up to 11.9 s.
_REPLAY_SLICE = 256
# Replays running at once; the others wait (with their archive reads done and a tap on live
# events). At most 64 x 256 pushes (~5-10 ms) per loop turn; with 8, a storm of 5,000 resumes
# of ~1,000 events each took over a minute, as each replay spans several (slow) loop turns.
_REPLAYS_AT_ONCE = 64


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

    def push(self, data: bytes, count: int = 1) -> Flushable | None:
        """Queue ``data`` (``count`` events' frames, joined); return what to flush if it was
        not already waiting. Never awaits."""


@runtime_checkable
class Archive(Protocol):
    """A source that keeps its own history (Redis Streams): older events than the hub holds."""

    async def events_after(self, event_id: str) -> list[Event] | None:
        """Events after ``event_id`` in order, or ``None`` if it cannot vouch for that id."""


def ingest_bytes(max_event_bytes: int) -> int:
    """The ingest queue's bound: 16 MiB, and room for 4 of the largest events."""
    return max(16 << 20, 4 * max_event_bytes)


GAP_TYPE = "plasma:gap"
"""Reserved type of the in-band signal that events were lost (SSE event name ``gap``)."""


class Hub:
    """Owns the topic index, event ids and history, and fans events out to subscribers."""

    def __init__(
        self,
        metrics: Metrics,
        *,
        history_size: int = 0,
        history_ttl: float = 0.0,
        history_max_bytes: int = 0,
        max_event_bytes: int = MAX_EVENT_BYTES,
        epoch: str | None = None,
    ) -> None:
        self.metrics = metrics
        self.epoch = epoch or secrets.token_hex(4)
        """Names this hub's incarnation in its ids, so ids from another process never match."""
        self.history = History(history_size, history_ttl, history_max_bytes)
        history = self.history
        metrics.gauge("history_events", history.__len__)
        metrics.gauge("history_bytes", lambda: history.bytes)
        self.ingest = Ingest(
            self.publish_raw, self.publish_batch, metrics, ingest_bytes(max_event_bytes)
        )
        """What sources feed: a bounded queue that ``publish_raw``s on the hub's own turn."""
        self.archive: Archive | None = None
        self._index: dict[str, dict[Subscriber, None]] = {}
        self._types: dict[Subscriber, tuple[str, ...]] = {}
        self._seq = 0
        self._start_id = f"{self.epoch}-0"
        self.history.mark(self._start_id)
        self._taps: dict[int, list[Event]] = {}
        """Per resume in progress: the events published since it began (keyed by the list's id)."""
        self._resuming: dict[Subscriber, None] = {}
        self._replay_slots = asyncio.Semaphore(_REPLAYS_AT_ONCE)
        self._replayed: list[Event] = []
        self._skip_log = LogThrottle()
        self._flush_log = LogThrottle()
        self._dirty: list[Flushable] = []
        self._unflushed: list[float] = []
        self._flush_scheduled = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._max_event_bytes = max_event_bytes

    # --- subscriptions ---------------------------------------------------------------------

    def subscribe(self, subscriber: Subscriber, types: tuple[str, ...]) -> None:
        """Deliver events of ``types`` (and their sub-types) to ``subscriber`` from now on."""
        self.unsubscribe(subscriber)
        if not types:
            return
        self._types[subscriber] = types
        for t in types:
            self._index.setdefault(t, {})[subscriber] = None

    def mark_start(self, event_id: str) -> None:
        """Set the id that stands for "before every event still to come" (a source's position)."""
        self._start_id = event_id
        self.history.mark(event_id)

    @property
    def last_id(self) -> str:
        """The newest id this hub can vouch for: resuming from it misses nothing."""
        return self.history.last_id or self._start_id

    async def resume(
        self, subscriber: Subscriber, types: tuple[str, ...], last_event_id: str | None
    ) -> bool:
        """Subscribe, first replaying every matching event after ``last_event_id``.

        When neither the history nor the source's archive can vouch for the id, the subscriber
        gets a gap event first (type ``plasma:gap``) carrying the id it can resume from later.
        At most ``_REPLAYS_AT_ONCE`` replays run at a time (the rest wait their turn), each
        ``_REPLAY_SLICE`` events per loop turn, so a storm of resuming clients shares the loop
        with live events; events published meanwhile follow the replay, each once, and the
        subscription starts right after the last of them.
        Returns whether the resume was complete (no gap); a subscriber unsubscribed during
        the replay is left unsubscribed.
        """
        if not last_event_id:
            self.subscribe(subscriber, types)
            return True
        self.unsubscribe(subscriber)  # from now on it hears only what this replay pushes
        self._resuming[subscriber] = None
        live: list[Event] = []
        tap = id(live)
        self._taps[tap] = live
        try:
            # The archive is read before taking a replay slot: a storm's thousands of resumes
            # wait for the source's reads together (it batches them), not 8 at a time.
            missed = self.history.after(last_event_id)
            archived = False
            if missed is None and self.archive is not None:
                missed = await self.archive.events_after(last_event_id)
                archived = missed is not None
            complete = missed is not None
            async with self._replay_slots:
                if subscriber not in self._resuming:
                    return False  # its stream ended while it waited
                # Copied here, in the slot: the archive's list may be shared by many resumes.
                queue = list(missed) if missed is not None else [self._gap_event(last_event_id)]
                # The archive may hold some of what arrived meanwhile (and is in ``live``).
                seen = {e.id for e in queue} if archived else None
                if await self._replay(subscriber, queue, set(types), live, seen):
                    self.subscribe(subscriber, types)
            return complete
        finally:
            del self._taps[tap]
            self._resuming.pop(subscriber, None)

    async def _replay(
        self,
        subscriber: Subscriber,
        queue: list[Event],
        wanted: set[str],
        live: list[Event],
        seen: set[str] | None,
    ) -> bool:
        """Push the matching events of ``queue``, then of ``live``, in slices between loop
        turns; ``False`` if the subscriber was unsubscribed (its stream ended) meanwhile."""
        index = 0
        while True:
            if live:
                queue.extend(e for e in live if e.id not in seen) if seen else queue.extend(live)
                live.clear()
            end = index + _REPLAY_SLICE
            self._push_matching(subscriber, queue[index:end], wanted)
            if end >= len(queue):
                return True  # no await since the last push: nothing can have slipped in
            index = end
            await asyncio.sleep(0)
            if subscriber not in self._resuming:
                return False

    def _push_matching(self, subscriber: Subscriber, events: list[Event], wanted: set[str]) -> None:
        encoder = subscriber.encoder
        replayed = self._replayed
        if not replayed and events:
            asyncio.get_running_loop().call_soon(self._forget_replayed)
        for event in events:
            # Gaps go to everyone: the one made for this resume, and source outages replayed.
            if event.type == GAP_TYPE:
                self.metrics.gaps_sent += 1
            elif wanted.isdisjoint(type_prefixes(event.type)):
                continue
            # Event.encode caches per encoder: resumes in the same loop turn (a wave of
            # reconnects) share one copy of these frames, dropped after the turn.
            target = subscriber.push(event.encode(encoder))
            replayed.append(event)
            if target is not None:
                self.mark_dirty(target)

    def _forget_replayed(self) -> None:
        """Drop the frames replays encoded: the clients they are queued for hold them now."""
        for event in self._replayed:
            event.forget_frames()
        self._replayed.clear()

    def _gap_event(self, requested: str, resume_from: str | None = None) -> Event:
        resume_from = resume_from or self.last_id
        event = Event(
            GAP_TYPE,
            orjson.dumps({"lastEventId": requested, "resumeFrom": resume_from}),
            name="gap",
        )
        event.id = resume_from
        return event

    def announce_gap(self) -> Event:
        """Tell every open stream that events were lost (a pub/sub subscription was re-made).

        The gap takes the next id of its own, so ids show the hole, and goes into the history:
        a client that was away resumes through it and learns of the loss too. Rare (once per
        broker outage), so it walks every subscriber rather than the index. What the ingest
        queue still holds was read before the loss: it is published first.
        """
        self.ingest.publish_queued()
        self._seq += 1
        event = self._gap_event(self.last_id, f"{self.epoch}-{self._seq}")
        self.broadcast_gap(event)
        self.metrics.source_gaps += 1
        return event

    def broadcast_gap(self, event: Event) -> None:
        """Give a gap event to every open stream, whatever it subscribed to, and keep it in
        the history (``announce_gap``'s, or one a node's reader announced for its workers)."""
        self.history.append(event)
        for tap in self._taps.values():
            tap.append(event)
        for subscriber in self._types:
            target = subscriber.push(event.encode(subscriber.encoder))
            if target is not None:
                self._dirty.append(target)
        if self._dirty and not self._flush_scheduled:
            self._schedule_flush()
        self.metrics.gaps_sent += len(self._types)

    def unsubscribe(self, subscriber: Subscriber) -> None:
        """Stop delivering to ``subscriber`` (and end its replay); unknown ones are ignored."""
        self._resuming.pop(subscriber, None)
        types = self._types.pop(subscriber, ())
        for t in types:
            bucket = self._index.get(t)
            if bucket is not None:
                bucket.pop(subscriber, None)
                if not bucket:
                    del self._index[t]

    def top_types(self, n: int) -> dict[str, int]:
        """The ``n`` types with the most subscribers, and how many each has (for operators)."""
        largest = heapq.nlargest(n, self._index.items(), key=lambda item: len(item[1]))
        return {t: len(bucket) for t, bucket in largest}

    @property
    def subscriber_count(self) -> int:
        return len(self._types)

    # --- events in ---------------------------------------------------------------------------

    def publish_raw(self, raw: bytes | str, channel: str = "", event_id: str = "") -> Event | None:
        """Parse a broker message and publish it; count, log and skip it if it is invalid."""
        self.metrics.events_received += 1
        try:
            event = parse_event(raw, self._max_event_bytes)
        except Exception as exc:
            self._skipped(exc, raw, channel)
            return None
        event.id = event_id
        self.publish_events((event,))
        return event

    def publish_batch(self, batch: Batch) -> list[Event]:
        """``publish_raw`` for one read's messages, in order: the invalid ones are counted,
        logged and skipped, the rest published together (``publish_events``)."""
        raws = batch.raws
        self.metrics.events_received += len(raws)
        max_bytes = self._max_event_bytes
        ids = batch.ids
        events: list[Event] = []
        append = events.append
        exact = len(raws) > 1 and batch_is_exact(raws)
        for i, raw in enumerate(raws):
            try:
                event = parse_event(raw, max_bytes, exact=exact)
            except Exception as exc:
                self._skipped(exc, raw, batch.channels[i].decode("utf-8", "replace"))
                continue
            if ids is not None:
                event.id = ids[i]
            append(event)
        if events:
            self.publish_events(events)
        return events

    def _skipped(self, exc: Exception, raw: bytes | str, channel: str) -> None:
        if not isinstance(exc, InvalidEvent):
            log.exception("event parser failed; skipping the message (please report)")
            exc = InvalidEvent("parser_error", repr(exc))
        self.metrics.event_skipped(exc.reason)
        level, suppressed = self._skip_log.level()
        if log.isEnabledFor(level):
            shown = raw[:200] if isinstance(raw, str) else raw[:200].decode("utf-8", "replace")
            log.log(
                level,
                "skipped invalid event",
                extra={
                    "channel": channel,
                    "reason": exc.reason,
                    "error": str(exc),
                    "payload": shown,
                    "suppressed_since_last": suppressed,
                },
            )

    def publish(self, event: Event) -> int:
        """Give ``event`` an id and queue it for every matching subscriber; return how many."""
        return self.publish_events((event,))

    def publish_events(self, events: Sequence[Event]) -> int:
        """Give each event an id (unless it has one), keep it in the history and queue it for
        every matching subscriber, in order; one flush is scheduled for all. Returns the
        number of deliveries."""
        first = self._seq + 1
        seq = self._seq
        epoch = self.epoch
        for event in events:
            seq += 1
            if not event.id:
                event.id = f"{epoch}-{seq}"
        self._seq = seq
        self.history.extend(events)  # one append for the batch
        for tap in self._taps.values():
            tap.extend(events)
        index = self._index
        total = 0
        n = len(events)
        start = 0
        while start < n:
            event = events[start]
            t = event.type
            end = start + 1
            while end < n and events[end].type == t:
                end += 1
            buckets = []
            # events.type_prefixes inlined (what resume matches with): no list, no call per event.
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
                start = end
                continue
            run = events[start:end] if end - start > 1 else (event,)
            total += self._fan_out(run, first + end - 1, buckets)
            start = end
        self.metrics.events_delivered += total
        if self._dirty and not self._flush_scheduled:
            self._schedule_flush()
        return total

    def _fan_out(
        self, run: Sequence[Event], seq: int, buckets: list[dict[Subscriber, None]]
    ) -> int:
        """Queue one event, or a run of consecutive events of one type (a burst read at once),
        for every subscriber in ``buckets``. A run's frames are joined once per encoder and each
        subscriber gets one push for all of them: per-subscriber work once per run, not once per
        event. ``seq`` (the run's last sequence) is the de-duplication mark. Returns the number
        of deliveries."""
        started = perf_counter()
        k = len(run)
        # Subscribers of one transport share an encoder: its bytes are made once, looked up
        # only when the encoder changes. Fresh events: no per-event cache to fill and drop.
        frames: dict[Encoder, bytes] = {}
        dirty = self._dirty
        count = 0
        encoder: Encoder | None = None
        data = b""
        # With one matching bucket nobody can be in it twice: no de-duplication marks.
        dedup = len(buckets) > 1
        for bucket in buckets:
            for sub in bucket:
                # A subscriber of both "a" and "a:b" gets an "a:b:c" event once.
                if dedup:
                    if sub.last_seq == seq:
                        continue
                    sub.last_seq = seq
                if sub.encoder is not encoder:
                    encoder = sub.encoder
                    cached = frames.get(encoder)
                    if cached is None:
                        cached = frames[encoder] = (
                            encoder(run[0]) if k == 1 else b"".join([encoder(e) for e in run])
                        )
                    data = cached
                target = sub.push(data, k)
                if target is not None:
                    dirty.append(target)
                count += 1
        self._unflushed.extend([event.received for event in run])
        self.metrics.observe_fanout(perf_counter() - started)
        return count * k

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

    def _flush_failed(self, target: Flushable) -> None:
        level, suppressed = self._flush_log.level()
        log.log(
            level,
            "writing to a subscriber failed; the others go on (please report)",
            exc_info=True,
            extra={"subscriber": type(target).__name__, "suppressed_since_last": suppressed},
        )

    def _flush(self) -> None:
        dirty = self._dirty
        batch = dirty[:_FLUSH_BATCH]
        for target in batch:
            try:
                target.flush()
            except Exception:  # a bug in one transport must not stop delivery to everyone
                self._flush_failed(target)
        # What was queued meanwhile (new events, or a flush that queued more, like trailers
        # after a cut) is behind the batch: it gets the next turn, after the loop has read.
        del dirty[: len(batch)]
        if dirty:
            self._loop.call_soon(self._flush)  # type: ignore[union-attr]
            return
        self._flush_scheduled = False
        # Arrival-to-write latency of every event this flush completed.
        now = monotonic()
        observe = self.metrics.observe_latency
        for received in self._unflushed:
            observe(now - received)
        self._unflushed.clear()
