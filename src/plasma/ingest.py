"""The bounded queue between a source reading its broker and the hub parsing and fanning out.

A source that reads and then publishes in one step reads nothing while a large event is parsed,
encoded and queued for its subscribers. Redis meanwhile keeps pub/sub messages for plasma in
its own output buffer, and closes the subscription once that passes its
``client-output-buffer-limit pubsub`` (32 MB by default): every message in that buffer is lost.
So a source only ``offer``s what it reads: a small message with nothing queued before it is
published at once; anything else is queued, and the queue's task publishes in passes of at
most ``_PASS_BYTES`` and lets the loop run (and the source read) between passes. The queue holds at
most ``max_bytes``: when it is full the source stops reading (``wait_for_room``), which is
logged and counted (``source_queue_full``), before Redis gets to cut the connection.

Sources that read many messages at once (Redis pub/sub and Streams) ``offer_batch`` a whole
read: it is published in one ``Hub.publish_batch`` call (one history append, one flush) when
nothing waits before it and it holds no large message, else queued as one item.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable
from typing import NamedTuple

from plasma.logging import LogThrottle
from plasma.metrics import Metrics

__all__ = ["Batch", "Ingest"]

log = logging.getLogger("plasma.ingest")

# Bytes published per pass before the loop gets a turn: one large event, or ~1,000 small ones.
_PASS_BYTES = 256 * 1024

# Messages under this size are published by the reading task itself when nothing waits before
# them: parsing them costs microseconds, and a queue hop per event cost ~20% of a burst's
# deliveries/s (fewer events per write).
_INLINE_BYTES = 16 * 1024

# A batch is published inline (by the reading task) when it is smaller than this and holds
# no message of _INLINE_BYTES or more: one read's worth of small messages.
_INLINE_BATCH_BYTES = 512 * 1024

Publish = Callable[[bytes | str, str, str], object]


class Batch(NamedTuple):
    """Messages of one read, in order."""

    raws: list[bytes]
    channels: list[bytes]
    """Each message's channel, decoded only to log an invalid message."""
    ids: list[str] | None
    """The broker's ids (stream entries); ``None``: the hub numbers the events."""


PublishBatch = Callable[[Batch], object]


class Ingest:
    """Messages a source has read and the hub has not published yet, at most ``max_bytes``."""

    def __init__(
        self, publish: Publish, publish_batch: PublishBatch, metrics: Metrics, max_bytes: int
    ) -> None:
        self.max_bytes = max_bytes
        self.bytes = 0
        self._publish = publish
        self._publish_batch = publish_batch
        self._metrics = metrics
        # Single messages as (raw, channel, id), and batches.
        self._queue: deque[tuple[bytes | str, str, str] | Batch] = deque()
        self._task: asyncio.Task[None] | None = None
        self._work: asyncio.Future[None] | None = None
        self._room: asyncio.Future[None] | None = None
        self._full_log = LogThrottle()
        metrics.gauge("source_queue_bytes", lambda: self.bytes)

    def offer(self, raw: bytes | str, channel: str, event_id: str = "") -> bool:
        """Publish or queue one message; False when the queue is now full (await
        ``wait_for_room``). A small message with nothing queued before it is published at once,
        as if there were no queue: most events take no extra hop."""
        size = len(raw)
        if size < _INLINE_BYTES and not self._queue:
            self._publish(raw, channel, event_id)
            return True
        self._queue.append((raw, channel, event_id))
        self.bytes += size
        return self._queued()

    def offer_batch(self, batch: Batch) -> bool:
        """``offer`` for one read's messages: published at once when it is small and nothing
        waits before it, else queued whole; False when the queue is now full."""
        size = 0
        largest = 0
        for raw in batch.raws:
            n = len(raw)
            size += n
            if n > largest:
                largest = n
        if not self._queue and size < _INLINE_BATCH_BYTES and largest < _INLINE_BYTES:
            self._publish_batch(batch)
            return True
        self._queue.append(batch)
        self.bytes += size
        return self._queued()

    def _queued(self) -> bool:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())
        work = self._work
        if work is not None and not work.done():
            work.set_result(None)
        return self.bytes < self.max_bytes

    async def wait_for_room(self) -> None:
        """Stop reading until the hub has caught up; say so, since the broker buffers meanwhile."""
        if self.bytes < self.max_bytes:
            return
        self._metrics.source_queue_full += 1
        level, suppressed = self._full_log.level()
        log.log(
            level,
            "reading from the source paused: the ingest queue is full (the broker buffers "
            "meanwhile; Redis cuts a subscription past client-output-buffer-limit pubsub)",
            extra={
                "queued": self.bytes,
                "limit": self.max_bytes,
                "suppressed_since_last": suppressed,
            },
        )
        self._room = asyncio.get_running_loop().create_future()
        await self._room

    def publish_queued(self) -> None:
        """Publish everything queued now, in order: a gap event announced next (a lost
        subscription re-made) then follows every message read before the loss."""
        queue = self._queue
        while queue:
            self._publish_one(queue.popleft())
        self._wake_reader()

    def _publish_one(self, item: tuple[bytes | str, str, str] | Batch) -> int:
        """Publish one queued message or batch; return its size."""
        try:
            if isinstance(item, Batch):
                size = sum(map(len, item.raws))
                self.bytes -= size
                self._publish_batch(item)
            else:
                raw, channel, event_id = item
                size = len(raw)
                self.bytes -= size
                self._publish(raw, channel, event_id)
        except Exception:  # a bug must not stop every event after it
            log.exception("publishing a message failed; going on (please report)")
            return 0
        return size

    def _wake_reader(self) -> None:
        room = self._room
        if room is not None and self.bytes < self.max_bytes:
            self._room = None
            if not room.done():
                room.set_result(None)

    async def _run(self) -> None:
        queue = self._queue
        publish_one = self._publish_one
        loop = asyncio.get_running_loop()
        while True:
            if not queue:
                self._work = loop.create_future()
                await self._work
                self._work = None
            budget = _PASS_BYTES
            while queue and budget > 0:
                budget -= publish_one(queue.popleft())
            self._wake_reader()
            # Let the loop read sockets (the source's among them) and flush before the next pass.
            await asyncio.sleep(0)

    async def aclose(self) -> None:
        """Stop publishing; what is still queued is dropped."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._queue.clear()
        self.bytes = 0
