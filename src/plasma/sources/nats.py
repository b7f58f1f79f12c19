"""The core NATS source: subscribe to the configured subjects, live, like Redis pub/sub.

Publishers send the same JSON envelope as the message body (``nats pub news.1
'{"meta":{"type":"news"},"data":1}'``); NATS wildcards (``news.*``, ``news.>``) are allowed.
Core NATS keeps nothing, so ids are plasma's own (``<epoch>-<n>``), and whatever is published
while plasma is not subscribed is lost: after every reconnection, and when nats-py drops
messages because plasma reads too slowly, every open stream gets a gap event.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from nats.aio.msg import Msg
from nats.errors import SlowConsumerError

from plasma.config import NatsConfig
from plasma.errors import SourceError
from plasma.metrics import Metrics
from plasma.sources.nats_connection import (
    PROBE_TIMEOUT,
    NatsConnection,
    NatsError,
    debug_subject,
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

    async def run(self, hub: Hub) -> None:
        await self._nats.reconnect.run(lambda: self._listen(hub))

    async def _listen(self, hub: Hub) -> None:
        conn = self._nats
        c = conn.config
        publish = hub.publish_raw

        async def on_message(msg: Msg) -> None:
            publish(msg.data, msg.subject)

        async def on_error(exc: Exception) -> None:
            if isinstance(exc, SlowConsumerError):
                self._announce_gap(hub)

        try:
            client = await conn.connect(on_error)
            for subject in c.subjects:
                await client.subscribe(subject, cb=on_message)
            # The server has every SUB once it answers a PING.
            await client.flush(timeout=c.timeout * 5)  # type: ignore[arg-type]
            if conn.reconnect.connected("subscribed", subjects=c.subjects):
                self._announce_gap(hub)
            await conn.until_lost()
        finally:
            await conn.close()

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
            await client.flush(timeout=PROBE_TIMEOUT)  # type: ignore[arg-type]
        except (NatsError, OSError, TimeoutError) as exc:
            raise SourceError(f"cannot publish to nats at {self._nats.address}: {exc}") from exc
        return [None] * len(raws)  # each plasma gives the id when the message arrives

    async def aclose(self) -> None:
        await self._nats.close()
