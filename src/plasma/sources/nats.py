"""The core NATS source: subscribe to the configured subjects, live, like Redis pub/sub.

Publishers send the same JSON envelope as the message body (``nats pub news.1
'{"meta":{"type":"news"},"data":1}'``); NATS wildcards (``news.*``, ``news.>``) are allowed.
Core NATS keeps nothing, so ids are plasma's own (``<epoch>-<n>``), and whatever is published
while plasma is not subscribed is lost: after every reconnection (nats-server also cuts a
connection that reads too slowly), and when nats-py drops messages because the hub falls behind
(its pending limits, after the ingest queue filled), every open stream gets a gap event, the
loss is counted (``source_gaps``) and logged.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from nats.aio.msg import Msg
from nats.errors import SlowConsumerError

from plasma.config import NatsConfig
from plasma.errors import SourceError
from plasma.logging import LogThrottle
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

__all__ = ["NatsSource"]

log = logging.getLogger("plasma.sources.nats")


class NatsSource:
    """Reads ``config.subjects`` over one NATS connection."""

    name = "nats"

    def __init__(self, config: NatsConfig, metrics: Metrics) -> None:
        self._nats = NatsConnection(config, metrics, name=self.name, log=log)
        self._last_gap = ""
        self._drop_log = LogThrottle()

    async def run(self, hub: Hub) -> None:
        await self._nats.reconnect.run(lambda: self._listen(hub))

    async def _listen(self, hub: Hub) -> None:
        conn = self._nats
        c = conn.config
        gather = Gather(hub.ingest, with_ids=False)
        add = gather.add

        def take(msg: Msg) -> None:
            add(msg.data, msg.subject)

        on_message = paced(take, gather, hub.ingest.wait_for_room)

        async def on_error(exc: Exception) -> None:
            if isinstance(exc, SlowConsumerError):
                self._dropped(hub)

        try:
            client = await conn.connect(on_error)
            for subject in c.subjects:
                await client.subscribe(subject, cb=on_message)
            # The server has every SUB once it answers a PING.
            await conn.round_trip(c.timeout * 5)
            if conn.reconnect.connected("subscribed", subjects=c.subjects):
                self._announce_gap(hub)
            await conn.until_lost()
        finally:
            await conn.close()

    def _dropped(self, hub: Hub) -> None:
        """nats-py dropped a message: its pending queue was full (the hub fell behind)."""
        level, suppressed = self._drop_log.level()
        log.log(
            level,
            "nats messages lost: plasma read too slowly and nats-py's pending limit was reached;"
            " a gap was sent",
            extra={"addr": self._nats.address, "suppressed_since_last": suppressed},
        )
        self._announce_gap(hub)

    def _announce_gap(self, hub: Hub) -> None:
        """One gap per loss: nats-py reports every dropped message, the hub hears it once."""
        if self._last_gap and hub.last_id == self._last_gap:
            return
        self._last_gap = hub.announce_gap().id

    async def healthy(self) -> bool:
        return await self._nats.healthy()

    async def publish_many(self, raws: list[bytes], channel: str | None = None) -> list[str | None]:
        """Publish on ``channel`` or the first subject without wildcards; core NATS has no
        transaction, so a connection lost mid-batch may have published part of it."""
        subject = channel or debug_subject(self._nats.config.subjects)
        try:
            client = self._nats.require()
            for raw in raws:
                await client.publish(subject, raw)
            await self._nats.round_trip(PROBE_TIMEOUT)
        except (NatsError, OSError, TimeoutError) as exc:
            raise SourceError(f"cannot publish to nats at {self._nats.address}: {exc}") from exc
        return [None] * len(raws)  # each plasma gives the id when the message arrives

    async def aclose(self) -> None:
        await self._nats.close()
