"""Reaching Redis as managed services require it, and channel patterns.

Real ``redis-server`` processes: one serving TLS only (certificate from ``trustme``) with an ACL
user, read through ``PLASMA_SUBSCRIBER_REDIS_TLS``/``..._USERNAME`` and through the
``rediss://`` address form; and a plain one for ``PSUBSCRIBE`` patterns.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.brokers import TLSFiles, TLSRedisServer
from tests.support import (
    PlasmaProcess,
    RedisServer,
    SSEStream,
    async_wait_for,
    http,
    wait_for,
)

pytestmark = pytest.mark.integration

USER_RULE = "plasma on >s3cret ~* &* +@all"


@pytest.fixture(scope="module")
def tls_redis() -> Iterator[TLSRedisServer]:
    server = TLSRedisServer(TLSFiles(), users=(USER_RULE,)).start()
    yield server
    server.stop()


def failures(server: PlasmaProcess) -> list[dict[str, Any]]:
    """The source's failed-connect log lines so far."""
    return [line for line in server.log_lines() if "failed" in line.get("msg", "")]


def numpat(server: RedisServer) -> int:
    with server.client() as client:
        return int(client.pubsub_numpat())


async def test_a_channel_with_a_wildcard_is_a_pattern(
    redis_plasma: Callable[..., PlasmaProcess], redis_server: RedisServer
) -> None:
    server = redis_plasma(PLASMA_SUBSCRIBER_REDIS_CHANNELS="plain,news.*,room[12]")
    await async_wait_for(lambda: numpat(redis_server) == 2, what="two PSUBSCRIBEs")
    stream = await SSEStream.open(server.url + "/", "t")
    try:
        await stream.wait_retry()
        for channel, n in [("news.sport", 1), ("plain", 2), ("room2", 3), ("room3", 4), ("x", 5)]:
            redis_server.publish(channel, {"meta": {"type": "t"}, "data": n})
        redis_server.publish("news.final", {"meta": {"type": "t"}, "data": 6})
        got = [(await stream.next_event()).json()["data"] for _ in range(4)]
        assert got == [1, 2, 3, 6], "room3 and x match no entry"
    finally:
        await stream.close()


async def _reads_over_tls(server: PlasmaProcess, redis: TLSRedisServer) -> None:
    def subscribed() -> bool:
        with redis.client(username="plasma", password="s3cret") as client:
            return bool(dict(client.pubsub_numsub("events")).get(b"events"))

    await async_wait_for(subscribed, what="plasma to subscribe over TLS")
    assert http(server.url + "/hc").status == 200
    stream = await SSEStream.open(server.url + "/", "secure")
    try:
        await stream.wait_retry()
        with redis.client(username="plasma", password="s3cret") as client:
            client.publish("events", b'{"meta":{"type":"secure"},"data":"over tls"}')
        assert (await stream.next_event()).json()["data"] == "over tls"
    finally:
        await stream.close()


async def test_tls_and_an_acl_user_from_settings(
    plasma: Callable[..., PlasmaProcess], tls_redis: TLSRedisServer
) -> None:
    server = plasma(
        PLASMA_SUBSCRIBER_TYPE="redis",
        PLASMA_SUBSCRIBER_REDIS_ADDR=tls_redis.addr,
        PLASMA_SUBSCRIBER_REDIS_CHANNELS="events",
        PLASMA_SUBSCRIBER_REDIS_TLS="true",
        PLASMA_SUBSCRIBER_REDIS_TLS_CA_FILE=str(tls_redis.files.ca),
        PLASMA_SUBSCRIBER_REDIS_USERNAME="plasma",
        PLASMA_SUBSCRIBER_REDIS_PASSWORD="s3cret",
    )
    await _reads_over_tls(server, tls_redis)
    assert "s3cret" not in server.output()


async def test_tls_and_an_acl_user_from_a_rediss_url(
    plasma: Callable[..., PlasmaProcess], tls_redis: TLSRedisServer
) -> None:
    server = plasma(
        PLASMA_SUBSCRIBER_TYPE="redis",
        PLASMA_SUBSCRIBER_REDIS_ADDR=f"rediss://plasma:s3cret@{tls_redis.addr}/0",
        PLASMA_SUBSCRIBER_REDIS_CHANNELS="events",
        PLASMA_SUBSCRIBER_REDIS_TLS_CA_FILE=str(tls_redis.files.ca),
    )
    await _reads_over_tls(server, tls_redis)
    assert "s3cret" not in server.output()


def test_a_wrong_acl_password_is_unhealthy(
    plasma: Callable[..., PlasmaProcess], tls_redis: TLSRedisServer
) -> None:
    server = plasma(
        PLASMA_SUBSCRIBER_TYPE="redis",
        PLASMA_SUBSCRIBER_REDIS_ADDR=tls_redis.addr,
        PLASMA_SUBSCRIBER_REDIS_CHANNELS="events",
        PLASMA_SUBSCRIBER_REDIS_TLS="true",
        PLASMA_SUBSCRIBER_REDIS_TLS_CA_FILE=str(tls_redis.files.ca),
        PLASMA_SUBSCRIBER_REDIS_USERNAME="plasma",
        PLASMA_SUBSCRIBER_REDIS_PASSWORD="wrong-one",
    )
    failed = wait_for(lambda: failures(server), what="a failed connect")
    assert http(server.url + "/hc").status == 500
    assert "wrong-one" not in server.output()
    assert "WRONGPASS" in failed[0]["error"] or "invalid" in failed[0]["error"]


def test_tls_without_the_ca_is_refused(
    plasma: Callable[..., PlasmaProcess], tls_redis: TLSRedisServer
) -> None:
    server = plasma(
        PLASMA_SUBSCRIBER_TYPE="redis",
        PLASMA_SUBSCRIBER_REDIS_ADDR=tls_redis.addr,
        PLASMA_SUBSCRIBER_REDIS_CHANNELS="events",
        PLASMA_SUBSCRIBER_REDIS_TLS="true",
        PLASMA_SUBSCRIBER_REDIS_USERNAME="plasma",
        PLASMA_SUBSCRIBER_REDIS_PASSWORD="s3cret",
    )
    failed = wait_for(lambda: failures(server), what="a failed connect")
    assert "certificate" in failed[0]["error"].lower()
    assert http(server.url + "/hc").status == 500
