"""``plasma.client.Subscriber`` against real plasma processes and a real redis-server.

The central promise: kill plasma mid-stream and start it again, and a subscriber of the
``redis-stream`` source still receives every event exactly once, in order; with the pub/sub
source, which cannot replay, it reports the gap instead of hiding it.
"""

from __future__ import annotations

import asyncio
import signal
import threading
from typing import Any

import pytest
from aiohttp import web

from plasma.client import (
    ConnectError,
    Event,
    Gap,
    Publisher,
    SubscribeError,
    Subscriber,
    subscribe,
)
from tests.support import (
    PlasmaProcess,
    RedisServer,
    async_wait_for,
    free_port,
    redis_env,
    wait_for,
    wait_subscribed,
)

pytestmark = pytest.mark.integration

TRANSPORTS = ["sse", "grpc"]


def plasma_env(redis_server: RedisServer, source: str) -> dict[str, str]:
    return redis_env(
        redis_server,
        PLASMA_SUBSCRIBER_TYPE=source,
        PLASMA_SSE_RETRY="100",
        PLASMA_SUBSCRIBER_REDIS_RETRY_INTERVAL="100ms",
    )


def start(env: dict[str, str], redis_server: RedisServer, port: int = 0) -> PlasmaProcess:
    process = PlasmaProcess(env=env, port=port).start()
    wait_subscribed(redis_server, env)
    # A stream source starts reading where the stream ends when it connects: wait for that.
    wait_for(lambda: process.metrics()["source_up"], 15, what="the source to connect")
    return process


class Collector:
    """Reads a subscriber in the background, keeping every item in arrival order."""

    def __init__(self, subscriber: Subscriber) -> None:
        self.items: list[Event | Gap] = []
        self._task = asyncio.create_task(self._run(subscriber))

    async def _run(self, subscriber: Subscriber) -> None:
        async for item in subscriber:
            self.items.append(item)

    @property
    def events(self) -> list[Event]:
        return [i for i in self.items if isinstance(i, Event)]

    async def wait_events(self, n: int, timeout: float = 30.0) -> list[Event]:
        await async_wait_for(
            lambda: len(self.events) >= n or self._task.done(), timeout, what=f"{n} events"
        )
        if self._task.done():
            self._task.result()
        return self.events

    async def stop(self) -> None:
        self._task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await self._task


async def publish_range(publisher: Publisher, numbers: range) -> list[str | None]:
    return await publisher.publish_many([("t:n", n) for n in numbers])


def stream_publisher(redis_server: RedisServer, stream: bool) -> Publisher:
    return Publisher(f"redis://{redis_server.addr}", channel="events", stream=stream)


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_restart_mid_stream_loses_and_repeats_nothing_with_redis_streams(
    redis_server: RedisServer, transport: Any
) -> None:
    env = plasma_env(redis_server, "redis-stream")
    first = start(env, redis_server)
    second: PlasmaProcess | None = None
    publisher = stream_publisher(redis_server, stream=True)
    subscriber = Subscriber(first.url, ["t"], transport=transport, reconnect_delay=0.1)
    try:
        await subscriber.connect()
        collector = Collector(subscriber)
        await publish_range(publisher, range(100))
        await collector.wait_events(100)
        # Mid-stream: plasma dies while a batch is on its way, more arrive while it is down.
        await publish_range(publisher, range(100, 200))
        first.stop(signal.SIGKILL)
        await publish_range(publisher, range(200, 300))
        second = start(env, redis_server, port=first.port)
        await publish_range(publisher, range(300, 400))
        events = await collector.wait_events(400)
        await asyncio.sleep(0.3)  # anything repeated would arrive now
        events = collector.events
        assert [e.data for e in events] == list(range(400))
        assert len({e.id for e in events}) == 400
        assert not [i for i in collector.items if isinstance(i, Gap)]
        await collector.stop()
    finally:
        await subscriber.aclose()
        await publisher.aclose()
        if second is not None:
            second.stop()
        first.stop()


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_restart_with_pubsub_reports_the_gap(
    redis_server: RedisServer, transport: Any
) -> None:
    env = plasma_env(redis_server, "redis")
    first = start(env, redis_server)
    second: PlasmaProcess | None = None
    publisher = stream_publisher(redis_server, stream=False)
    gaps: list[Gap] = []
    subscriber = Subscriber(
        first.url, ["t"], transport=transport, reconnect_delay=0.1, on_gap=gaps.append
    )
    try:
        await subscriber.connect()
        collector = Collector(subscriber)
        await publish_range(publisher, range(50))
        before = await collector.wait_events(50)
        last_id = before[-1].id
        first.stop(signal.SIGKILL)
        await publish_range(publisher, range(50, 100))  # nobody is subscribed: lost
        second = start(env, redis_server, port=first.port)
        await async_wait_for(lambda: gaps, 30, what="the gap")
        await publish_range(publisher, range(100, 150))
        events = await collector.wait_events(100)
        assert [e.data for e in events] == [*range(50), *range(100, 150)]
        assert len(gaps) == 1
        assert gaps[0].last_event_id == last_id
        assert gaps[0].resume_from
        assert subscriber.last_event_id == events[-1].id
        await collector.stop()
    finally:
        await subscriber.aclose()
        await publisher.aclose()
        if second is not None:
            second.stop()
        first.stop()


async def test_gap_is_an_item_when_there_is_no_callback(redis_server: RedisServer) -> None:
    process = start(plasma_env(redis_server, "redis"), redis_server)
    try:
        async with Subscriber(process.url, ["t"], last_event_id="feedbeef-7") as subscriber:
            item = await anext(subscriber)
        assert isinstance(item, Gap)
        assert item.last_event_id == "feedbeef-7"
    finally:
        process.stop()


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_refused_subscription_raises_at_once(
    redis_server: RedisServer, transport: Any
) -> None:
    process = start(plasma_env(redis_server, "redis"), redis_server)
    try:
        with pytest.raises(SubscribeError) as info:
            async with Subscriber(process.url, ["bad type"], transport=transport):
                pass
        assert info.value.status in (400, "INVALID_ARGUMENT")
    finally:
        process.stop()


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_first_connect_to_nothing_raises_or_waits(
    redis_server: RedisServer, transport: Any
) -> None:
    port = free_port()
    with pytest.raises(ConnectError):
        await Subscriber(f"http://127.0.0.1:{port}", ["t"], transport=transport).connect()
    subscriber = Subscriber(
        f"http://127.0.0.1:{port}", ["t"], transport=transport, wait=True, reconnect_delay=0.1
    )
    connecting = asyncio.create_task(subscriber.connect())
    await asyncio.sleep(0.3)
    assert not connecting.done()
    env = plasma_env(redis_server, "redis")
    process = start(env, redis_server, port=port)
    try:
        await asyncio.wait_for(connecting, 30)
        async with stream_publisher(redis_server, stream=False) as publisher:
            await publisher.publish("t", "hello")
        event = await asyncio.wait_for(anext(subscriber), 10)
        assert isinstance(event, Event)
        assert (event.type, event.data) == ("t", "hello")
    finally:
        await subscriber.aclose()
        process.stop()


async def test_grpc_resubscribe_replaces_the_types(redis_server: RedisServer) -> None:
    process = start(plasma_env(redis_server, "redis"), redis_server)
    publisher = stream_publisher(redis_server, stream=False)
    try:
        async with Subscriber(process.url, ["a"], transport="grpc") as subscriber:
            await publisher.publish("a", 1)
            first = await asyncio.wait_for(anext(subscriber), 10)
            assert isinstance(first, Event) and first.type == "a"
            await subscriber.resubscribe(["b"])
            assert subscriber.types == ("b",)
            # The server applies a re-subscription in order with the stream: wait until a
            # "b" event arrives, publishing one each round, and check no "a" came after it.
            received: list[Event] = []

            async def until_b() -> None:
                while True:
                    await publisher.publish_many([("a", 2), ("b", 3)])
                    try:
                        item = await asyncio.wait_for(anext(subscriber), 0.5)
                    except TimeoutError:
                        continue
                    assert isinstance(item, Event)
                    received.append(item)
                    if item.type == "b":
                        return

            await asyncio.wait_for(until_b(), 20)
            await publisher.publish_many([("a", 4), ("b", 5)])
            after = await asyncio.wait_for(anext(subscriber), 10)
            assert isinstance(after, Event) and (after.type, after.data) == ("b", 5)
    finally:
        await publisher.aclose()
        process.stop()


def test_sync_subscribe_iterates_events(redis_server: RedisServer) -> None:
    process = start(plasma_env(redis_server, "redis"), redis_server)

    def publish_once_subscribed() -> None:
        wait_for(lambda: process.metrics()["connections"] >= 1, what="the subscription")
        redis_server.publish("events", {"meta": {"type": "t:x"}, "data": [1, 2]})

    thread = threading.Thread(target=publish_once_subscribed)
    try:
        events = subscribe(process.url, ["t"])
        thread.start()
        event = next(events)
        events.close()
        assert isinstance(event, Event)
        assert (event.type, event.data) == ("t:x", [1, 2])
        wait_for(lambda: process.metrics()["connections"] == 0, what="the stream to close")
    finally:
        thread.join()
        process.stop()


# --- against a server that misbehaves on purpose --------------------------------------------


Script = list[list[str]]


class ScriptedSSE:
    """An SSE server that sends connection ``n`` the frames ``script[n]`` and then closes it
    (the last connection stays open): a server that repeats itself on purpose."""

    def __init__(self, script: Script) -> None:
        self.script = script
        self.last_event_ids: list[str | None] = []
        self.url = ""
        self._done = asyncio.Event()
        self._runner: web.AppRunner | None = None

    async def __aenter__(self) -> ScriptedSSE:
        app = web.Application()
        app.router.add_get("/", self._handle)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        port = free_port()
        await web.TCPSite(self._runner, "127.0.0.1", port).start()
        self.url = f"http://127.0.0.1:{port}/"
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self._done.set()
        assert self._runner is not None
        await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        n = len(self.last_event_ids)
        self.last_event_ids.append(request.headers.get("Last-Event-ID"))
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(b"retry: 20\n\n")
        last = len(self.script) - 1
        for event_id, number in (f.split("=") for f in self.script[min(n, last)]):
            frame = f'id: {event_id}\ndata: {{"meta":{{"type":"t"}},"data":{number}}}\n\n'
            await response.write(frame.encode())
        if n >= last:
            await self._done.wait()
        return response


@pytest.mark.parametrize(
    "script",
    [
        # Redis-stream-like ids: a replay of older ids is dropped, even beyond the remembered set.
        [["1-1=1", "1-2=2", "1-3=3"], ["1-2=2", "1-3=3", "1-4=4"], ["1-1=1", "2-0=5"]],
        # Opaque ids: a repeated id is dropped.
        [["a-x=1", "b-y=2", "c-z=3"], ["b-y=2", "c-z=3", "d-w=4"], ["c-z=3", "e-v=5"]],
    ],
)
async def test_repeated_or_older_events_after_a_reconnect_are_dropped(script: Script) -> None:
    async with ScriptedSSE(script) as server, Subscriber(server.url, ["t"]) as subscriber:
        got = [await asyncio.wait_for(anext(subscriber), 10) for _ in range(5)]
    assert [e.data for e in got if isinstance(e, Event)] == [1, 2, 3, 4, 5]
    last_ids = [None, script[0][-1].split("=")[0], script[1][-1].split("=")[0]]
    assert server.last_event_ids == last_ids


async def test_server_retry_hint_sets_the_reconnect_delay() -> None:
    async with ScriptedSSE([["1-1=1"], ["1-2=2"], ["1-3=3"]]) as server:
        subscriber = Subscriber(server.url, ["t"], max_reconnect_delay=60)
        assert subscriber.reconnect_delay == 1.0
        async with subscriber:
            for _ in range(3):
                await asyncio.wait_for(anext(subscriber), 10)
            assert subscriber.reconnect_delay == 0.02
