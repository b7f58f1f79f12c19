"""The NATS sources against a real ``nats-server -js``: core subjects and JetStream.

Publishers here are nats-py clients sending the JSON envelope as the message body, as any
application would. Core NATS is live like Redis pub/sub (a lost connection is announced with a
gap); with JetStream the stream sequence is the event id, so a client resumes on any plasma
process, after restarts, from JetStream when the in-memory history no longer holds its id.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable, Iterator
from typing import Any

import nats
import orjson
import pytest

from tests.brokers import NatsServer
from tests.support import PlasmaProcess, SSEStream, async_wait_for, http

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def nats_server() -> Iterator[NatsServer]:
    server = NatsServer(jetstream=True).start()
    yield server
    server.stop()


def envelope(type: str, data: Any) -> bytes:
    return orjson.dumps({"meta": {"type": type}, "data": data})


async def publish(url: str, subject: str, *events: bytes, jetstream: bool = False) -> list[int]:
    """Publish ``events`` in order; with ``jetstream``, return their stream sequences."""
    client = await nats.connect(url)
    try:
        if jetstream:
            js = client.jetstream()
            return [(await js.publish(subject, e)).seq for e in events]
        for e in events:
            await client.publish(subject, e)
        await client.flush()
        return []
    finally:
        await client.close()


def nats_env(server: NatsServer, kind: str, subjects: str, **env: str) -> dict[str, str]:
    return {
        "PLASMA_SUBSCRIBER_TYPE": kind,
        "PLASMA_SUBSCRIBER_NATS_URL": server.url,
        "PLASMA_SUBSCRIBER_NATS_SUBJECTS": subjects,
        "PLASMA_SUBSCRIBER_REDIS_RETRY_INTERVAL": "200ms",
        **env,
    }


async def healthy(server: PlasmaProcess) -> None:
    await async_wait_for(lambda: http(server.url + "/hc").status == 200, what="/hc 200")


# --- core NATS -------------------------------------------------------------------------------


async def test_core_subjects_with_wildcards_reach_sse(
    plasma: Callable[..., PlasmaProcess], nats_server: NatsServer
) -> None:
    server = plasma(**nats_env(nats_server, "nats", "core.news.*,core.rooms.>"))
    await healthy(server)
    stream = await SSEStream.open(server.url + "/", "t")
    try:
        await stream.wait_retry()
        await publish(nats_server.url, "core.news.sport", envelope("t", 1))
        await publish(nats_server.url, "core.rooms.a.b", envelope("t", 2))
        await publish(nats_server.url, "core.other", envelope("t", 3))
        await publish(nats_server.url, "core.news.x", envelope("t", 4))
        assert [(await stream.next_event()).json()["data"] for _ in range(3)] == [1, 2, 4]
    finally:
        await stream.close()


async def test_core_restart_of_nats_sends_a_gap_and_hc_follows(
    plasma: Callable[..., PlasmaProcess],
) -> None:
    broker = NatsServer().start()  # its own server: this test kills it
    try:
        server = plasma(**nats_env(broker, "nats", "live"))
        await healthy(server)
        stream = await SSEStream.open(server.url + "/", "t")
        try:
            await stream.wait_retry()
            await publish(broker.url, "live", envelope("t", "before"))
            before = await stream.next_event()
            broker.kill()
            await async_wait_for(lambda: http(server.url + "/hc").status == 500, what="/hc 500")
            broker.start()
            await healthy(server)
            gap = await stream.next_event()
            assert gap.event == "gap"
            assert gap.json()["data"] == {"lastEventId": before.id, "resumeFrom": gap.id}
            await publish(broker.url, "live", envelope("t", "after"))
            after = await stream.next_event()
            assert after.json()["data"] == "after"
            assert server.metrics()["source_gaps"] == 1
        finally:
            await stream.close()
    finally:
        broker.stop()


async def test_core_late_pong_after_a_timed_out_probe_does_not_stop_reading(
    plasma: Callable[..., PlasmaProcess],
) -> None:
    """A health probe whose PONG comes late (a busy event loop, here a stopped nats-server)
    must not end the reading: with nats-py's ``flush(timeout)`` the late PONG killed nats-py's
    read loop, the connection still looked up and every later event was lost, unannounced."""
    broker = NatsServer().start()  # its own server: this test stops it
    try:
        server = plasma(**nats_env(broker, "nats", "late"))
        await healthy(server)
        stream = await SSEStream.open(server.url + "/", "t")
        try:
            await stream.wait_retry()
            await publish(broker.url, "late", envelope("t", "before"))
            assert (await stream.next_event()).json()["data"] == "before"
            assert broker.proc is not None
            broker.proc.send_signal(signal.SIGSTOP)
            try:
                # /hc fails once a probe has gone without its PONG.
                await async_wait_for(lambda: http(server.url + "/hc").status == 500, what="/hc 500")
            finally:
                broker.proc.send_signal(signal.SIGCONT)  # the PONGs come now, late
            await healthy(server)
            await publish(broker.url, "late", envelope("t", "after"))
            # Nothing was lost (the connection stayed up): the next event, no gap before it.
            after = await stream.next_event(timeout=30)
            assert (after.event, after.json()["data"]) == (None, "after")
            assert server.metrics()["source_gaps"] == 0
        finally:
            await stream.close()
    finally:
        broker.stop()


# --- JetStream -------------------------------------------------------------------------------


async def test_jetstream_ids_are_sequences_and_resume_across_restarts_and_nodes(
    plasma: Callable[..., PlasmaProcess], nats_server: NatsServer
) -> None:
    env = nats_env(
        nats_server,
        "nats-jetstream",
        "js.events.>",
        PLASMA_SUBSCRIBER_NATS_STREAM="EVENTS",
        PLASMA_HISTORY_SIZE="3",
    )
    first = plasma(**env)
    await healthy(first)  # the stream exists now: plasma created it over the subjects
    stream = await SSEStream.open(first.url + "/", "j")
    try:
        await stream.wait_retry()
        seqs = await publish(
            nats_server.url,
            "js.events.a",
            *(envelope("j", n) for n in range(5)),
            jetstream=True,
        )
        got = [await stream.next_event() for _ in range(5)]
        assert [e.id for e in got] == [str(s) for s in seqs]
        assert [e.json()["data"] for e in got] == list(range(5))
    finally:
        await stream.close()

    # Older than the history (3 events): read back from JetStream, no gap, no duplicate.
    resumed = await SSEStream.open(first.url + "/", "j", headers={"Last-Event-ID": got[0].id})
    try:
        replay = [await resumed.next_event() for _ in range(4)]
        assert [(e.event, e.id) for e in replay] == [(None, g.id) for g in got[1:]]
    finally:
        await resumed.close()

    # Another node, and the first one restarted: the same ids mean the same events.
    first.stop()
    second = plasma(**env)
    await healthy(second)
    more = await publish(nats_server.url, "js.events.b", envelope("j", 5), jetstream=True)
    elsewhere = await SSEStream.open(second.url + "/", "j", headers={"Last-Event-ID": got[2].id})
    try:
        replay = [await elsewhere.next_event() for _ in range(3)]
        assert [e.id for e in replay] == [got[3].id, got[4].id, str(more[0])]
        assert [e.json()["data"] for e in replay] == [3, 4, 5]
    finally:
        await elsewhere.close()

    # An id JetStream never gave: an honest gap.
    future = await SSEStream.open(second.url + "/", "j", headers={"Last-Event-ID": "999999"})
    try:
        assert (await future.next_event()).event == "gap"
    finally:
        await future.close()


async def test_jetstream_loses_nothing_when_nats_restarts(
    plasma: Callable[..., PlasmaProcess],
) -> None:
    broker = NatsServer(jetstream=True).start()
    try:
        server = plasma(**nats_env(broker, "nats-jetstream", "keep.>"))
        await healthy(server)
        stream = await SSEStream.open(server.url + "/", "k")
        try:
            await stream.wait_retry()
            await publish(broker.url, "keep.a", envelope("k", 0), jetstream=True)
            assert (await stream.next_event()).json()["data"] == 0
            broker.kill()
            await async_wait_for(lambda: http(server.url + "/hc").status == 500, what="/hc 500")
            broker.start()  # same store directory: the stream survives
            await publish(broker.url, "keep.a", *(envelope("k", n) for n in (1, 2)), jetstream=True)
            got = [await stream.next_event() for _ in range(2)]
            assert [(e.event, e.json()["data"]) for e in got] == [(None, 1), (None, 2)]
            assert server.metrics()["source_gaps"] == 0
        finally:
            await stream.close()
    finally:
        broker.stop()


def test_nats_needs_subjects(plasma: Callable[..., PlasmaProcess]) -> None:
    server = plasma(wait=False, PLASMA_SUBSCRIBER_TYPE="nats")
    assert server.proc is not None
    assert server.proc.wait(15) == 2
    assert "PLASMA_SUBSCRIBER_NATS_SUBJECTS" in server.output()


async def test_nats_credentials_are_used_and_never_logged(
    plasma: Callable[..., PlasmaProcess],
) -> None:
    broker = NatsServer(user="plasma", password="s3cret").start()
    try:
        env = nats_env(broker, "nats", "auth", PLASMA_SUBSCRIBER_NATS_USER="plasma")
        good = plasma(**env, PLASMA_SUBSCRIBER_NATS_PASSWORD="s3cret")
        bad = plasma(**env, PLASMA_SUBSCRIBER_NATS_PASSWORD="wrong-one")
        await healthy(good)
        await async_wait_for(
            lambda: any("failed" in line.get("msg", "") for line in bad.log_lines()),
            what="the refused connect logged",
        )
        assert http(bad.url + "/hc").status == 500
        assert "wrong-one" not in bad.output()
        assert "s3cret" not in good.output()
    finally:
        broker.stop()


async def test_jetstream_resume_past_a_purge_is_a_gap(
    plasma: Callable[..., PlasmaProcess], nats_server: NatsServer
) -> None:
    server = plasma(
        **nats_env(
            nats_server,
            "nats-jetstream",
            "purged.>",
            PLASMA_SUBSCRIBER_NATS_STREAM="PURGED",
            PLASMA_HISTORY_SIZE="0",  # every resume asks JetStream
        )
    )
    await healthy(server)
    seqs = await publish(
        nats_server.url, "purged.a", *(envelope("p", n) for n in range(3)), jetstream=True
    )
    client = await nats.connect(nats_server.url)
    try:
        await client.jetstream().purge_stream("PURGED")
    finally:
        await client.close()
    stream = await SSEStream.open(server.url + "/", "p", headers={"Last-Event-ID": str(seqs[0])})
    try:
        gap = await stream.next_event()
        assert (gap.event, gap.json()["data"]["lastEventId"]) == ("gap", str(seqs[0]))
    finally:
        await stream.close()


# --- floods: nothing lost silently -----------------------------------------------------------

FLOOD = 100_000


async def flood(url: str, subject: str, type: str, count: int, start: int = 0) -> None:
    """Publish ``count`` events (data ``start`` onwards) as fast as nats-py writes them."""
    client = await nats.connect(url, pending_size=64 << 20)
    try:
        for n in range(start, start + count):
            await client.publish(subject, envelope(type, n))
        await client.flush(timeout=60)
    finally:
        await client.close()


async def read_until(stream: SSEStream, last: int) -> list[tuple[str | None, str | None, Any]]:
    """(event, id, data) of every frame up to the event whose data is ``last``; generous deadline
    per frame, since a flood through a loaded machine takes what it takes."""
    got: list[tuple[str | None, str | None, Any]] = []
    while True:
        frame = await stream.next_event(timeout=120)
        data = frame.json()["data"]
        got.append((frame.event, frame.id, data))
        if frame.event is None and data == last:
            return got


@pytest.mark.timeout(600)
async def test_jetstream_flood_is_read_whole_in_order_and_later_events_still_come(
    plasma: Callable[..., PlasmaProcess], nats_server: NatsServer
) -> None:
    env = nats_env(
        nats_server,
        "nats-jetstream",
        "flood.js.>",
        PLASMA_SUBSCRIBER_NATS_STREAM="FLOOD",
        PLASMA_HISTORY_SIZE=str(FLOOD + 10),  # the check below reads it all from memory
        PLASMA_CLIENT_BUFFER=str(256 << 20),  # and may read it slowly
    )
    server = plasma(**env)
    await healthy(server)  # the stream exists now
    # No subscriber: plasma reads as fast as it can (it stopped for good at ~18,000 of these).
    await flood(nats_server.url, "flood.js.a", "f", FLOOD)
    # JetStream stores core publishes on its own time: the later event goes after them. (On
    # main this wait ran out: with plasma's consumer stuck, nats-server stored no more.)
    client = await nats.connect(nats_server.url)
    try:
        js = client.jetstream()
        async with asyncio.timeout(120):
            while (await js.stream_info("FLOOD")).state.last_seq < FLOOD:
                await asyncio.sleep(0.1)
        assert (await js.stream_info("FLOOD")).state.messages == FLOOD
    finally:
        await client.close()
    await async_wait_for(
        lambda: server.metrics()["events_received"] >= FLOOD, timeout=240, what="the flood read"
    )
    # One more, after the flood: it must arrive too (the consumer did not stop).
    await publish(nats_server.url, "flood.js.a", envelope("f", FLOOD), jetstream=True)
    # Everything since plasma started, from its history: every event once, in order.
    stream = await SSEStream.open(server.url + "/", "f", headers={"Last-Event-ID": "0"})
    try:
        got = await read_until(stream, FLOOD)
    finally:
        await stream.close()
    assert [event for event, _, _ in got if event is not None] == []
    assert [data for _, _, data in got] == list(range(FLOOD + 1))
    assert [event_id for _, event_id, _ in got] == [str(n) for n in range(1, FLOOD + 2)]
    assert server.metrics()["source_gaps"] == 0


@pytest.mark.timeout(600)
async def test_core_flood_arrives_whole_or_every_loss_is_announced(
    plasma: Callable[..., PlasmaProcess], nats_server: NatsServer
) -> None:
    server = plasma(**nats_env(nats_server, "nats", "flood.core"))
    await healthy(server)
    stream = await SSEStream.open(server.url + "/", "f")
    try:
        await stream.wait_retry()
        reader = asyncio.create_task(read_until(stream, FLOOD))
        await flood(nats_server.url, "flood.core", "f", FLOOD + 1)
        try:
            got = await reader
        except TimeoutError:
            got = []  # the last event itself was lost: the final marker below decides
        if not got or got[-1][2] != FLOOD:
            raise AssertionError("the flood's last event never arrived")
        # Every hole in the data is announced by a gap event in its place.
        expected = 0
        gaps = 0
        announced = False
        for event, _, data in got:
            if event == "gap":
                gaps += 1
                announced = True
                continue
            assert data >= expected, f"{data} out of order (expected {expected})"
            if data > expected:
                assert announced, f"events {expected}..{data - 1} lost without a gap event"
            announced = False
            expected = data + 1
        if gaps:
            assert server.metrics()["source_gaps"] >= 1
            assert any("lost" in line.get("msg", "") for line in server.log_lines())
    finally:
        await stream.close()
