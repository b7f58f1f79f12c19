"""The node's one source reader: with several workers, events are read and numbered once.

A thread of the supervisor runs the configured source into a hub of its own that has no
subscribers: it parses and numbers every event (one id space for the node) and keeps the
history. At the end of each loop turn the events read in it are encoded once (one
``plasma.feed`` ``EVENTS`` frame) and written to every worker's Unix socket: one write per
worker per batch. A worker that connects (at start, or restarted after a crash) first gets the
whole history, so it can vouch for every id the node still holds before it takes a client.

Sources whose events carry the broker's own ids (Redis Streams) need none of this: every worker
reads them itself, as with one process.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
from collections.abc import Sequence
from typing import Any

from plasma.config import Config
from plasma.errors import SourceError, SourceGaveUp, StartupError
from plasma.events import Event
from plasma.feed import (
    PUBLISH,
    PUBLISHED,
    READY,
    REQUEST,
    START,
    STATUS,
    FrameBuffer,
    events_frame,
    frame,
    unpack_publish,
)
from plasma.hub import Archive, Hub
from plasma.ingest import Batch
from plasma.metrics import Metrics
from plasma.peers import Peers
from plasma.process import EXIT_SOURCE_GAVE_UP, EXIT_STARTUP, event_loop_factory
from plasma.sources import create_source
from plasma.sources.base import Source

__all__ = ["NodeReader", "start_reader"]

log = logging.getLogger("plasma.reader")

FEED_SOCKET = "feed.sock"
"""The reader's Unix socket, in the supervisor's private (0700) directory."""
_BACKLOG_LIMIT = 32 * 1024 * 1024
"""Bytes a worker may leave unread before the reader drops it (Redis drops a pub/sub client
at the same size): a worker that far behind cannot vouch for its history; it exits and the
supervisor starts a fresh one, which receives the history again."""
_BATCH_EVENTS = 64
"""Most events in one frame (~13 KB of 200-byte events). A source's read of 200 events is
parsed and sent in slices of 64 (``_NodeHub.publish_batch``): the workers fan out the first
frame while the reader still parses the rest, which measured as fast as one frame per read or
faster (docs/benchmarks.md). Each worker publishes a frame as one batch."""
_STATUS_INTERVAL = 0.25
_START_TIMEOUT = 10.0
_STOP_TIMEOUT = 5.0


class _NodeHub(Hub):
    """The reader's hub: numbers events and keeps the history; hands each event to the feed."""

    def __init__(self, reader: NodeReader, metrics: Metrics, config: Config) -> None:
        super().__init__(
            metrics,
            history_size=config.history_size,
            history_ttl=config.history_ttl,
            max_event_bytes=config.limits.max_event_size,
        )
        self.start_id = f"{self.epoch}-0"
        self._reader = reader

    def publish_batch(self, batch: Batch) -> list[Event]:
        raws = batch.raws
        if len(raws) <= _BATCH_EVENTS:
            return super().publish_batch(batch)
        events: list[Event] = []
        for start in range(0, len(raws), _BATCH_EVENTS):
            end = start + _BATCH_EVENTS
            ids = batch.ids
            part = Batch(raws[start:end], batch.channels[start:end], ids and ids[start:end])
            events += super().publish_batch(part)  # sent as a frame before the next is parsed
        return events

    def publish_events(self, events: Sequence[Event]) -> int:
        count = super().publish_events(events)
        self._reader.queue(events)
        return count

    def announce_gap(self) -> Event:
        event = super().announce_gap()
        self._reader.queue((event,))  # every worker's streams hear of the loss too
        return event

    def mark_start(self, event_id: str) -> None:
        super().mark_start(event_id)
        self.start_id = event_id
        self._reader.broadcast(frame(START, event_id.encode()))


class _WorkerLink(asyncio.Protocol):
    """The reader's end of one worker's feed."""

    def __init__(self, reader: NodeReader) -> None:
        self.reader = reader
        self.transport: asyncio.Transport | None = None
        self.frames = FrameBuffer()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.reader.attach(self)

    def data_received(self, data: bytes) -> None:
        for kind, payload in self.frames.feed(data):
            if kind == PUBLISH:
                self.reader.publish_for(self, payload)

    def connection_lost(self, exc: Exception | None) -> None:
        self.reader.detach(self)

    def send(self, data: bytes) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if transport.get_write_buffer_size() > _BACKLOG_LIMIT:
            log.error(
                "a worker fell too far behind the node's events; dropping it",
                extra={"unread_bytes": transport.get_write_buffer_size()},
            )
            transport.abort()
            return
        transport.write(data)


class NodeReader:
    """Runs ``source`` in a thread of the supervisor and feeds every worker that connects."""

    def __init__(self, config: Config, source: Source, metrics: Metrics, directory: str) -> None:
        self.path = os.path.join(directory, FEED_SOCKET)
        self.source = source
        self.metrics = metrics
        self.hub = _NodeHub(self, metrics, config)
        self.exit_code: int | None = None
        """Set when the reader ended on its own (the source gave up or failed)."""
        self._peers = Peers(directory, "reader")
        self._links: dict[_WorkerLink, None] = {}
        self._pending: list[Event] = []
        self._flush_scheduled = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._started = threading.Event()
        self._error: BaseException | None = None
        # A daemon: a reader stuck past the stop timeout must not keep the supervisor alive.
        self._thread = threading.Thread(target=self._thread_main, name="plasma-reader", daemon=True)
        self._tasks: set[asyncio.Task[Any]] = set()
        self._source_up = -1

    # --- the supervisor's side (main thread) ----------------------------------------------------

    def start(self) -> None:
        """Start the thread; return once workers can connect. Raise ``StartupError`` if not."""
        self._thread.start()
        if not self._started.wait(_START_TIMEOUT):
            raise StartupError("the node's source reader did not start")
        if self._error is not None:
            raise StartupError(f"cannot open the workers' feed at {self.path}: {self._error}")

    def stop(self) -> None:
        """Stop the source and close every feed; bounded."""
        loop, stop = self._loop, self._stop
        if loop is not None and stop is not None:
            with contextlib.suppress(RuntimeError):  # the loop already ended
                loop.call_soon_threadsafe(stop.set)
        self._thread.join(_STOP_TIMEOUT)

    # --- the reader's thread ----------------------------------------------------------------

    def _thread_main(self) -> None:
        try:
            with asyncio.Runner(loop_factory=event_loop_factory()) as runner:
                runner.run(self._main())
        except Exception:
            log.exception("the node's source reader failed; stopping the server")
            self.exit_code = EXIT_STARTUP
        finally:
            self._started.set()

    async def _main(self) -> None:
        loop = self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        try:
            server = await loop.create_unix_server(lambda: _WorkerLink(self), self.path)
        except OSError as exc:
            self._error = exc
            return
        self._started.set()
        source_task = loop.create_task(self.source.run(self.hub))
        status_task = loop.create_task(self._report_status())
        stop_task = loop.create_task(self._stop.wait())
        try:
            await asyncio.wait({source_task, stop_task}, return_when=asyncio.FIRST_COMPLETED)
            if source_task.done():
                self._source_ended(source_task)
        finally:
            for task in (source_task, status_task, stop_task):
                task.cancel()
            # Bounded: a source must never hold shutdown hostage.
            await asyncio.wait({source_task, status_task, stop_task}, timeout=2.0)
            await self.source.aclose()
            server.close()
            for link in list(self._links):
                if link.transport is not None:
                    link.transport.close()
            with contextlib.suppress(OSError):
                os.unlink(self.path)

    def _source_ended(self, task: asyncio.Task[None]) -> None:
        exc = None if task.cancelled() else task.exception()
        if isinstance(exc, SourceGaveUp):
            log.critical("giving up: %s", exc)
            self.exit_code = EXIT_SOURCE_GAVE_UP
        else:
            log.error("the node's source stopped; stopping the server", exc_info=exc)
            self.exit_code = EXIT_STARTUP

    async def _report_status(self) -> None:
        """Tell workers when the source connects or drops; share this process's metrics."""
        ticks = 0
        while True:
            up = self.metrics.source_up
            if up != self._source_up:
                self._source_up = up
                self.broadcast(frame(STATUS, bytes([up])))
            if ticks % round(1 / _STATUS_INTERVAL) == 0:
                snapshot = self.metrics.snapshot()
                snapshot["workers"] = 0  # the supervisor is not a worker
                self._peers.write(snapshot)
            ticks += 1
            await asyncio.sleep(_STATUS_INTERVAL)

    # --- feeding the workers ------------------------------------------------------------------

    def queue(self, events: Sequence[Event]) -> None:
        """Send ``events`` at the end of this loop turn with the others, or now when
        ``_BATCH_EVENTS`` or more are pending."""
        self._pending.extend(events)
        if len(self._pending) >= _BATCH_EVENTS:
            self._flush()  # the workers start on these while the reader parses the rest
        elif not self._flush_scheduled:
            self._flush_scheduled = True
            assert self._loop is not None
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        if not self._pending:
            return
        data = events_frame(self._pending)
        self._pending.clear()
        for link in list(self._links):
            link.send(data)

    def broadcast(self, data: bytes) -> None:
        self._flush()  # whatever was read before goes first
        for link in list(self._links):
            link.send(data)

    def attach(self, link: _WorkerLink) -> None:
        """A worker connected: send it the history, then count it in for live events."""
        self._flush()  # events already in the history must not reach the newcomer twice
        history = self.hub.history
        parts = []
        if history.after(self.hub.start_id) is not None:  # nothing evicted since the start
            parts.append(frame(START, self.hub.start_id.encode()))
        parts.append(events_frame(history))
        parts.append(frame(READY))
        parts.append(frame(STATUS, bytes([self.metrics.source_up])))
        link.send(b"".join(parts))
        self._links[link] = None

    def detach(self, link: _WorkerLink) -> None:
        self._links.pop(link, None)

    def publish_for(self, link: _WorkerLink, payload: bytes) -> None:
        """A worker's ``POST /debug`` or publish API: publish through the node's source, answer."""
        number, channel, raws = unpack_publish(payload)
        task = asyncio.get_running_loop().create_task(self._publish(link, number, channel, raws))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _publish(
        self, link: _WorkerLink, number: int, channel: str | None, raws: list[bytes]
    ) -> None:
        try:
            await self.source.publish_many(raws, channel)
        except SourceError as exc:
            error = str(exc) or "publishing failed"
        except Exception:
            log.exception("publishing for a worker failed (please report)")
            error = "publishing failed"
        else:
            error = ""
        link.send(frame(PUBLISHED, REQUEST.pack(number) + error.encode()))


def start_reader(config: Config, directory: str) -> NodeReader | None:
    """Start the node's reader, or return ``None`` when each worker reads the source itself.

    A source that names its events with the broker's ids (an ``Archive``: Redis Streams) gives
    every worker the same ids already, and answers resumes from the broker.
    """
    metrics = Metrics()
    source = create_source(config.source, metrics)
    if isinstance(source, Archive):
        return None
    reader = NodeReader(config, source, metrics, directory)
    reader.start()
    return reader
