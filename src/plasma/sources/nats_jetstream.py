"""The NATS JetStream source: the stream's sequence number is the event id.

Like ``redis-stream``, a JetStream stream keeps its messages, so this source is also the hub's
*archive*: a client resuming from an id older than the in-memory history (or from before a
plasma restart, or from another node on the same stream) gets the missed range from JetStream.
Every node and worker sees the same ids, so a client may reconnect anywhere.

The stream ``PLASMA_SUBSCRIBER_NATS_STREAM`` is created over ``PLASMA_SUBSCRIBER_NATS_SUBJECTS``
when it does not exist. plasma reads it with an ephemeral ordered consumer (no acks, flow
control, the server resends nothing) starting after the last sequence it handed on, so a
reconnection loses nothing and repeats nothing. What nats-py cannot mend (a message dropped from
its full pending queue, an ordered consumer it failed to re-create) makes this source read
again from that sequence, logged, rather than go on with a hole or stop without a word.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, DeliverPolicy, StreamInfo
from nats.js.errors import NotFoundError

from plasma.config import NatsConfig
from plasma.errors import InvalidEvent, SourceError
from plasma.events import Event, parse_event
from plasma.metrics import Metrics
from plasma.sources.nats_connection import (
    PROBE_TIMEOUT,
    Gather,
    NatsConnection,
    NatsError,
    debug_subject,
    paced,
)

if TYPE_CHECKING:
    from plasma.hub import Hub

__all__ = ["NatsJetStreamSource"]

log = logging.getLogger("plasma.sources.nats_jetstream")

# Most messages a single resume replays from JetStream.
_REPLAY_LIMIT = 100_000


class NatsJetStreamSource:
    """Reads stream ``config.stream`` from where it started, across reconnects."""

    name = "nats-jetstream"

    def __init__(self, config: NatsConfig, metrics: Metrics) -> None:
        self._nats = NatsConnection(config, metrics, name=self.name, log=log)
        self._position: int | None = None
        """The sequence of the last message handed to the hub."""

    async def run(self, hub: Hub) -> None:
        await self._nats.reconnect.run(lambda: self._listen(hub))

    def _jetstream(self) -> JetStreamContext:
        return self._nats.require().jetstream(timeout=self._nats.config.timeout * 5)

    async def _listen(self, hub: Hub) -> None:
        conn = self._nats
        c = conn.config
        gather = Gather(hub.ingest, with_ids=True)
        failed = False

        async def on_error(exc: Exception) -> None:
            # nats-py reports here what it cannot mend itself: a message dropped from a full
            # pending queue (it does not notice the hole), an ordered consumer it failed to
            # re-create (it then reads nothing, ever). Hand on nothing more from this
            # subscription (what is queued may follow a hole) and read again from the last
            # sequence handed on.
            nonlocal failed
            if failed:
                return
            failed = True
            error = str(exc) or type(exc).__name__
            log.warning(
                "jetstream subscription failed; reading again after the last sequence",
                extra={"stream": c.stream, "position": self._position, "error": error},
            )
            conn.fail(f"jetstream subscription failed: {error}")

        try:
            await conn.connect(on_error)
            js = self._jetstream()
            info = await self._stream(js)
            if self._position is None:
                self._position = info.state.last_seq
                hub.mark_start(str(self._position))

            def take(msg: Msg) -> None:
                seq = msg.metadata.sequence.stream
                if failed or seq <= self._position:  # type: ignore[operator]
                    return
                self._position = seq
                gather.add(msg.data, msg.subject, str(seq))

            await js.subscribe(
                c.subjects[0] if len(c.subjects) == 1 else "",
                stream=c.stream,
                cb=paced(take, gather, hub.ingest.wait_for_room),
                ordered_consumer=True,
                config=ConsumerConfig(
                    deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
                    opt_start_seq=self._position + 1,
                ),
            )
            conn.reconnect.connected("reading", stream=c.stream, subjects=c.subjects)
            await conn.until_lost()
        finally:
            await conn.close()

    async def _stream(self, js: JetStreamContext) -> StreamInfo:
        """The stream's state, creating it over the configured subjects when it is missing."""
        c = self._nats.config
        try:
            return await js.stream_info(c.stream)
        except NotFoundError:
            log.info(
                "creating the jetstream stream",
                extra={"stream": c.stream, "subjects": c.subjects},
            )
            return await js.add_stream(name=c.stream, subjects=list(c.subjects))

    async def events_after(self, event_id: str) -> list[Event] | None:
        """Every event after ``event_id`` still in the stream, or ``None`` for a gap."""
        if not event_id.isdigit():
            return None
        after = int(event_id)
        try:
            js = self._jetstream()
            state = (await js.stream_info(self._nats.config.stream)).state
            if after > state.last_seq:
                return None  # an id from the future: another stream, or made up
            if state.first_seq > after + 1:
                return None  # the messages just after it were removed (limits, purge)
            if state.num_deleted:
                return None  # messages deleted one by one: the range may have holes
            if after == state.last_seq:
                return []
            return await self._read(js, after + 1, state.last_seq)
        except (NatsError, SourceError, OSError, TimeoutError) as exc:
            log.warning(
                "cannot read missed events from jetstream; sending a gap",
                extra={"addr": self._nats.address, "error": str(exc) or type(exc).__name__},
            )
            return None

    async def _read(self, js: JetStreamContext, first: int, last: int) -> list[Event] | None:
        """Messages ``first`` to ``last`` through an ephemeral ordered consumer."""
        c = self._nats.config
        found: list[Event] = []
        done = asyncio.Event()

        async def on_message(msg: Msg) -> None:
            seq = msg.metadata.sequence.stream
            if seq > last or len(found) >= _REPLAY_LIMIT:
                done.set()
                return
            try:
                event = parse_event(msg.data)
            except InvalidEvent:
                pass  # counted and logged when it was read live
            else:
                event.id = str(seq)
                found.append(event)
            if seq >= last:
                done.set()

        subscription = await js.subscribe(
            c.subjects[0] if len(c.subjects) == 1 else "",
            stream=c.stream,
            cb=on_message,
            ordered_consumer=True,
            config=ConsumerConfig(
                deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=first
            ),
        )
        try:
            # A filtered consumer may never see ``last`` itself: idle means caught up.
            while not done.is_set():
                seen = len(found)
                try:
                    await asyncio.wait_for(done.wait(), c.timeout * 5)
                except TimeoutError:
                    if len(found) == seen:
                        break
        finally:
            await subscription.unsubscribe()
        return found

    async def healthy(self) -> bool:
        return await self._nats.healthy()

    async def publish_many(self, raws: list[bytes], channel: str | None = None) -> list[str | None]:
        """Publish on ``channel`` or the first subject without wildcards; each acknowledged
        message's stream sequence is its id. JetStream has no batch transaction: a failure
        mid-batch leaves the events before it published."""
        subject = channel or debug_subject(self._nats.config.subjects)
        ids: list[str | None] = []
        try:
            jetstream = self._jetstream()
            for raw in raws:
                ack = await asyncio.wait_for(
                    jetstream.publish(subject, raw, stream=self._nats.config.stream),
                    PROBE_TIMEOUT * 2,
                )
                ids.append(str(ack.seq))
        except (NatsError, OSError, TimeoutError) as exc:
            raise SourceError(
                f"cannot publish to jetstream at {self._nats.address}: {exc}"
            ) from exc
        return ids

    async def aclose(self) -> None:
        await self._nats.close()
