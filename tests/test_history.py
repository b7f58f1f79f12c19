"""The in-memory history: bounded by count and by age; ``after`` vouches only for what it holds."""

from __future__ import annotations

import time

from plasma.events import Event
from plasma.history import History


def events(*ids: str, age: float = 0.0) -> list[Event]:
    out = []
    for event_id in ids:
        event = Event("a", b"1")
        event.id = event_id
        event.received = time.monotonic() - age
        out.append(event)
    return out


def ids(found: list[Event] | None) -> list[str] | None:
    return None if found is None else [e.id for e in found]


def test_after_answers_everything_since_an_id_in_order() -> None:
    history = History(10, 0)
    for event in events("e-1", "e-2", "e-3"):
        history.append(event)
    assert ids(history.after("e-1")) == ["e-2", "e-3"]
    assert ids(history.after("e-3")) == []
    assert history.last_id == "e-3"


def test_the_count_bound_evicts_the_oldest() -> None:
    history = History(3, 0)
    for event in events("e-1", "e-2", "e-3", "e-4", "e-5"):
        history.append(event)
    assert len(history) == 3
    assert history.after("e-1") is None, "evicted: the history cannot vouch for what followed"
    assert history.after("e-2") is None, "e-3 is still here, but e-2 itself is gone"
    assert ids(history.after("e-3")) == ["e-4", "e-5"]


def test_the_age_bound_evicts_on_append() -> None:
    history = History(100, 60.0)
    old, new = events("e-old", age=120.0) + events("e-new")
    history.append(old)
    history.append(new)
    assert history.after("e-old") is None
    assert ids(history.after("e-new")) == []
    assert len(history) == 1


def test_the_age_bound_evicts_on_read_too() -> None:
    """A quiet history still forgets: ``after`` drops what aged out since the last append."""
    history = History(100, 60.0)
    history.mark("start")
    for event in events("e-1", "e-2", age=61.0):
        history.append(event)
    assert history.after("e-1") is None
    assert history.after("start") is None, "the start of time was evicted with them"
    assert len(history) == 0


def test_a_zero_ttl_keeps_events_of_any_age() -> None:
    history = History(100, 0)
    for event in events("e-1", "e-2", age=10**6):
        history.append(event)
    assert ids(history.after("e-1")) == ["e-2"]


def test_unknown_ids_are_not_vouched_for() -> None:
    history = History(10, 0)
    for event in events("e-1"):
        history.append(event)
    assert history.after("made-up") is None
    assert history.after("") is None


def test_the_mark_stands_for_the_start_until_evicted() -> None:
    history = History(2, 0)
    history.mark("epoch-0")
    assert ids(history.after("epoch-0")) == []
    for event in events("e-1", "e-2"):
        history.append(event)
    assert ids(history.after("epoch-0")) == ["e-1", "e-2"]
    history.append(events("e-3")[0])
    assert history.after("epoch-0") is None, "e-1 was evicted: the start no longer vouches"


def test_a_mark_after_events_is_ignored() -> None:
    history = History(10, 0)
    history.append(events("e-1")[0])
    history.mark("late")
    assert history.after("late") is None


def test_size_zero_keeps_nothing() -> None:
    history = History(0, 0)
    history.mark("epoch-0")
    for event in events("e-1", "e-2"):
        history.append(event)
    assert len(history) == 0
    assert history.after("e-1") is None
    assert history.after("epoch-0") is None
    assert history.last_id is None


def sized(event_id: str, size: int) -> Event:
    event = Event("a", b'"' + b"x" * (size - 2) + b'"')
    event.id = event_id
    return event


def test_the_byte_bound_evicts_the_oldest_and_keeps_the_newest() -> None:
    one = sized("e-0", 1000).held_bytes
    history = History(100, 0, max_bytes=3 * one)
    for n in range(1, 6):
        history.append(sized(f"e-{n}", 1000))
    assert len(history) == 3 and history.bytes == 3 * one
    assert history.after("e-1") is None, "evicted by bytes: a resume from it gets the gap"
    assert ids(history.after("e-3")) == ["e-4", "e-5"]
    history.append(sized("e-6", 10 * one))  # larger than the whole bound: kept alone
    assert history.last_id == "e-6" and history.after("e-5") is None
    assert len(history) == 1 and history.bytes == sized("e-6", 10 * one).held_bytes


def test_extend_keeps_what_appending_one_by_one_keeps() -> None:
    """A batch (``extend``) ends in the same state as appending its events one at a time,
    whichever bound evicts: count, bytes (the newest always kept) or age."""
    bounds = [(3, 0.0, 0), (100, 0.0, 3 * 410), (100, 0.0, 10), (100, 5.0, 0), (0, 0.0, 0)]
    for size, ttl, max_bytes in bounds:
        one, batch = History(size, ttl, max_bytes), History(size, ttl, max_bytes)
        one.mark("start")
        batch.mark("start")
        old = events("e-1", "e-2", age=10.0)
        new = events("e-3", "e-4", "e-5", "e-6")
        for event in old + new:
            one.append(event)
        batch.extend(old)
        batch.extend(new)
        assert list(batch) == list(one), (size, ttl, max_bytes)
        assert batch.bytes == one.bytes
        for event_id in ("start", "e-1", "e-2", "e-3", "e-5", "e-6"):
            assert ids(batch.after(event_id)) == ids(one.after(event_id)), event_id
