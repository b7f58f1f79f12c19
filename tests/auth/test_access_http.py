"""Access control over real HTTP: a real plasma, real redis-server, aiohttp's client.

Every stream test runs over both ways plasma serves a stream (``via``): the lean path (the
first request of a fresh connection) and aiohttp (after another request on a kept-alive one).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlencode

import orjson
import pytest

from tests.auth.keyring import SECRET, mint
from tests.support import (
    PlasmaProcess,
    RedisServer,
    SSEStream,
    async_wait_for,
    http,
    scrape,
    start_redis_plasma,
    value,
)

pytestmark = pytest.mark.integration

SERVER_ENV = {
    "PLASMA_AUTH_JWT_SECRET": SECRET,
    "PLASMA_AUTH_PUBLIC_TYPES": "news",
    "PLASMA_DEBUG": "true",
    "PLASMA_ORIGIN": "https://app.example",
}


@pytest.fixture(scope="module")
def server(redis_module: RedisServer) -> Iterator[PlasmaProcess]:
    process = start_redis_plasma(redis_module, **SERVER_ENV)
    yield process
    process.stop()


@pytest.fixture(params=["lean", "aiohttp"])
def via(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def unique() -> str:
    return uuid.uuid4().hex[:8]


def token(
    sub: str = "42",
    subscribe: tuple[str, ...] = ("user:42",),
    publish: tuple[str, ...] = (),
    **claims: Any,
) -> str:
    plasma = {"subscribe": list(subscribe), "publish": list(publish)}
    return mint(SECRET, "HS256", {"sub": sub, "plasma": plasma, **claims})


def url(server: PlasmaProcess, types: str, **query: str) -> str:
    return f"{server.url}/?{urlencode({'eventType': types, **query})}"


async def open_stream(
    server: PlasmaProcess, types: str, via: str, headers: dict[str, str] | None = None, **query: str
) -> SSEStream:
    return await SSEStream.open(
        url(server, types, **query), None, headers=headers, after_request=via == "aiohttp"
    )


def publish(redis: RedisServer, type: str, data: Any = None) -> None:
    redis.publish("events", {"meta": {"type": type}, "data": data})


@pytest.mark.parametrize("source", ["header", "cookie", "query"])
async def test_a_token_subscribes_from_each_source(
    server: PlasmaProcess, redis_module: RedisServer, via: str, source: str
) -> None:
    user = unique()
    jwt = token(sub=user, subscribe=(f"user:{user}",))
    headers, query = {}, {}
    if source == "header":
        headers = {"Authorization": f"Bearer {jwt}"}
    elif source == "cookie":
        headers = {"Cookie": f"theme=dark; plasmaAuthorization={jwt}"}
    else:
        query = {"access_token": jwt}
    stream = await open_stream(server, f"user:{user}", via, headers, **query)
    try:
        assert stream.response.status == 200, await stream.response.text()
        assert stream.response.headers["Access-Control-Allow-Credentials"] == "true"
        await stream.wait_retry()
        publish(redis_module, f"user:{user}:notifications", {"n": 1})
        assert (await stream.next_event()).json()["data"] == {"n": 1}
    finally:
        await stream.close()


async def refused(
    server: PlasmaProcess, types: str, via: str, headers: dict[str, str] | None = None, **q: str
) -> tuple[int, str, str]:
    """Status, ``WWW-Authenticate`` and body of a refused subscription."""
    stream = await open_stream(server, types, via, headers, **q)
    try:
        body = await stream.response.text()
        assert body.endswith("\n") and body.count("\n") == 1, body  # one line
        assert stream.response.headers["Access-Control-Allow-Origin"] == "https://app.example"
        return stream.response.status, stream.response.headers["WWW-Authenticate"], body
    finally:
        await stream.close()


async def test_no_token_is_401_with_a_bare_challenge(server: PlasmaProcess, via: str) -> None:
    status, challenge, body = await refused(server, "user:42", via)
    assert (status, challenge) == (401, "Bearer")
    assert "'user:42'" in body


def _hostile() -> dict[str, str]:
    now = int(time.time())
    good = token()
    header, payload, signature = good.split(".")
    return {
        "expired": token(exp=now - 60),
        "not yet valid": token(nbf=now + 600),
        "other secret": mint("x" * 40, "HS256", {"sub": "42"}),
        "alg none": f"{header.replace(header, 'eyJhbGciOiJub25lIn0')}.{payload}.",
        "truncated": good[: len(good) // 2],
        "bad signature": f"{header}.{payload}.{signature[::-1]}",
        "not json": f"{header}.bm90IGpzb24.{signature}",
        "audience": token(aud="someone-else"),
        "wrong claim shape": mint(SECRET, "HS256", {"plasma": ["user:42"]}),
    }


@pytest.mark.parametrize("case", list(_hostile()))
async def test_bad_tokens_are_401_invalid_token(
    server: PlasmaProcess, redis_module: RedisServer, via: str, case: str
) -> None:
    bad = _hostile()[case]
    for headers, query in (({"Authorization": f"Bearer {bad}"}, {}), ({}, {"access_token": bad})):
        status, challenge, body = await refused(server, "user:42", via, headers, **query)
        assert (status, challenge) == (401, 'Bearer error="invalid_token"'), body
        assert "token" in body and bad[:30] not in body
    # ... and the server keeps serving.
    stream = await open_stream(server, "user:42", via, {"Authorization": f"Bearer {token()}"})
    try:
        assert stream.response.status == 200
    finally:
        await stream.close()


async def test_a_100_kb_token_is_refused_cleanly(server: PlasmaProcess) -> None:
    huge = "eyJ" + "A" * 100_000
    result = http(
        url(server, "user:42"),
        headers={"Accept": "text/event-stream", "Authorization": f"Bearer {huge}"},
    )
    assert 400 <= result.status < 500
    assert huge[:50] not in result.body.decode(errors="replace")
    assert http(server.url + "/hc").status == 200


async def test_a_type_the_token_does_not_cover_is_403_naming_it(
    server: PlasmaProcess, via: str
) -> None:
    auth = {"Authorization": f"Bearer {token()}"}
    for types, named in (("user:42,user:43", "'user:43'"), ("user", "'user'"), ("user:420", "")):
        status, challenge, body = await refused(server, types, via, auth)
        assert (status, challenge) == (403, 'Bearer error="insufficient_scope"')
        assert named in body


async def test_public_types_need_no_token(
    server: PlasmaProcess, redis_module: RedisServer, via: str
) -> None:
    stream = await open_stream(server, "news:sports", via)
    try:
        assert stream.response.status == 200
        await stream.wait_retry()
        publish(redis_module, "news:sports", "goal")
        assert (await stream.next_event()).json()["data"] == "goal"
    finally:
        await stream.close()
    status, _, body = await refused(server, "news,user:42", via)
    assert status == 401 and "'user:42'" in body


def post(server: PlasmaProcess, type: str, headers: dict[str, str] | None = None) -> Any:
    body = orjson.dumps({"meta": {"type": type}, "data": 1})
    return http(server.url + "/debug", "POST", body, headers)


async def test_post_debug_needs_a_publish_grant(server: PlasmaProcess) -> None:
    no_token = post(server, "user:42")
    assert no_token.status == 401 and no_token.headers["WWW-Authenticate"] == "Bearer"
    reader = {"Authorization": f"Bearer {token()}"}
    forbidden = post(server, "user:42:x", reader)
    assert forbidden.status == 403 and "'user:42:x'" in forbidden.json()["error"]
    writer = {"Authorization": f"Bearer {token(publish=('user:42',))}"}
    assert post(server, "user:42:x", writer).status == 200
    assert post(server, "user:43", writer).status == 403
    cookie = {"Cookie": f"plasmaAuthorization={token(publish=('user:42',))}"}
    assert post(server, "user:42", cookie).status == 401  # a cookie never publishes
    query = f"?access_token={token(publish=('user:42',))}"
    assert http(server.url + "/debug" + query, "POST", b'{"meta":{"type":"user:42"}}').status == 200


async def test_refusals_are_counted_by_reason(server: PlasmaProcess, via: str) -> None:
    before = server.metrics()["auth_failures_by_reason"]
    await refused(server, "user:42", via)
    await refused(server, "user:42", via, {"Authorization": f"Bearer {token(exp=1)}"})
    await refused(server, "user:43", via, {"Authorization": f"Bearer {token()}"})
    after = server.metrics()["auth_failures_by_reason"]
    for reason in ("missing", "expired", "forbidden"):
        assert after[reason] == before.get(reason, 0) + 1, reason  # once, whichever path
    samples = scrape(server.url)
    assert value(samples, "plasma_auth_failures_total", reason="forbidden") == after["forbidden"]


async def test_the_access_log_has_the_subject_and_never_a_token(
    server: PlasmaProcess, via: str
) -> None:
    subject = f"user-{unique()}"
    jwt = token(sub=subject)
    stream = await open_stream(server, "user:42", via, access_token=jwt)
    await stream.wait_retry()
    await stream.close()
    http(f"{server.url}/nowhere?access_token={jwt}")
    await refused(server, "user:43", via, access_token=jwt)

    def closed() -> list[dict[str, Any]]:
        return [
            line
            for line in server.log_lines()
            if line.get("msg") == "stream closed" and line.get("subject") == subject
        ]

    await async_wait_for(closed, what="the stream's access-log line")
    assert closed()[0]["types"] == ["user:42"]
    assert jwt.split(".")[2] not in server.output()  # not even the signature


async def test_with_access_control_off_tokens_are_ignored(
    redis_server: RedisServer, via: str
) -> None:
    """No auth setting: plasma behaves as without access control, whatever a client sends."""
    plain = start_redis_plasma(redis_server, PLASMA_DEBUG="true")
    try:
        stream = await open_stream(
            plain, "user", via, {"Authorization": "Bearer garbage"}, access_token="x"
        )
        try:
            assert stream.response.status == 200
            assert "Access-Control-Allow-Credentials" not in stream.response.headers
        finally:
            await stream.close()
        assert post(plain, "user:1").status == 200
        assert "auth_failures" in plain.metrics()
    finally:
        plain.stop()


# --- expiry on open streams -----------------------------------------------------------------


@pytest.fixture(scope="module")
def strict(redis_module: RedisServer) -> Iterator[PlasmaProcess]:
    """No leeway: a token ends exactly at its exp."""
    process = start_redis_plasma(redis_module, **SERVER_ENV, PLASMA_AUTH_JWT_LEEWAY="0")
    yield process
    process.stop()


async def test_a_stream_ends_when_its_token_expires(
    strict: PlasmaProcess, redis_module: RedisServer, via: str
) -> None:
    user = unique()
    exp = int(time.time()) + 6  # room for a busy machine to deliver the first event
    jwt = token(sub=user, subscribe=(f"user:{user}",), exp=exp)
    stream = await open_stream(strict, f"user:{user}", via, {"Authorization": f"Bearer {jwt}"})
    try:
        assert stream.response.status == 200
        await stream.wait_retry()
        publish(redis_module, f"user:{user}", "before exp")
        assert (await stream.next_event()).json()["data"] == "before exp"
        stream.retry = None
        assert await stream.next_frame(timeout=10) is None  # the stream ended ...
        assert time.time() >= exp - 0.05  # ... at exp, not before
        assert stream.retry is not None  # with retry: first, so the browser comes back
    finally:
        await stream.close()

    def closed() -> list[dict[str, Any]]:
        return [
            line
            for line in strict.log_lines()
            if line.get("msg") == "stream closed" and line.get("subject") == user
        ]

    await async_wait_for(closed, what="the stream's access-log line")
    assert closed()[0]["reason"] == "expired"


# --- endpoint tokens ------------------------------------------------------------------------


async def test_metrics_and_debug_page_tokens(plasma: Any) -> None:
    metrics_token, debug_token = "metrics-" + uuid.uuid4().hex, "debug-" + uuid.uuid4().hex
    server = plasma(
        PLASMA_METRICS_TOKEN=metrics_token,
        PLASMA_DEBUG_TOKEN=debug_token,
        PLASMA_DEBUG="true",
        PLASMA_SUBSCRIBER_MOCK_INTERVAL="1h",
    )
    bare = http(server.url + "/metrics")
    assert bare.status == 401 and bare.headers["WWW-Authenticate"] == "Bearer"
    wrong = http(server.url + "/metrics", headers={"Authorization": "Bearer " + debug_token})
    assert wrong.status == 401 and "invalid_token" in wrong.headers["WWW-Authenticate"]
    good = http(server.url + "/metrics", headers={"Authorization": "Bearer " + metrics_token})
    assert good.status == 200 and good.json()["auth_failures_by_reason"] == {
        "missing": 1,
        "signature": 1,
    }
    assert http(server.url + "/debug").status == 401
    assert http(f"{server.url}/debug?access_token={debug_token}").status == 200
    assert http(server.url + "/hc").status == 200  # health checks stay open
    assert metrics_token not in server.output() and debug_token not in server.output()
