"""``POST /publish`` against a real plasma process and a real redis-server.

Each source is driven end to end (an SSE subscriber receives what was posted); hostile bodies
(huge, deeply nested, 10,000 events, slow, not UTF-8) get the right status and the server keeps
serving a bystander subscriber throughout.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from typing import Any

import orjson
import pytest

from plasma.client import Event, Publisher, PublishError, Subscriber
from tests.auth.keyring import SECRET, mint
from tests.support import (
    HTTPResult,
    PlasmaProcess,
    RedisServer,
    SSEStream,
    http,
    scrape,
    start_redis_plasma,
    value,
    wait_for,
)

pytestmark = pytest.mark.integration

MAX_BODY = 512 * 1024


def event(type: str, data: Any = None) -> dict[str, Any]:
    return {"meta": {"type": type}, "data": data}


def post(
    server: PlasmaProcess,
    body: bytes | Any,
    content_type: str = "application/json",
    path: str = "/publish",
    **headers: str,
) -> HTTPResult:
    raw = body if isinstance(body, bytes) else orjson.dumps(body)
    return http(server.url + path, "POST", raw, {"Content-Type": content_type, **headers})


def raw_exchange(port: int, data: bytes, pause_after: int | None = None) -> bytes:
    """Send ``data`` on a socket (stalling after ``pause_after`` bytes); read until close."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(data if pause_after is None else data[:pause_after])
        chunks = []
        try:
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        except (TimeoutError, ConnectionResetError):
            pass
    return b"".join(chunks)


def status_of(reply: bytes) -> int:
    assert reply.startswith(b"HTTP/1.1 "), reply[:200]
    return int(reply.split(b" ", 2)[1])


def request_head(length: int | None, extra: str = "") -> bytes:
    size = f"Content-Length: {length}\r\n" if length is not None else ""
    return (
        f"POST /publish HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n{size}{extra}\r\n"
    ).encode()


@pytest.fixture(scope="module")
def redis_server(redis_module: RedisServer) -> RedisServer:
    return redis_module


@pytest.fixture(scope="module")
def server(redis_server: RedisServer) -> Iterator[PlasmaProcess]:
    """One pub/sub plasma with the API on, for the module; it must serve through everything."""
    process = start_redis_plasma(
        redis_server,
        PLASMA_PUBLISH_API="true",
        PLASMA_PUBLISH_MAX_BODY=str(MAX_BODY),
        PLASMA_SUBSCRIBER_REDIS_CHANNELS="events,other",
        PLASMA_HEADER_TIMEOUT="1s",
    )
    yield process
    assert process.stop() == 0


@pytest.fixture
async def subscriber(server: PlasmaProcess) -> Any:
    stream = await SSEStream.open(server.url + "/", "t")
    await stream.wait_retry()
    yield stream
    await stream.close()


async def received(stream: SSEStream, n: int) -> list[Any]:
    return [(await stream.next_event()).json() for _ in range(n)]


def source_up(process: PlasmaProcess) -> None:
    """Wait until the source reads: a stream source starts reading where the stream is then."""
    wait_for(lambda: process.metrics()["source_up"], 15, what="the source to connect")


def still_serving(server: PlasmaProcess) -> None:
    assert http(server.url + "/hc").status == 200
    answer = post(server, event("t:alive"))
    assert answer.status == 200, answer.body


# --- what a publisher sends -----------------------------------------------------------------


async def test_one_event_reaches_subscribers(server: PlasmaProcess, subscriber: SSEStream) -> None:
    answer = post(server, event("t:1", {"n": 1}))
    assert answer.status == 200
    assert answer.json() == {"published": 1, "ids": [None]}
    assert await received(subscriber, 1) == [event("t:1", {"n": 1})]


@pytest.mark.parametrize("kind", ["array", "ndjson"])
async def test_batch_arrives_whole_and_in_order(
    server: PlasmaProcess, subscriber: SSEStream, kind: str
) -> None:
    events = [event(f"t:{i}", i) for i in range(20)]
    if kind == "array":
        answer = post(server, events)
    else:
        body = b"\n".join(orjson.dumps(e) for e in events) + b"\n\n"
        answer = post(server, body, "application/x-ndjson")
    assert answer.status == 200, answer.body
    assert answer.json() == {"published": 20, "ids": [None] * 20}
    assert await received(subscriber, 20) == events


async def test_invalid_event_names_its_index_and_nothing_is_published(
    server: PlasmaProcess, subscriber: SSEStream
) -> None:
    answer = post(server, [event("t:a"), event("t:b"), {"meta": {}}, event("t:c")])
    assert answer.status == 400
    assert answer.json()["index"] == 2
    assert "event 2" in answer.json()["error"]
    assert "meta.type" in answer.json()["error"]
    post(server, event("t:marker"))
    assert await received(subscriber, 1) == [event("t:marker")]  # nothing of the batch came


async def test_channel_query_picks_one_of_the_configured_channels(
    server: PlasmaProcess, redis_server: RedisServer
) -> None:
    with redis_server.client() as client, client.pubsub() as pubsub:
        pubsub.subscribe("other")
        wait_for(lambda: pubsub.get_message(timeout=0.1), what="the subscription")
        assert post(server, event("t:x"), path="/publish?channel=other").status == 200
        message = wait_for(lambda: pubsub.get_message(timeout=0.1), what="the event on other")
        assert orjson.loads(message["data"]) == event("t:x")
    refused = post(server, event("t:x"), path="/publish?channel=elsewhere")
    assert refused.status == 400
    assert "elsewhere" in refused.json()["error"]


@pytest.mark.parametrize(
    ("content_type", "status"),
    [
        ("text/plain", 415),
        ("application/x-www-form-urlencoded", 415),
        ("application/json; charset=latin-1", 415),
        ("application/json; charset=utf-8", 200),
    ],
)
def test_content_type_is_checked(server: PlasmaProcess, content_type: str, status: int) -> None:
    assert post(server, event("t:ct"), content_type).status == status


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE"])
def test_other_methods_are_405(server: PlasmaProcess, method: str) -> None:
    answer = http(server.url + "/publish", method)
    assert answer.status == 405
    assert answer.headers["Allow"] == "POST, OPTIONS"


# --- counted in /metrics --------------------------------------------------------------------


def test_published_events_and_refusals_are_counted(server: PlasmaProcess) -> None:
    before = server.metrics()
    scraped_before = scrape(server.url)
    assert post(server, [event("t:m", i) for i in range(3)]).status == 200
    assert post(server, [event("t:m"), {"meta": {}}]).status == 400
    assert post(server, event("t:m"), "text/plain").status == 415
    after = server.metrics()
    assert after["events_published_api"] - before["events_published_api"] == 3
    rejected = before["publish_rejected_by_status"]
    assert after["publish_rejected_by_status"].get("400", 0) - rejected.get("400", 0) == 1
    assert after["publish_rejected_by_status"].get("415", 0) - rejected.get("415", 0) == 1
    assert after["publish_rejected"] - before["publish_rejected"] == 2
    scraped = scrape(server.url)
    published = "plasma_events_published_api_total"
    assert value(scraped, published) - value(scraped_before, published) == 3
    refused = "plasma_publish_rejected_total"
    assert value(scraped, refused, status="415") - value(scraped_before, refused, status="415") == 1


# --- a page on another origin ---------------------------------------------------------------


def preflight(server: PlasmaProcess, path: str, method: str = "POST") -> HTTPResult:
    return http(
        server.url + path,
        "OPTIONS",
        headers={
            "Origin": "https://app.example",
            "Access-Control-Request-Method": method,
            "Access-Control-Request-Headers": "authorization,content-type",
        },
    )


def test_preflight_without_an_origin_setting_allows_no_page(server: PlasmaProcess) -> None:
    answer = preflight(server, "/publish")
    assert answer.status == 204
    assert answer.headers["Access-Control-Allow-Methods"] == "POST, OPTIONS"
    assert "Access-Control-Allow-Origin" not in answer.headers  # PLASMA_ORIGIN is empty
    assert "Access-Control-Allow-Origin" not in post(server, event("t:o")).headers


def test_a_page_on_another_origin_publishes_with_a_token(redis_server: RedisServer) -> None:
    process = start_redis_plasma(
        redis_server,
        PLASMA_PUBLISH_API="true",
        PLASMA_ORIGIN="https://app.example",
        PLASMA_AUTH_JWT_SECRET=SECRET,
        PLASMA_DEBUG="true",
    )
    try:
        answer = preflight(process, "/publish")
        assert answer.status == 204
        assert answer.headers["Access-Control-Allow-Origin"] == "https://app.example"
        assert answer.headers["Access-Control-Allow-Methods"] == "POST, OPTIONS"
        allowed = {
            h.strip().lower() for h in answer.headers["Access-Control-Allow-Headers"].split(",")
        }
        assert {"authorization", "content-type"} <= allowed
        # The same origin rule as a stream's preflight, which still allows only reading.
        stream = preflight(process, "/?eventType=t", "GET")
        assert stream.headers["Access-Control-Allow-Origin"] == "https://app.example"
        assert "POST" not in stream.headers["Access-Control-Allow-Methods"]
        for key in ("Access-Control-Allow-Origin", "Access-Control-Allow-Credentials"):
            assert answer.headers.get(key) == stream.headers.get(key), key

        grant = mint(SECRET, "HS256", {"sub": "42", "plasma": {"publish": ["user:42"]}})
        ok = post(process, event("user:42:x"), Authorization=f"Bearer {grant}")
        assert ok.status == 200, ok.body
        assert ok.headers["Access-Control-Allow-Origin"] == "https://app.example"
        refused = post(process, event("user:42:x"))  # no token: the page can read why
        assert refused.status == 401
        assert refused.headers["Access-Control-Allow-Origin"] == "https://app.example"
        counted = process.metrics()
        assert counted["events_published_api"] == 1
        assert counted["publish_rejected_by_status"] == {"401": 1}
        assert orjson.loads(http(process.url + "/debug/stats").body)["events_published_api"] == 1
    finally:
        process.stop()


# --- hostile bodies -------------------------------------------------------------------------


def test_content_length_over_the_limit_is_413_before_the_body(server: PlasmaProcess) -> None:
    reply = raw_exchange(server.port, request_head(100 * MAX_BODY))  # no body is ever sent
    assert status_of(reply) == 413
    still_serving(server)


def test_chunked_body_is_cut_at_the_limit(server: PlasmaProcess) -> None:
    chunk = b"x" * 8192
    body = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(2 * MAX_BODY // 8192))
    reply = raw_exchange(server.port, request_head(None, "Transfer-Encoding: chunked\r\n") + body)
    assert status_of(reply) == 413
    still_serving(server)


def test_deep_nesting_is_400(server: PlasmaProcess) -> None:
    assert post(server, b"[" * 50_000 + b"]" * 50_000).status == 400
    deep = b'{"meta":{"type":"t"},"data":' + b"[" * 300 + b"]" * 300 + b"}"
    answer = post(server, deep)
    assert answer.status == 400
    assert answer.json()["reason"] == "too_deep"
    still_serving(server)


def test_invalid_utf8_is_400(server: PlasmaProcess) -> None:
    answer = post(server, b'{"meta":{"type":"t\xff\xfe"},"data":1}')
    assert answer.status == 400
    answer = post(server, b'{"meta":{"type":"t"},"data":1}\n\xc3\x28\n', "application/x-ndjson")
    assert answer.status == 400
    assert answer.json()["index"] == 1
    still_serving(server)


def test_slow_body_times_out_with_408(server: PlasmaProcess) -> None:
    body = orjson.dumps(event("t:slow"))
    # Five bytes never come; the socket's own timeout (10 s) would leave the reply empty.
    reply = raw_exchange(server.port, request_head(len(body)) + body, pause_after=-5)
    assert status_of(reply) == 408
    still_serving(server)


async def test_ten_thousand_event_batch(server: PlasmaProcess, subscriber: SSEStream) -> None:
    events = [event("t:b", i) for i in range(10_000)]
    answer = post(server, events)
    assert answer.status == 200
    assert answer.json()["published"] == 10_000
    assert await received(subscriber, 10_000) == events
    still_serving(server)


def test_empty_body_and_empty_batch_are_400(server: PlasmaProcess) -> None:
    assert post(server, b"").status == 400
    assert post(server, b"[]").status == 400
    assert post(server, b"\n\n", "application/x-ndjson").status == 400


# --- each source, and the client library ----------------------------------------------------


@pytest.mark.parametrize("source", ["redis-stream", "mock"])
async def test_ids_come_back_where_the_source_assigns_them(
    redis_server: RedisServer, source: str
) -> None:
    env = {"PLASMA_PUBLISH_API": "true", "PLASMA_SUBSCRIBER_MOCK_INTERVAL": "1h"}
    if source == "mock":
        process = PlasmaProcess(env={"PLASMA_SUBSCRIBER_TYPE": "mock", **env}).start()
    else:
        process = start_redis_plasma(
            redis_server,
            PLASMA_SUBSCRIBER_TYPE=source,
            PLASMA_SUBSCRIBER_REDIS_CHANNELS="s13",
            **env,
        )
    try:
        source_up(process)
        async with (
            Subscriber(process.url, ["t"]) as subscriber,
            Publisher(process.url) as publisher,
        ):
            ids = await publisher.publish_many([("t:1", 1), ("t:2", {"x": [2]})])
            one = await publisher.publish("t:3", "three")
            got = [await asyncio.wait_for(anext(subscriber), 10) for _ in range(3)]
        assert all(isinstance(e, Event) for e in got)
        assert [e.id for e in got] == [*ids, one]
        assert [(e.type, e.data) for e in got if isinstance(e, Event)] == [
            ("t:1", 1),
            ("t:2", {"x": [2]}),
            ("t:3", "three"),
        ]
        if source == "redis-stream":
            with redis_server.client() as client:
                assert [i.decode() for i, _ in client.xrange("s13")] == [*ids, one]
    finally:
        process.stop()


async def test_ten_thousand_events_into_a_stream(redis_server: RedisServer) -> None:
    process = start_redis_plasma(
        redis_server,
        PLASMA_SUBSCRIBER_TYPE="redis-stream",
        PLASMA_SUBSCRIBER_REDIS_CHANNELS="s10k",
        PLASMA_PUBLISH_API="true",
    )
    try:
        source_up(process)
        answer = post(process, [event("t:n", i) for i in range(10_000)])
        assert answer.status == 200
        assert answer.json()["published"] == 10_000
        with redis_server.client() as client:
            assert client.xlen("s10k") == 10_000
    finally:
        process.stop()


async def test_redis_down_is_503_with_retry_after_and_nothing_half_published(
    redis_server: RedisServer,
) -> None:
    process = start_redis_plasma(
        redis_server,
        PLASMA_SUBSCRIBER_TYPE="redis-stream",
        PLASMA_SUBSCRIBER_REDIS_CHANNELS="s503",
        PLASMA_PUBLISH_API="true",
    )
    try:
        source_up(process)
        assert post(process, event("t:before")).status == 200
        redis_server.stop()
        answer = post(process, [event("t:lost", i) for i in range(100)])
        assert answer.status == 503
        assert int(answer.headers["Retry-After"]) >= 1
        async with Publisher(process.url) as publisher:
            with pytest.raises(PublishError) as info:
                await publisher.publish("t:lost")
        assert info.value.status == 503 and info.value.retry_after is not None
        assert http(process.url + "/hc").status == 500
        redis_server.start()
        wait_for(lambda: post(process, event("t:after")).status == 200, 20, what="redis back")
        with redis_server.client() as client:
            types = [orjson.loads(f[b"event"])["meta"]["type"] for _, f in client.xrange("s503")]
        assert "t:lost" not in types
    finally:
        process.stop()


def test_off_by_default_and_path_is_configurable(redis_server: RedisServer) -> None:
    off = start_redis_plasma(redis_server)
    on = start_redis_plasma(
        redis_server, PLASMA_PUBLISH_API="true", PLASMA_PUBLISH_PATH="/api/events"
    )
    try:
        assert post(off, event("t")).status == 404
        assert post(on, event("t")).status == 404
        assert post(on, event("t"), path="/api/events").status == 200
        warnings = [line for line in on.log_lines() if "may publish" in line.get("msg", "")]
        assert warnings and warnings[0]["level"] == "warn"
        assert not [line for line in off.log_lines() if "may publish" in line.get("msg", "")]
    finally:
        off.stop()
        on.stop()


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("PLASMA_PUBLISH_API", "maybe"),
        ("PLASMA_PUBLISH_MAX_BODY", "1k"),
        ("PLASMA_PUBLISH_PATH", "publish"),
    ],
)
def test_bad_settings_stop_start_up_naming_the_variable(name: str, value: str) -> None:
    process = PlasmaProcess(env={name: value}).start(wait=False)
    assert process.proc is not None
    assert process.proc.wait(15) == 2
    assert name in process.output()
