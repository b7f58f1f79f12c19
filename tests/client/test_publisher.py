"""``plasma.client.Publisher`` straight into Redis, read back by a real plasma process."""

from __future__ import annotations

import asyncio

import pytest

from plasma.client import Event, Publisher, PublishError, Subscriber, encode_event, publish_many
from tests.support import PlasmaProcess, RedisServer, redis_env, wait_for, wait_subscribed

pytestmark = pytest.mark.integration


def start(redis_server: RedisServer, source: str) -> PlasmaProcess:
    env = redis_env(redis_server, PLASMA_SUBSCRIBER_TYPE=source)
    process = PlasmaProcess(env=env).start()
    wait_subscribed(redis_server, env)
    # A stream source starts reading where the stream ends when it connects: wait for that.
    wait_for(lambda: process.metrics()["source_up"], 15, what="the source to connect")
    return process


@pytest.mark.parametrize(("source", "stream"), [("redis", False), ("redis-stream", True)])
async def test_batch_into_redis_reaches_subscribers_in_order(
    redis_server: RedisServer, source: str, stream: bool
) -> None:
    process = start(redis_server, source)
    try:
        async with (
            Subscriber(process.url, ["job"]) as subscriber,
            Publisher(f"redis://{redis_server.addr}", channel="events", stream=stream) as pub,
        ):
            ids = await pub.publish_many(
                [("job:1", {"n": 1}), {"meta": {"type": "job:2"}, "data": [2]}, ("other", 3)]
            )
            single = await pub.publish("job:3", None)
            got = [await asyncio.wait_for(anext(subscriber), 10) for _ in range(3)]
        assert all(isinstance(e, Event) for e in got)
        assert [(e.type, e.data) for e in got if isinstance(e, Event)] == [
            ("job:1", {"n": 1}),
            ("job:2", [2]),
            ("job:3", None),
        ]
        if stream:
            assert [e.id for e in got] == [ids[0], ids[1], single]
        else:
            assert ids == [None, None, None] and single is None
    finally:
        process.stop()


async def test_invalid_event_names_its_index_and_publishes_nothing(
    redis_server: RedisServer,
) -> None:
    async with Publisher(f"redis://{redis_server.addr}", channel="s", stream=True) as pub:
        with pytest.raises(PublishError, match=r"event 1:.*type"):
            await pub.publish_many([("ok", 1), ("", 2)])
        with pytest.raises(PublishError, match=r"event 0:.*not JSON"):
            await pub.publish("t", {1, 2})
    with redis_server.client() as client:
        assert client.xlen("s") == 0


def test_redis_down_is_a_publish_error() -> None:
    from tests.support import free_port

    with pytest.raises(PublishError, match="redis"):
        publish_many(f"redis://127.0.0.1:{free_port()}", [("t", 1)], channel="c")


def test_targets_and_event_shapes_are_checked_up_front() -> None:
    with pytest.raises(ValueError, match="http"):
        Publisher("ftp://x")
    with pytest.raises(ValueError, match="channel"):
        Publisher("redis://localhost:6379")
    assert Publisher("http://h:1").publish_url == "http://h:1/publish"
    assert Publisher("http://h:1/api/pub?x=1").publish_url == "http://h:1/api/pub?x=1"
    assert encode_event(("a", {"b": 1})) == b'{"meta":{"type":"a"},"data":{"b":1}}'
    with pytest.raises(ValueError):
        encode_event({"meta": "a"})
