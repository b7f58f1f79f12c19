"""The hub: colon-prefix topic index, de-duplication, order, encode-once and coalesced flushes.

Subscribers here are fakes implementing the hub's ``Subscriber`` protocol; the hub is the real one.
"""

from __future__ import annotations

import asyncio
import logging

import orjson
import pytest

from plasma.events import Encoder, Event
from plasma.hub import Hub
from plasma.ingest import Batch
from plasma.metrics import Metrics


def text_encoder(event: Event) -> bytes:
    return event.id.encode() + b"|" + event.type.encode() + b"|" + event.data + b"\n"


class FakeSubscriber:
    """Records what the hub queues and what each flush writes."""

    def __init__(self, name: str = "", encoder: Encoder = text_encoder) -> None:
        self.name = name
        self.encoder = encoder
        self.last_seq = 0
        self.pending: list[bytes] = []
        self.writes: list[bytes] = []
        self.empty_flushes = 0
        """Flushes with nothing pending: the hub held this subscriber twice."""

    def push(self, data: bytes, count: int = 1) -> FakeSubscriber | None:
        self.pending.append(data)
        return self if len(self.pending) == 1 else None

    def flush(self) -> None:
        if not self.pending:
            self.empty_flushes += 1
            return
        self.writes.append(b"".join(self.pending))
        self.pending.clear()

    @property
    def received(self) -> list[bytes]:
        return [line for write in self.writes for line in write.splitlines()]

    @property
    def types(self) -> list[str]:
        return [line.split(b"|")[1].decode() for line in self.received]

    def __repr__(self) -> str:
        return f"FakeSubscriber({self.name!r})"


def event(type: str, data: bytes = b"1") -> Event:
    return Event(type, data)


async def settle() -> None:
    """Let the hub's scheduled flushes run (a batch per loop turn)."""
    for _ in range(100):
        await asyncio.sleep(0)


async def assert_idle(hub: Hub) -> None:
    """The hub holds nothing back: a new event is written on the next loop turn."""
    probe = FakeSubscriber("idle probe")
    hub.subscribe(probe, ("idle-probe",))
    hub.publish(event("idle-probe"))
    await asyncio.sleep(0)
    assert probe.types == ["idle-probe"], "the hub believed a flush was still scheduled"
    hub.unsubscribe(probe)


@pytest.fixture
def hub() -> Hub:
    return Hub(Metrics())


async def test_prefix_hierarchy(hub: Hub) -> None:
    subs = {
        t: FakeSubscriber(t)
        for t in ["a", "a:b", "a:b:c", "a:b:c:d", "a:bc", "a:b:x", "b", "b:c", "a:", "c"]
    }
    for t, sub in subs.items():
        hub.subscribe(sub, (t,))
    assert hub.publish(event("a:b:c")) == 3
    await settle()
    got = {t for t, sub in subs.items() if sub.received}
    assert got == {"a", "a:b", "a:b:c"}


async def test_whole_segments_only(hub: Hub) -> None:
    bc = FakeSubscriber("a:bc")
    prog12 = FakeSubscriber("program:12")
    prog = FakeSubscriber("program:1234")
    hub.subscribe(bc, ("a:bc",))
    hub.subscribe(prog12, ("program:12",))
    hub.subscribe(prog, ("program:1234",))
    hub.publish(event("a:b:x"))
    hub.publish(event("program:1234:views"))
    hub.publish(event("a:bcd"))
    hub.publish(event("program:123"))
    await settle()
    assert bc.received == []
    assert prog12.received == []
    assert prog.types == ["program:1234:views"]


async def test_exact_type_without_colon(hub: Hub) -> None:
    poll = FakeSubscriber()
    hub.subscribe(poll, ("poll",))
    hub.publish(event("poll"))
    hub.publish(event("polls"))
    hub.publish(event("pol"))
    await settle()
    assert poll.types == ["poll"]


async def test_several_matching_types_deliver_once(hub: Hub) -> None:
    sub = FakeSubscriber()
    other = FakeSubscriber()
    hub.subscribe(sub, ("a", "a:b", "a:b:c"))
    hub.subscribe(other, ("a:b",))
    assert hub.publish(event("a:b:c")) == 2
    assert hub.publish(event("a:b")) == 2
    assert hub.publish(event("a")) == 1
    await settle()
    assert sub.types == ["a:b:c", "a:b", "a"]
    assert other.types == ["a:b:c", "a:b"]
    assert hub.metrics.events_delivered == 5


async def test_publish_order_is_kept_per_subscriber(hub: Hub) -> None:
    subs = [FakeSubscriber(str(i)) for i in range(10)]
    for i, sub in enumerate(subs):
        hub.subscribe(sub, ("room",) if i % 2 else ("room", "room:2"))
    sent = []
    for n in range(300):
        t = f"room:{n % 3}"
        hub.publish(event(t, b"%d" % n))
        sent.append(b"%d" % n)
        if n % 37 == 0:
            await asyncio.sleep(0)  # some flushes in between, some events coalesced
    await settle()
    for sub in subs:
        assert [line.split(b"|")[2] for line in sub.received] == sent


async def test_every_event_gets_a_unique_id(hub: Hub) -> None:
    sub = FakeSubscriber()
    hub.subscribe(sub, ("a",))
    events = [event("a") for _ in range(5)]
    for e in events:
        hub.publish(e)
    ids = [e.id for e in events]
    assert all(ids), "every published event gets an id"
    assert len(set(ids)) == 5, "ids are unique"


async def test_encodes_once_per_event_per_encoder(hub: Hub) -> None:
    calls = {"x": 0, "y": 0}

    def encoder_x(e: Event) -> bytes:
        calls["x"] += 1
        return b"x" + e.data + b"\n"

    def encoder_y(e: Event) -> bytes:
        calls["y"] += 1
        return b"y" + e.data + b"\n"

    subs = [FakeSubscriber(str(i), encoder_x if i % 4 else encoder_y) for i in range(1000)]
    for i, sub in enumerate(subs):
        hub.subscribe(sub, ("a",) if i % 2 else ("a:b", "a"))
    for n in range(5):
        assert hub.publish(event("a:b", b"%d" % n)) == 1000
    assert calls == {"x": 5, "y": 5}
    await settle()
    assert all(len(sub.received) == 5 for sub in subs)
    assert subs[1].received[0] == b"x0"
    assert subs[0].received[0] == b"y0"


async def test_unsubscribe(hub: Hub) -> None:
    a = FakeSubscriber("a")
    b = FakeSubscriber("b")
    hub.subscribe(a, ("x", "x:y"))
    hub.subscribe(b, ("x",))
    assert hub.subscriber_count == 2
    hub.unsubscribe(a)
    hub.unsubscribe(a)  # idempotent
    hub.unsubscribe(FakeSubscriber("never subscribed"))
    assert hub.subscriber_count == 1
    assert hub.publish(event("x:y")) == 1
    hub.unsubscribe(b)
    assert hub.publish(event("x:y")) == 0
    assert hub.subscriber_count == 0
    await settle()
    assert a.received == []
    assert b.types == ["x:y"]


async def test_subscribe_again_replaces_types(hub: Hub) -> None:
    sub = FakeSubscriber()
    hub.subscribe(sub, ("old",))
    hub.subscribe(sub, ("new",))
    hub.publish(event("old"))
    hub.publish(event("new"))
    await settle()
    assert sub.types == ["new"]
    assert hub.subscriber_count == 1


def test_no_subscribers_is_cheap_and_schedules_nothing(hub: Hub) -> None:
    """Outside an event loop: scheduling a flush would fail, so none was scheduled."""
    assert hub.publish(event("nobody")) == 0


async def test_one_flush_per_loop_iteration(hub: Hub) -> None:
    subs = [FakeSubscriber(str(i)) for i in range(3)]
    for sub in subs:
        hub.subscribe(sub, ("a",))
    for n in range(4):
        hub.publish(event("a", b"%d" % n))
    # Nothing is written synchronously: the flush is scheduled for the loop.
    assert all(sub.writes == [] for sub in subs)
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    for sub in subs:
        assert len(sub.writes) == 1, "four events in one iteration must be one flush"
        assert [line.split(b"|")[2] for line in sub.received] == [b"0", b"1", b"2", b"3"]
    hub.publish(event("a", b"4"))
    await settle()
    hub.publish(event("a", b"5"))
    await settle()
    assert all(len(sub.writes) == 3 for sub in subs)


async def test_an_event_that_arrives_mid_fan_out_rides_with_the_rest(hub: Hub) -> None:
    """A server that is still writing one event when the next arrives does not queue it
    behind the whole fan-out: the subscribers not written yet get both in one write."""
    subs = [FakeSubscriber(str(i)) for i in range(1000)]
    for sub in subs:
        hub.subscribe(sub, ("a",))
    hub.publish(event("a", b"0"))
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    early = [sub for sub in subs if sub.writes]
    assert 0 < len(early) < len(subs), "the loop gets a turn between flush batches"
    hub.publish(event("a", b"1"))
    await settle()
    late = [sub for sub in subs if sub not in early]
    for sub in late:
        assert len(sub.writes) == 1, "the second event joins the first's pending bytes"
    for sub in early:
        assert len(sub.writes) == 2
    for sub in subs:
        assert [line.split(b"|")[2] for line in sub.received] == [b"0", b"1"]
        assert sub.empty_flushes == 0
    await assert_idle(hub)


async def test_a_hub_that_never_catches_up_holds_each_subscriber_once(hub: Hub) -> None:
    """Events that keep arriving mid-fan-out never let the flush drain; what it holds stays
    one entry per subscriber, and every subscriber still gets every event, in order."""
    subs = [FakeSubscriber(str(i)) for i in range(1000)]
    for sub in subs:
        hub.subscribe(sub, ("a",))
    for n in range(50):
        hub.publish(event("a", b"%d" % n))
        await asyncio.sleep(0)  # one flush batch per event
    await settle()
    want = [b"%d" % n for n in range(50)]
    for sub in subs:
        assert [line.split(b"|")[2] for line in sub.received] == want
        assert sub.empty_flushes == 0, "held twice: flushed once with nothing to write"
    assert len(subs[-1].writes) < 50, "late subscribers got several events per write"


class ChainedSubscriber(FakeSubscriber):
    """Its flush queues one more target, as a gRPC stream cut for slowness queues trailers."""

    def __init__(self, hub: Hub, then: FakeSubscriber) -> None:
        super().__init__("chained")
        self.hub = hub
        self.then: FakeSubscriber | None = then

    def flush(self) -> None:
        super().flush()
        if self.then is not None:
            then, self.then = self.then, None
            then.pending.append(b"0|x|late\n")
            self.hub.mark_dirty(then)


async def test_what_a_flush_queues_is_flushed_too(hub: Hub) -> None:
    late = FakeSubscriber("late")
    hub.subscribe(ChainedSubscriber(hub, late), ("a",))
    hub.publish(event("a"))
    await settle()
    assert late.writes == [b"0|x|late\n"]
    await assert_idle(hub)


class BrokenSubscriber(FakeSubscriber):
    def flush(self) -> None:
        raise RuntimeError("transport bug")


async def test_a_subscriber_whose_write_fails_stops_nobody(
    hub: Hub, caplog: pytest.LogCaptureFixture
) -> None:
    good = [FakeSubscriber(str(i)) for i in range(300)]
    broken = BrokenSubscriber("broken")
    for sub in [*good[:150], broken, *good[150:]]:
        hub.subscribe(sub, ("a",))
    with caplog.at_level(logging.WARNING, logger="plasma.hub"):
        hub.publish(event("a", b"0"))
        await settle()
        hub.publish(event("a", b"1"))
        await settle()
    for sub in good:
        assert [line.split(b"|")[2] for line in sub.received] == [b"0", b"1"]
    await assert_idle(hub)
    failures = [r for r in caplog.records if "writing to a subscriber failed" in r.getMessage()]
    assert len(failures) == 1, "one warning, the repeat is throttled"
    assert failures[0].exc_info is not None


async def test_huge_fan_out_is_flushed_in_batches(hub: Hub) -> None:
    subs = [FakeSubscriber(str(i)) for i in range(5000)]
    for sub in subs:
        hub.subscribe(sub, ("a",))
    hub.publish(event("a"))
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    first_pass = sum(1 for sub in subs if sub.writes)
    assert 0 < first_pass < 5000, "the loop gets a turn between flush batches"
    await settle()
    assert all(len(sub.writes) == 1 for sub in subs)


async def test_publish_raw_counts_and_skips_invalid(hub: Hub) -> None:
    records: list[logging.LogRecord] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    handler = Collect(logging.DEBUG)
    logger = logging.getLogger("plasma.hub")
    logger.addHandler(handler)
    old_level = logger.level
    logger.setLevel(logging.DEBUG)
    try:
        sub = FakeSubscriber()
        hub.subscribe(sub, ("a",))
        long_garbage = b"x" * 5000
        assert hub.publish_raw(long_garbage, "chan-1") is None
        assert hub.publish_raw(b"[1]", "chan-2") is None
        valid = hub.publish_raw(b'{"meta":{"type":"a:b"},"data":7}', "chan-1")
        assert valid is not None
        assert valid.type == "a:b"
        await settle()
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
    assert sub.types == ["a:b"]
    assert hub.metrics.events_received == 3
    assert dict(hub.metrics.events_skipped) == {"invalid_json": 1, "not_object": 1}
    records = [r for r in records if r.getMessage() == "skipped invalid event"]
    assert len(records) == 2
    # A flood is throttled: the first is a warning, repeats within the minute are debug lines.
    assert [r.levelno for r in records] == [logging.WARNING, logging.DEBUG]
    first = records[0]
    assert first.channel == "chan-1"  # type: ignore[attr-defined]
    assert first.reason == "invalid_json"  # type: ignore[attr-defined]
    payload = first.payload  # type: ignore[attr-defined]
    assert payload.startswith("xxx")
    assert len(payload) <= 300, "the logged payload is truncated"
    assert records[1].channel == "chan-2"  # type: ignore[attr-defined]


# --- resume: history, the source's archive, and events arriving meanwhile ---------------------


class GatedArchive:
    """An ``Archive`` (the hub's protocol) that answers only when the test lets it.

    ``events`` None means it cannot vouch for the id either (a gap).
    """

    def __init__(self, events: list[Event] | None) -> None:
        self.events = events
        self.asked: list[str] = []
        self.waiting = asyncio.Event()
        self.answer = asyncio.Event()

    async def events_after(self, event_id: str) -> list[Event] | None:
        self.asked.append(event_id)
        self.waiting.set()
        await self.answer.wait()
        return None if self.events is None else list(self.events)


def with_id(type: str, event_id: str) -> Event:
    e = Event(type, b"1")
    e.id = event_id
    return e


def ids_of(sub: FakeSubscriber) -> list[str]:
    return [line.split(b"|")[0].decode() for line in sub.received]


async def test_resume_merges_the_archive_with_events_that_arrive_meanwhile() -> None:
    """No event twice, none lost, in order: archive first, then what arrived while it answered."""
    hub = Hub(Metrics())  # no history: only the archive can vouch for old ids
    archive = GatedArchive([with_id("a", "1-1"), with_id("a:x", "1-2")])
    hub.archive = archive
    sub = FakeSubscriber()
    resuming = asyncio.create_task(hub.resume(sub, ("a",), "1-0"))
    await archive.waiting.wait()
    # Published while the archive answers: one it also returns, new ones, one not wanted.
    for e in (with_id("a:x", "1-2"), with_id("a", "1-3"), with_id("b", "1-4")):
        hub.publish(e)
    await settle()
    assert sub.received == [], "nothing is delivered before the replay"
    archive.answer.set()
    assert await resuming is True
    hub.publish(with_id("a", "1-5"))
    await settle()
    assert ids_of(sub) == ["1-1", "1-2", "1-3", "1-5"]
    assert archive.asked == ["1-0"]


async def test_resume_sends_a_gap_then_what_arrived_when_nothing_vouches() -> None:
    hub = Hub(Metrics())
    archive = GatedArchive(None)
    hub.archive = archive
    sub = FakeSubscriber()
    resuming = asyncio.create_task(hub.resume(sub, ("a",), "lost-id"))
    await archive.waiting.wait()
    hub.publish(with_id("a", "1-7"))
    archive.answer.set()
    assert await resuming is False
    await settle()
    assert sub.types == ["plasma:gap", "a"]
    gap = sub.received[0].split(b"|", 2)[2]
    assert b'"lastEventId":"lost-id"' in gap
    assert ids_of(sub)[1:] == ["1-7"]


async def test_resume_from_history_does_not_ask_the_archive() -> None:
    hub = Hub(Metrics(), history_size=10)
    archive = GatedArchive([])
    hub.archive = archive
    first, second = event("a"), event("a:b")
    hub.publish(first)
    hub.publish(second)
    sub = FakeSubscriber()
    assert await hub.resume(sub, ("a",), first.id) is True
    await settle()
    assert ids_of(sub) == [second.id]
    assert archive.asked == []


async def test_a_long_replay_yields_to_live_events_and_misses_none() -> None:
    """A replay goes out in slices between loop turns; what is published meanwhile follows it,
    once each, in order, and the subscription starts right after."""
    hub = Hub(Metrics(), history_size=5000)
    for _ in range(3000):
        hub.publish(event("a"))
    ids_after = [e.id for e in hub.history.after(f"{hub.epoch}-0") or []]
    assert len(ids_after) == 3000
    bystander = FakeSubscriber("live")
    hub.subscribe(bystander, ("b",))
    sub = FakeSubscriber("resuming")
    resuming = asyncio.create_task(hub.resume(sub, ("a", "b"), f"{hub.epoch}-0"))
    await asyncio.sleep(0)
    live = [event("b") for _ in range(3)]
    for e in live:
        hub.publish(e)
        await asyncio.sleep(0)
    # The bystander got the live events while the replay was still going.
    assert bystander.types == ["b"] * 3
    assert not resuming.done()
    assert await resuming is True
    hub.publish(event("a"))
    await settle()
    assert ids_of(sub)[:3000] == ids_after
    assert ids_of(sub)[3000:3003] == [e.id for e in live]
    assert sub.types[3000:] == ["b", "b", "b", "a"]


async def test_a_subscriber_that_leaves_during_its_replay_stays_unsubscribed() -> None:
    hub = Hub(Metrics(), history_size=5000)
    for _ in range(3000):
        hub.publish(event("a"))
    sub = FakeSubscriber()
    resuming = asyncio.create_task(hub.resume(sub, ("a",), f"{hub.epoch}-0"))
    await asyncio.sleep(0)
    hub.unsubscribe(sub)  # what a stream's close does
    assert await resuming is True
    await settle()
    replayed = len(sub.received)
    assert replayed < 3000
    hub.publish(event("a"))
    await settle()
    assert len(sub.received) == replayed


async def test_announce_gap_reaches_every_stream_once_and_takes_an_id_of_its_own() -> None:
    metrics = Metrics()
    hub = Hub(metrics, history_size=10, epoch="e")
    news, sport, both = FakeSubscriber("news"), FakeSubscriber("sport"), FakeSubscriber("both")
    hub.subscribe(news, ("news",))
    hub.subscribe(sport, ("sport",))
    hub.subscribe(both, ("news", "sport"))
    before = event("news")
    hub.publish(before)
    gap = hub.announce_gap()
    after = event("news")
    hub.publish(after)
    await settle()
    assert (before.id, gap.id, after.id) == ("e-1", "e-2", "e-3"), "the ids show the hole"
    assert news.types == both.types == ["news", "plasma:gap", "news"]
    assert sport.types == ["plasma:gap"]
    assert gap.name == "gap"
    assert b'"lastEventId":"e-1","resumeFrom":"e-2"' in gap.data
    assert (metrics.source_gaps, metrics.gaps_sent) == (1, 3)

    # A client that was away resumes through the gap: it learns of the loss too.
    late = FakeSubscriber("late")
    assert await hub.resume(late, ("sport",), before.id) is True
    await settle()
    assert late.types == ["plasma:gap"]
    assert metrics.gaps_sent == 4


def raw(type: str, data: object) -> bytes:
    return orjson.dumps({"meta": {"type": type}, "data": data})


async def test_a_batch_is_one_flush_in_order_with_an_invalid_message_skipped(
    caplog: pytest.LogCaptureFixture,
) -> None:
    hub = Hub(Metrics(), history_size=100)
    sub = FakeSubscriber()
    hub.subscribe(sub, ("b",))
    raws = [raw("b", n) for n in range(50)]
    raws[20] = b"{not json"
    channels = [b"events"] * 50
    with caplog.at_level(logging.WARNING, logger="plasma.hub"):
        published = hub.publish_batch(Batch(raws, channels, None))
    assert [e.data for e in published] == [str(n).encode() for n in range(50) if n != 20]
    await asyncio.sleep(0)
    assert len(sub.writes) == 1, "one write for the whole batch"
    assert [line.split(b"|")[2] for line in sub.received] == [e.data for e in published]
    seqs = [int(e.id.rsplit("-", 1)[1]) for e in published]
    assert seqs == list(range(1, 50)), "consecutive ids, none for the skipped message"
    assert hub.metrics.events_received == 50
    assert hub.metrics.events_skipped == {"invalid_json": 1}
    assert [r.__dict__.get("channel") for r in caplog.records] == ["events"]
    assert [e.id for e in hub.history] == [e.id for e in published]


async def test_ingest_queues_a_batch_behind_a_large_message_and_pauses_when_full() -> None:
    hub = Hub(Metrics(), history_size=100)
    sub = FakeSubscriber()
    hub.subscribe(sub, ("q",))
    ingest = hub.ingest
    ingest.max_bytes = 100_000
    big = raw("q", "x" * 40_000)  # over the inline bound: queued, read on meanwhile
    assert ingest.offer_batch(Batch([raw("q", 0)], [b"c"], None))
    assert hub.metrics.events_received == 1, "a small batch with nothing queued: at once"
    assert ingest.offer_batch(Batch([big, raw("q", 1)], [b"c", b"c"], None))
    assert ingest.offer_batch(Batch([raw("q", 2)], [b"c"], None)), "queued behind, in order"
    assert not ingest.offer_batch(Batch([big, big], [b"c", b"c"], None)), "now full"
    assert hub.metrics.events_received == 1
    await ingest.wait_for_room()  # the reading task waits here until the hub caught up
    assert hub.metrics.source_queue_full == 1
    for _ in range(10):
        await asyncio.sleep(0)
    data = [line.split(b"|")[2][:5] for line in sub.received]
    assert data == [b"0", b'"xxxx', b"1", b"2", b'"xxxx', b'"xxxx']
    assert ingest.bytes == 0
    await ingest.aclose()


async def test_a_gap_follows_what_the_ingest_queue_held_when_the_subscription_was_lost() -> None:
    hub = Hub(Metrics(), history_size=100, epoch="e")
    sub = FakeSubscriber()
    hub.subscribe(sub, ("q",))
    ingest = hub.ingest
    big = raw("q", "x" * 40_000)  # over the inline bound: queued, not published yet
    assert ingest.offer_batch(Batch([big, raw("q", 1)], [b"c", b"c"], None))
    assert hub.metrics.events_received == 0
    gap = hub.announce_gap()  # the source re-made a lost subscription: read before the loss
    await settle()
    assert sub.types == ["q", "q", "plasma:gap"], "what was read before the loss comes first"
    assert [e.id for e in hub.history] == ["e-1", "e-2", "e-3"] and gap.id == "e-3"
    assert ingest.bytes == 0
    await ingest.aclose()
