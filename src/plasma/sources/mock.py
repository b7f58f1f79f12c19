"""The embedded default source: a fake event of each type every interval, no broker needed."""

from __future__ import annotations

import asyncio
import itertools
import time
from typing import TYPE_CHECKING

import orjson

from plasma.errors import SourceError
from plasma.metrics import Metrics

if TYPE_CHECKING:
    from plasma.hub import Hub

__all__ = ["MOCK_TYPES", "MockSource"]

MOCK_TYPES = ("poll", "program", "other")


class MockSource:
    """Publishes one event of each of ``MOCK_TYPES`` every ``interval`` seconds."""

    name = "mock"

    def __init__(self, interval: float, metrics: Metrics) -> None:
        self._interval = interval
        self._metrics = metrics
        self._hub: Hub | None = None

    async def run(self, hub: Hub) -> None:
        self._hub = hub
        self._metrics.source_up = 1
        for n in itertools.count(1):
            await asyncio.sleep(self._interval)
            for event_type in MOCK_TYPES:
                raw = orjson.dumps(
                    {"meta": {"type": event_type}, "data": {"n": n, "time": time.time()}}
                )
                hub.publish_raw(raw, "mock")

    async def healthy(self) -> bool:
        return True

    async def publish_many(self, raws: list[bytes], channel: str | None = None) -> list[str | None]:
        hub = self._hub
        if hub is None:
            raise SourceError("the mock source is not running yet")
        events = [hub.publish_raw(raw, "publish") for raw in raws]
        return [e.id if e is not None else None for e in events]

    async def aclose(self) -> None:
        self._metrics.source_up = 0
