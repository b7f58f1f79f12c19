"""Pub/sub and stream reads arrive as batches: every message of a read, in order, none lost.

The pub/sub subscription is read in large chunks and parsed with hiredis
(``plasma.sources.redis_pubsub``); each read is one ``Hub.publish_batch``. These tests publish
through a real redis-server in pipelines (so many messages share a read) and read with real
clients: an invalid message inside a batch, a message cut by a chunk boundary, 50,000 events,
patterns, the reader thread of a node with workers.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable

import orjson
import pytest
import redis.asyncio as aioredis

from plasma.sources.redis_pubsub import READ_BYTES, Subscription
from plasma.sources.redis_stream import EVENT_FIELD
from tests.support import PlasmaProcess, RawSSE, RedisServer, SSEStream, async_wait_for

pytestmark = pytest.mark.integration

_ID = re.compile(rb"\nid: ?([^\n]*)\n")
_DATA = re.compile(rb"\ndata: ?([^\n]*)\n")


def event(type: str, data: object) -> bytes:
    return orjson.dumps({"meta": {"type": type}, "data": data})


def publish_pipelined(server: RedisServer, raws: list[bytes], channel: str = "events") -> None:
    """PUBLISH every message, 1,000 per pipeline: Redis writes them back-to-back to plasma."""
    with server.client() as client:
        for start in range(0, len(raws), 1000):
            pipe = client.pipeline(transaction=False)
            for raw in raws[start : start + 1000]:
                pipe.publish(channel, raw)
            pipe.execute()


async def read_events(stream: RawSSE, count: int, timeout: float = 120.0) -> list[bytes]:
    """The ``data:`` lines of the first ``count`` events on a raw SSE stream."""
    async with asyncio.timeout(timeout):
        while stream.buffer.count(b"\nid:") < count:
            chunk = await stream.reader.read(1 << 20)
            if not chunk:
                raise AssertionError("the stream ended")
            stream.buffer += chunk
    return _DATA.findall(stream.buffer)[:count]


@pytest.mark.parametrize("workers", ["1", "2"])
async def test_an_invalid_event_in_a_batch_is_skipped_and_the_rest_arrive_in_order(
    redis_plasma: Callable[..., PlasmaProcess], redis_server: RedisServer, workers: str
) -> None:
    server = redis_plasma(PLASMA_WORKERS=workers)
    stream = await RawSSE.open(server.port, "/?eventType=b")
    try:
        await stream.read_until(b"retry:")
        raws = [event("b", n) for n in range(2000)]
        raws[700] = b'{"meta":{"type":"b"},"data":nope}'
        raws[1500] = b"[1,2,3]"
        publish_pipelined(redis_server, raws)
        got = await read_events(stream, 1998)
    finally:
        stream.close()
    expected = [n for n in range(2000) if n not in (700, 1500)]
    assert [int(d.split(b'"data":')[1].rstrip(b"}")) for d in got] == expected
    ids = [int(i.rsplit(b"-", 1)[1]) for i in _ID.findall(stream.buffer)]
    assert ids == sorted(ids) and len(set(ids)) == len(ids), "ids rise, one per event"
    metrics = await async_wait_for(
        lambda: (m := server.metrics())["events_skipped"] == 2 and m, what="2 skipped"
    )
    assert metrics["events_skipped_by_reason"] == {"invalid_json": 1, "not_object": 1}
    skipped = await async_wait_for(
        lambda: [line for line in server.log_lines() if line.get("msg") == "skipped invalid event"],
        what="the skipped-event log line",
    )
    assert skipped[0]["channel"] == "events"
    assert skipped[0]["payload"] == '{"meta":{"type":"b"},"data":nope}'


@pytest.mark.parametrize("protocol", [2, 3])
async def test_a_message_cut_by_a_chunk_boundary_is_read_whole(
    redis_server: RedisServer, protocol: int
) -> None:
    """Messages larger than one read, and small ones around them, come out whole and in order."""
    with redis_server.client() as admin:
        admin.config_set("client-output-buffer-limit", "pubsub 0 0 0")
    client = aioredis.Redis(host="127.0.0.1", port=redis_server.port, protocol=protocol)
    subscription = await Subscription.open(client, ["events"], ["ev*"])
    try:
        first = await subscription.confirmations(2)
        assert first.raws == []
        big = b"x" * (READ_BYTES * 2 + 12345)
        raws = [b"small-%d" % n for n in range(500)] + [big] + [b"after-%d" % n for n in range(500)]
        # Sizes that straddle every offset of a message header at some chunk boundary.
        raws += [b"y" * n for n in range(1, 3000)]
        await asyncio.to_thread(publish_pipelined, redis_server, raws)
        got: list[bytes] = []
        channels: set[bytes] = set()
        async with asyncio.timeout(60):
            while len(got) < 2 * len(raws):  # each message matches the channel and the pattern
                batch = await subscription.read()
                assert len(batch.raws) == len(batch.channels) and batch.ids is None
                got += batch.raws
                channels.update(batch.channels)
    finally:
        await subscription.aclose()
        await client.aclose()
    assert channels == {b"events"}
    assert got[0::2] == raws and got[1::2] == raws


@pytest.mark.parametrize("workers", ["1", "2"])
async def test_50000_pipelined_events_all_arrive_in_order(
    redis_plasma: Callable[..., PlasmaProcess], redis_server: RedisServer, workers: str
) -> None:
    server = redis_plasma(PLASMA_WORKERS=workers, PLASMA_CLIENT_BUFFER=str(64 << 20))
    with redis_server.client() as admin:
        admin.config_set("client-output-buffer-limit", "pubsub 0 0 0")
    stream = await RawSSE.open(server.port, "/?eventType=all")
    try:
        await stream.read_until(b"retry:")
        raws = [event("all", {"n": n, "pad": "p" * 150}) for n in range(50_000)]
        await asyncio.to_thread(publish_pipelined, redis_server, raws)
        got = await read_events(stream, 50_000, timeout=300)
    finally:
        stream.close()
    assert [orjson.loads(d)["data"]["n"] for d in got] == list(range(50_000))
    # With workers, /metrics adds the siblings' figures, which they share once a second.
    metrics = await async_wait_for(
        lambda: (m := server.metrics())["events_received"] >= 50_000 and m,
        what="every event counted",
    )
    assert metrics["events_received"] == 50_000 and metrics["events_skipped"] == 0


async def test_stream_reads_are_batches_with_an_invalid_entry_skipped(
    redis_plasma: Callable[..., PlasmaProcess], redis_server: RedisServer
) -> None:
    server = redis_plasma(PLASMA_SUBSCRIBER_TYPE="redis-stream")
    stream = await SSEStream.open(server.url + "/", "s")
    try:
        await stream.wait_retry()
        with redis_server.client() as client:
            pipe = client.pipeline(transaction=False)
            for n in range(3000):
                raw = b"not json" if n == 1234 else event("s", n)
                pipe.xadd("events", {EVENT_FIELD: raw})
            ids = [i.decode() for i in pipe.execute()]
        got = []
        for _ in range(2999):
            e = await stream.next_event(timeout=30)
            got.append((e.id, e.json()["data"]))
    finally:
        await stream.close()
    assert got == [(ids[n], n) for n in range(3000) if n != 1234], "entry ids, in order"
    assert server.metrics()["events_skipped"] == 1
