"""Live and replay matching agree: an event reaches a subscriber live exactly when a resume
from before it would replay it (``Hub.publish``'s inlined prefix walk and ``type_prefixes``).
"""

from __future__ import annotations

import asyncio

from hypothesis import given
from hypothesis import strategies as st

from plasma.events import Event, type_prefixes
from plasma.hub import Hub
from plasma.metrics import Metrics
from tests.test_hub import FakeSubscriber

segments = st.sampled_from(["a", "b", "ab", "1"])
types = st.lists(segments, min_size=1, max_size=4).map(":".join)


def test_type_prefixes_are_every_whole_segment_prefix() -> None:
    assert type_prefixes("a:b:c") == ["a", "a:b", "a:b:c"]
    assert type_prefixes("a") == ["a"]


@given(
    wanted=st.lists(types, min_size=1, max_size=4, unique=True),
    published=st.lists(types, min_size=1, max_size=20),
)
def test_live_delivery_matches_replay(wanted: list[str], published: list[str]) -> None:
    async def run() -> tuple[list[str], list[str], list[str]]:
        hub = Hub(Metrics(), history_size=100)
        start = hub.last_id
        live = FakeSubscriber("live")
        hub.subscribe(live, tuple(wanted))
        for t in published:
            hub.publish(Event(t, b"1"))
        replayed = FakeSubscriber("replayed")
        assert await hub.resume(replayed, tuple(wanted), start)
        for _ in range(10):
            await asyncio.sleep(0)
        expected = [t for t in published if set(type_prefixes(t)) & set(wanted)]
        return live.types, replayed.types, expected

    live, replayed, expected = asyncio.run(run())
    assert live == expected
    assert replayed == expected
