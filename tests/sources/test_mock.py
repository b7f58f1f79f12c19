"""The mock source: a fake event of each type (poll, program, other) every interval."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

import orjson
import pytest

from plasma.events import Event
from plasma.hub import Hub
from plasma.metrics import Metrics
from plasma.sources.mock import MOCK_TYPES, MockSource
from tests.support import PlasmaProcess, SSEStream


class Collector:
    """A fake hub subscriber that keeps every frame it is flushed."""

    def __init__(self) -> None:
        self.last_seq = 0
        self.pending: list[bytes] = []
        self.events: list[dict[str, object]] = []

    @staticmethod
    def encoder(event: Event) -> bytes:
        return event.body

    def push(self, data: bytes, count: int = 1) -> Collector | None:
        self.pending.append(data)
        return self if len(self.pending) == 1 else None

    def flush(self) -> None:
        self.events.extend(orjson.loads(raw) for raw in self.pending)
        self.pending.clear()


async def test_mock_source_emits_each_type_every_interval() -> None:
    metrics = Metrics()
    hub = Hub(metrics)
    collector = Collector()
    hub.subscribe(collector, MOCK_TYPES)
    source = MockSource(0.02, metrics)
    task = asyncio.create_task(source.run(hub))
    try:
        async with asyncio.timeout(5):
            while len(collector.events) < 9:
                await asyncio.sleep(0.01)
        assert await source.healthy() is True
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await source.aclose()
    assert set(MOCK_TYPES) == {"poll", "program", "other"}
    types = [e["meta"]["type"] for e in collector.events]  # type: ignore[index]
    assert types[:9] == list(MOCK_TYPES) * 3
    rounds = [e["data"]["n"] for e in collector.events[:9]]  # type: ignore[index]
    assert rounds == [1, 1, 1, 2, 2, 2, 3, 3, 3]
    assert metrics.events_skipped == {}


async def test_mock_source_publish_goes_into_the_hub() -> None:
    metrics = Metrics()
    hub = Hub(metrics)
    collector = Collector()
    hub.subscribe(collector, ("debug",))
    source = MockSource(3600, metrics)
    task = asyncio.create_task(source.run(hub))
    try:
        async with asyncio.timeout(5):
            while not metrics.source_up:  # run() has handed the source its hub
                await asyncio.sleep(0.01)
        ids = await source.publish_many([b'{"meta":{"type":"debug:x"},"data":{"ok":true}}'])
        assert ids[0] is not None and ids[0].startswith(hub.epoch)
        async with asyncio.timeout(5):
            while not collector.events:
                await asyncio.sleep(0.01)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert collector.events == [{"meta": {"type": "debug:x"}, "data": {"ok": True}}]


@pytest.mark.integration
async def test_plasma_streams_mock_events_by_default(
    plasma: Callable[..., PlasmaProcess],
) -> None:
    server = plasma(PLASMA_SUBSCRIBER_MOCK_INTERVAL="100ms")
    stream = await SSEStream.open(server.url + "/", "poll,program,other")
    try:
        assert await stream.wait_retry() == 2000
        got = [(await stream.next_event()).json() for _ in range(6)]
    finally:
        await stream.close()
    types = [e["meta"]["type"] for e in got]
    assert set(types) == {"poll", "program", "other"}
    assert all(isinstance(e["data"], dict) for e in got)
