"""What both NATS sources share: connection options, the reconnect loop, the health probe.

plasma turns nats-py's own reconnection off and reconnects itself, as it does for Redis: one
policy for every broker (``Reconnect``: an immediate retry after a loss, then
``PLASMA_SUBSCRIBER_REDIS_RETRY_INTERVAL``, ``die``/``alive`` after ``..._MAX_RETRY``), and a
lost connection is an event the source sees, so a live (core NATS) source can announce the gap.
Several URLs (a NATS cluster) are tried in order on every connect.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Awaitable, Callable
from typing import Any

import nats
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.errors import Error as NatsError
from nats.errors import NoServersError

from plasma.config import NatsConfig
from plasma.errors import SourceError
from plasma.ingest import Batch, Ingest
from plasma.metrics import Metrics
from plasma.sources.reconnect import Reconnect

__all__ = [
    "PROBE_TIMEOUT",
    "Gather",
    "NatsConnection",
    "NatsError",
    "debug_subject",
    "is_wildcard",
    "paced",
]

PROBE_TIMEOUT = 0.8
"""/hc must answer within a second even when the broker hangs."""

_YIELD_EVERY = 64
"""Messages handed on between two turns of the event loop (see ``paced``)."""

_PONG_WAIT = 24 * 3600.0
"""nats-py's own wait for a PONG (see ``NatsConnection.round_trip``): never the one that ends."""


def is_wildcard(subject: str) -> bool:
    """Whether a NATS subject names many subjects (a ``*`` or ``>`` token)."""
    return any(token in ("*", ">") for token in subject.split("."))


def debug_subject(subjects: tuple[str, ...]) -> str:
    """The first subject without wildcards: where the /debug page publishes."""
    for subject in subjects:
        if not is_wildcard(subject):
            return subject
    raise SourceError("every subject in PLASMA_SUBSCRIBER_NATS_SUBJECTS is a wildcard")


class Gather:
    """Collects the messages nats-py hands over in one turn of the event loop and offers them
    to the hub's ingest queue as one batch at the end of the turn.

    nats-py calls a callback per message; offered one by one, each event was its own fan-out
    and its own push to every subscriber. Gathered, a turn's messages are one ``Batch`` like a
    Redis read (one history append, one flush, runs of one type joined per subscriber).
    ``room`` is False once the queue was found full: the callback then waits for room.
    """

    def __init__(self, ingest: Ingest, *, with_ids: bool) -> None:
        self._ingest = ingest
        self._with_ids = with_ids
        self._raws: list[bytes] = []
        self._subjects: list[bytes] = []
        self._ids: list[str] = []
        self._scheduled = False
        self.room = True

    def add(self, data: bytes, subject: str, event_id: str = "") -> None:
        self._raws.append(data)
        self._subjects.append(subject.encode())
        if self._with_ids:
            self._ids.append(event_id)
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self.hand_over)

    def hand_over(self) -> None:
        """Offer what was gathered (also called before waiting, so nothing waits behind it)."""
        self._scheduled = False
        if not self._raws:
            return
        batch = Batch(self._raws, self._subjects, self._ids if self._with_ids else None)
        self._raws, self._subjects, self._ids = [], [], []
        self.room = self._ingest.offer_batch(batch)


def paced(
    take: Callable[[Msg], object], gather: Gather, wait_for_room: Callable[[], Awaitable[None]]
) -> Callable[[Msg], Awaitable[None]]:
    """A nats-py subscription callback that hands each message to ``take`` (which adds it to
    ``gather``) and lets the event loop run every ``_YIELD_EVERY`` messages.

    nats-py calls a subscription's callback in a loop that never yields while messages are
    queued: a callback that never awaits starved everything else under a flood, for seconds.
    Nothing read the socket (nats-server cut plasma as a slow consumer after its 10 s write
    deadline), ``/hc`` failed, subscribers were not written to, and JetStream's ordered
    consumer timed out re-creating itself. When the ingest queue is full this waits for room;
    nats-py keeps reading meanwhile, up to its pending limits (then ``SlowConsumerError``).
    """
    handed = 0

    async def on_message(msg: Msg) -> None:
        nonlocal handed
        take(msg)
        handed += 1
        if handed >= _YIELD_EVERY:
            handed = 0
            await asyncio.sleep(0)  # the gathered batch is offered in this turn
        if not gather.room:
            gather.hand_over()
            gather.room = True
            await wait_for_room()

    return on_message


class NatsConnection:
    """One source's link to NATS; ``client`` is the connection while it is up."""

    def __init__(
        self, config: NatsConfig, metrics: Metrics, *, name: str, log: logging.Logger
    ) -> None:
        self.config = config
        self.client: NATS | None = None
        self._probe: asyncio.Task[None] | None = None
        self._lost = asyncio.Event()
        self._error = ""
        self.reconnect = Reconnect(
            config,
            metrics,
            name=name,
            address=self.address,
            log=log,
            errors=(NatsError, TimeoutError),
        )

    @property
    def address(self) -> str:
        """The server URLs without credentials, for log lines and errors."""
        return ",".join(_without_credentials(url) for url in self.config.servers)

    async def connect(self, on_error: Callable[[Exception], Awaitable[None]] | None = None) -> NATS:
        """Connect to the first server that answers (each is tried twice, at once)."""
        c = self.config
        lost = self._lost = asyncio.Event()
        self._error = ""

        async def gone() -> None:
            lost.set()

        async def error(exc: Exception) -> None:
            # Kept for the reconnect loop's log line, which says what went wrong.
            self._error = str(exc) or type(exc).__name__
            if on_error is not None:
                await on_error(exc)

        options: dict[str, Any] = {}
        if c.user:
            options["user"] = c.user
            options["password"] = c.password
        if c.token:
            options["token"] = c.token
        if c.creds_file:
            options["user_credentials"] = c.creds_file
        if c.tls or c.tls_ca_file or any(url.startswith("tls://") for url in c.servers):
            options["tls"] = ssl.create_default_context(cafile=c.tls_ca_file or None)
        try:
            client = await nats.connect(
                servers=list(c.servers),
                name="plasma",
                # Reconnects are Reconnect's job (one policy for every broker), not nats-py's.
                allow_reconnect=False,
                max_reconnect_attempts=1,
                reconnect_time_wait=0,
                connect_timeout=c.timeout,
                dont_randomize=True,
                disconnected_cb=gone,
                closed_cb=gone,
                error_cb=error,
                **options,
            )
        except NoServersError as exc:
            raise SourceError(f"no nats server answered: {self._error}") from exc
        self.client = client
        self._watch_reader(client, lost)
        return client

    def _watch_reader(self, client: NATS, lost: asyncio.Event) -> None:
        """Treat the end of nats-py's read loop as a lost connection.

        nats-py ends that loop on an unexpected exception with only a log line (silenced, see
        ``plasma.logging``) and no callback: the connection still looks up, but nothing is read
        any more, and every later message would be lost without a gap. Ending the connection
        instead lets the reconnect loop start over and a live source announce the gap."""
        reader = getattr(client, "_reading_task", None)
        if not isinstance(reader, asyncio.Task):
            return

        def stopped(_: asyncio.Task[Any]) -> None:
            if not lost.is_set():
                self._error = self._error or "nats-py stopped reading the connection"
                lost.set()

        reader.add_done_callback(stopped)

    def fail(self, reason: str) -> None:
        """End the current connection as lost (``until_lost`` raises): the source starts over."""
        self._error = reason
        self._lost.set()

    async def until_lost(self) -> None:
        """Wait until the connection goes, then raise ``SourceError`` for the reconnect loop."""
        await self._lost.wait()
        raise SourceError(f"connection lost: {self._error or 'closed'}")

    async def close(self) -> None:
        """Close the connection quietly; the next ``connect`` starts afresh."""
        client, self.client = self.client, None
        probe, self._probe = self._probe, None
        if probe is not None:
            probe.cancel()
        self.reconnect.disconnected()
        if client is not None and not client.is_closed:
            with contextlib.suppress(NatsError, OSError, TimeoutError, RuntimeError):
                await asyncio.wait_for(client.close(), 1.0)

    async def round_trip(self, timeout: float) -> None:
        """A PING/PONG on the live connection within ``timeout``, else ``TimeoutError``.

        Not nats-py's ``flush(timeout)``: when that times out it cancels its PONG future but
        leaves it queued, and the late PONG raises ``InvalidStateError`` inside nats-py's read
        loop, which ends it (see ``_watch_reader``). A busy loop (10,000 SSE writes per batch)
        made the 0.8 s health probe time out that way, and the unicast benchmark lost every
        event after it. So nats-py waits for its PONG as long as the connection lasts, one PING
        at a time, and only the caller stops waiting."""
        client = self.require()
        probe = self._probe
        if probe is None or probe.done():
            probe = self._probe = asyncio.ensure_future(
                client.flush(timeout=_PONG_WAIT)  # type: ignore[arg-type]
            )
            probe.add_done_callback(_retrieved)
        done, _ = await asyncio.wait({probe}, timeout=timeout)
        if not done:
            raise TimeoutError(f"no PONG from nats within {timeout} s")
        if probe.cancelled():
            raise SourceError("the nats connection was closed")
        probe.result()

    async def healthy(self) -> bool:
        """A PING/PONG round trip on the live connection."""
        try:
            await self.round_trip(PROBE_TIMEOUT)
        except (NatsError, OSError, TimeoutError, SourceError):
            return False
        return True

    def require(self) -> NATS:
        """The live connection, or ``SourceError`` (for the /debug publish)."""
        client = self.client
        if client is None or not client.is_connected:
            raise SourceError(f"not connected to nats at {self.address}")
        return client


def _retrieved(probe: asyncio.Task[None]) -> None:
    """Mark a probe's failure as seen: whoever waited for it has gone, the next one sees it."""
    if not probe.cancelled():
        probe.exception()


def _without_credentials(url: str) -> str:
    scheme, sep, rest = url.rpartition("://")
    return f"{scheme}{sep}{rest.rpartition('@')[2]}"
