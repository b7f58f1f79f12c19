"""``Subscriber``: one subscription that survives reconnects and never repeats or hides events.

The subscriber reads one stream at a time (SSE, or gRPC with ``transport="grpc"``). When it
breaks, it waits (the server's ``retry:`` hint, doubled on each failure up to a cap, plus
jitter), reconnects with the id of the last event it delivered, and goes on. Events the server
repeats, or that arrive older than one already delivered, are dropped; when the server says it
could not replay what was missed, a ``Gap`` is yielded (or passed to ``on_gap``), never hidden.
"""

from __future__ import annotations

import asyncio
import inspect
import re
import ssl
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from typing import Any, Literal

import aiohttp

from plasma.client._backoff import Backoff
from plasma.client._connection import Connection, Lost
from plasma.client._errors import ClosedError, ConnectError
from plasma.client._grpc_connection import GrpcConnection, import_grpc
from plasma.client._models import Event, Gap
from plasma.client._sse_connection import SSEConnection

__all__ = ["GapHandler", "Subscriber", "subscribe"]

GapHandler = Callable[[Gap], "Awaitable[None] | None"]

# Ids remembered to drop repeats; a resume never replays further back than this.
_REMEMBERED_IDS = 4096
# Redis stream entry ids ("1700000000000-0") order numerically; other ids only by arrival.
_STREAM_ID = re.compile(r"^(\d+)-(\d+)$")


def _order(event_id: str) -> tuple[int, int] | None:
    match = _STREAM_ID.match(event_id)
    return (int(match.group(1)), int(match.group(2))) if match else None


class Subscriber:
    """Subscribe to event types on a plasma server; iterate to receive ``Event``\\ s.

    ```python
    async with Subscriber("http://localhost:8080", ["program:1234"]) as sub:
        async for item in sub:
            if isinstance(item, Gap):
                reload_state()
            else:
                print(item.id, item.type, item.data)
    ```

    Parameters:
    - ``transport``: ``"sse"`` (default) or ``"grpc"`` (needs grpcio: ``plasma-push[grpc]``).
    - ``token``: sent as ``Authorization: Bearer`` (gRPC: ``authorization`` metadata).
    - ``last_event_id``: resume after this id on the first connect.
    - ``on_gap``: called (or awaited) with each ``Gap`` instead of yielding it.
    - ``reconnect_delay``: the first wait before reconnecting; default the server's ``retry:``
      hint (SSE), else 1 s. Each failure in a row doubles it, up to ``max_reconnect_delay``.
    - ``wait``: keep trying when the first connect fails, instead of raising ``ConnectError``.
    - ``read_timeout``: reconnect after this long without a byte (plasma sends a heartbeat
      every 10 s by default); ``None`` waits forever.
    - ``ca_file``: a PEM bundle to verify the server's TLS certificate.
    """

    def __init__(
        self,
        url: str,
        types: Sequence[str],
        *,
        transport: Literal["sse", "grpc"] = "sse",
        token: str | None = None,
        last_event_id: str | None = None,
        on_gap: GapHandler | None = None,
        reconnect_delay: float | None = None,
        max_reconnect_delay: float = 30.0,
        wait: bool = False,
        read_timeout: float | None = 45.0,
        event_query: str = "eventType",
        headers: Mapping[str, str] | None = None,
        ca_file: str | None = None,
    ) -> None:
        if isinstance(types, str):
            raise TypeError("types must be a list of event types, not one string")
        if not types:
            raise ValueError("subscribe to at least one event type")
        if transport not in ("sse", "grpc"):
            raise ValueError(f"transport must be 'sse' or 'grpc', not {transport!r}")
        if transport == "grpc":
            import_grpc()  # say at once when grpcio is missing
        self.url = url
        self.transport = transport
        self._types = tuple(types)
        self._token = token
        self._last_id = last_event_id or None
        self._on_gap = on_gap
        self._fixed_delay = reconnect_delay is not None
        self._backoff = Backoff(reconnect_delay or 1.0, max_reconnect_delay)
        self._wait = wait
        self._read_timeout = read_timeout
        self._event_query = event_query
        self._headers = dict(headers or {})
        if token:
            self._headers["Authorization"] = f"Bearer {token}"
        self._ca_file = ca_file
        self._session: aiohttp.ClientSession | None = None
        self._connection: Connection | None = None
        self._ready: deque[Event | Gap] = deque()
        self._seen: set[str] = set()
        self._seen_order: deque[str] = deque()
        self._connected_once = False
        self._closed = False
        self._retry_after: float | None = None

    # --- public surface --------------------------------------------------------------------

    @property
    def types(self) -> tuple[str, ...]:
        return self._types

    @property
    def last_event_id(self) -> str | None:
        """The id the next reconnect resumes after: the last event delivered (or a gap's)."""
        return self._last_id

    @property
    def reconnect_delay(self) -> float:
        """The first wait after a broken stream (the server's ``retry:`` hint unless set)."""
        return self._backoff.base

    async def __aenter__(self) -> Subscriber:
        await self.connect()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def __aiter__(self) -> AsyncIterator[Event | Gap]:
        return self

    async def connect(self) -> None:
        """Open the first stream; return once the server has the subscription in place."""
        if self._closed:
            raise ClosedError("this subscriber is closed")
        if self._connection is not None:
            return
        try:
            while True:
                try:
                    await self._open()
                    return
                except Lost as exc:
                    if not self._wait:
                        raise ConnectError(str(exc)) from None
                    self._retry_after = exc.retry_after
                    await self._sleep()
        except BaseException:
            await self.aclose()  # nothing to iterate: release the HTTP session now
            raise

    async def __anext__(self) -> Event | Gap:
        while True:
            if self._ready:
                delivered = await self._deliver(self._ready.popleft())
                if delivered is not None:
                    return delivered
                continue
            if self._closed:
                raise StopAsyncIteration
            connection = self._connection
            if connection is None:
                await self._reconnect()
                continue
            try:
                item = await connection.next()
            except Lost as exc:
                self._retry_after = exc.retry_after
                item = None
            except BaseException:
                await self._drop(connection)
                raise
            if item is None:
                await self._drop(connection)
                continue
            accepted = self._accept(item)
            if accepted is not None:
                delivered = await self._deliver(accepted)
                if delivered is not None:
                    return delivered

    async def resubscribe(self, types: Sequence[str]) -> None:
        """Replace the subscribed types on the open stream (gRPC only); reconnects keep them."""
        if isinstance(types, str) or not types:
            raise ValueError("resubscribe needs a non-empty list of event types")
        if self._connection is None:
            await self.connect()
        assert self._connection is not None
        await self._connection.resubscribe(tuple(types))
        self._types = tuple(types)

    async def aclose(self) -> None:
        """Close the stream; a loop iterating the subscriber ends. Idempotent."""
        self._closed = True
        connection, self._connection = self._connection, None
        if connection is not None:
            await connection.aclose()
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    # --- connecting --------------------------------------------------------------------------

    async def _open(self) -> None:
        if self.transport == "grpc":
            root = None
            if self._ca_file:
                with open(self._ca_file, "rb") as f:
                    root = f.read()
            connection: Connection = await GrpcConnection.open(
                self.url,
                self._types,
                last_event_id=self._last_id,
                token=self._token,
                root_certificates=root,
            )
        else:
            if self._session is None:
                self._session = aiohttp.ClientSession()
            context = ssl.create_default_context(cafile=self._ca_file) if self._ca_file else None
            connection = await SSEConnection.open(
                self._session,
                self.url,
                self._types,
                last_event_id=self._last_id,
                event_query=self._event_query,
                headers=self._headers,
                ssl_context=context,
                read_timeout=self._read_timeout,
            )
        if self._closed:
            await connection.aclose()
            raise ClosedError("this subscriber is closed")
        self._connection = connection
        if connection.retry_hint is not None and not self._fixed_delay:
            self._backoff.base = connection.retry_hint
        self._backoff.reset()
        self._retry_after = None
        if self._connected_once and self._last_id is None:
            self._ready.append(
                Gap(
                    None,
                    None,
                    "reconnected before any event arrived: events published while "
                    "disconnected may be missing",
                )
            )
        self._connected_once = True

    async def _drop(self, connection: Connection) -> None:
        if connection.retry_hint is not None and not self._fixed_delay:
            self._backoff.base = connection.retry_hint
        if self._connection is connection:
            self._connection = None
        await connection.aclose()

    async def _reconnect(self) -> None:
        while not self._closed:
            await self._sleep()
            if self._closed:
                return
            try:
                await self._open()
                return
            except Lost as exc:
                self._retry_after = exc.retry_after
            except ClosedError:
                if self._closed:
                    return
                raise

    async def _sleep(self) -> None:
        delay = self._backoff.delay()
        if self._retry_after is not None:
            delay = max(delay, self._retry_after)
        await asyncio.sleep(delay)

    # --- exactly once, in order -------------------------------------------------------------

    def _accept(self, item: Event | Gap) -> Event | Gap | None:
        """The item to deliver, or ``None`` for an event already delivered."""
        if isinstance(item, Gap):
            if item.resume_from:
                self._last_id = item.resume_from
            return item
        event_id = item.id
        if not event_id:
            return item
        if event_id in self._seen:
            return None
        if self._last_id is not None:
            new, last = _order(event_id), _order(self._last_id)
            if new is not None and last is not None and new <= last:
                return None
        self._seen.add(event_id)
        self._seen_order.append(event_id)
        if len(self._seen_order) > _REMEMBERED_IDS:
            self._seen.discard(self._seen_order.popleft())
        self._last_id = event_id
        return item

    async def _deliver(self, item: Event | Gap) -> Event | Gap | None:
        if isinstance(item, Gap) and self._on_gap is not None:
            result = self._on_gap(item)
            if inspect.isawaitable(result):
                await result
            return None
        return item


def subscribe(url: str, types: Sequence[str], **options: Any) -> Iterator[Event | Gap]:
    """``Subscriber`` for scripts: a plain iterator with its own event loop.

    ```python
    for event in plasma.client.subscribe("http://localhost:8080", ["program"]):
        print(event)
    ```

    Takes the same keyword options as ``Subscriber``. Closing the iterator (``break``, or the
    end of a ``with contextlib.closing(...)`` block) closes the stream.
    """
    with asyncio.Runner() as runner:
        subscriber = Subscriber(url, types, **options)
        try:
            runner.run(subscriber.connect())
            while True:
                try:
                    item = runner.run(_next(subscriber))
                except StopAsyncIteration:
                    return
                yield item
        finally:
            runner.run(subscriber.aclose())


async def _next(subscriber: Subscriber) -> Event | Gap:
    return await subscriber.__anext__()
