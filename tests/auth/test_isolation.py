"""One user never receives another's event: live, and through resume (Last-Event-ID)."""

from __future__ import annotations

from collections.abc import Iterator

import orjson
import pytest

from tests.auth.keyring import SECRET, mint
from tests.support import PlasmaProcess, RedisServer, SSEStream, start_redis_plasma

pytestmark = pytest.mark.integration

EVENTS = 1000


@pytest.fixture(scope="module")
def server(redis_module: RedisServer) -> Iterator[PlasmaProcess]:
    process = start_redis_plasma(redis_module, PLASMA_AUTH_JWT_SECRET=SECRET)
    yield process
    process.stop()


def token(user: str) -> str:
    return mint(SECRET, "HS256", {"sub": user, "plasma": {"subscribe": [f"user:{user}"]}})


def publish_interleaved(redis: RedisServer, users: tuple[str, ...], count: int) -> None:
    pipe = redis.client().pipeline(transaction=False)
    for n in range(count):
        for user in users:
            event = {"meta": {"type": f"user:{user}:notifications"}, "data": {"to": user, "n": n}}
            pipe.publish("events", orjson.dumps(event))
    pipe.execute()


async def receive(stream: SSEStream, user: str, count: int) -> list[str]:
    """``count`` events, each checked to be ``user``'s and in order; their ids."""
    ids = []
    for n in range(count):
        event = await stream.next_event(timeout=20)
        body = event.json()
        assert body["meta"]["type"] == f"user:{user}:notifications", body
        assert body["data"] == {"to": user, "n": n}
        assert event.id is not None
        ids.append(event.id)
    return ids


async def test_two_users_interleaved_never_cross(
    server: PlasmaProcess, redis_module: RedisServer
) -> None:
    url = server.url + "/?eventType="
    alice = await SSEStream.open(
        url + "user:1", None, headers={"Authorization": f"Bearer {token('1')}"}
    )
    bob = await SSEStream.open(
        url + "user:2", None, headers={"Cookie": f"plasmaAuthorization={token('2')}"}
    )
    try:
        assert (alice.response.status, bob.response.status) == (200, 200)
        await alice.wait_retry()
        await bob.wait_retry()
        publish_interleaved(redis_module, ("1", "2"), EVENTS)
        # A last event each: what follows the 1,000 in each stream is its own, nothing else.
        publish_interleaved(redis_module, ("1", "2"), 1)
        alice_ids = await receive(alice, "1", EVENTS)
        await receive(bob, "2", EVENTS)
        assert (await alice.next_event()).json()["data"] == {"to": "1", "n": 0}
        assert (await bob.next_event()).json()["data"] == {"to": "2", "n": 0}
    finally:
        await alice.close()
        await bob.close()

    # Through resume: everything after Alice's first event, and only hers.
    resumed = await SSEStream.open(
        url + "user:1",
        None,
        headers={"Authorization": f"Bearer {token('1')}", "Last-Event-ID": alice_ids[0]},
    )
    try:
        assert resumed.response.status == 200
        replayed = [await resumed.next_event() for _ in range(EVENTS)]  # 999 + the last one
        types = {event.json()["meta"]["type"] for event in replayed}
        assert types == {"user:1:notifications"}
        assert [event.id for event in replayed[: EVENTS - 1]] == alice_ids[1:]
    finally:
        await resumed.close()

    # Alice resuming Bob's type is refused before anything is replayed.
    stolen = await SSEStream.open(
        url + "user:2",
        None,
        headers={"Authorization": f"Bearer {token('1')}", "Last-Event-ID": alice_ids[0]},
    )
    try:
        assert stolen.response.status == 403
        assert "data:" not in await stolen.response.text()
    finally:
        await stolen.close()
