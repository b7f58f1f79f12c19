"""SSE over real HTTP: a real plasma process, a real redis-server, real HTTP clients.

Every stream test runs over both ways plasma serves a stream (the ``via`` fixture): the lean
path, which serves an SSE request that is the first of a fresh connection, and aiohttp, which
serves one that follows another request on a kept-alive connection.
"""

from __future__ import annotations

import asyncio
import resource
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import orjson
import pytest

from tests.support import (
    PlasmaProcess,
    RawSSE,
    RedisServer,
    SSEStream,
    async_wait_for,
    http,
    post_event,
    start_redis_plasma,
)

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def server(redis_module: RedisServer) -> Iterator[PlasmaProcess]:
    """Defaults, except: Redis source on channel ``events``, /debug enabled."""
    process = start_redis_plasma(redis_module, PLASMA_DEBUG="true")
    yield process
    process.stop()


@pytest.fixture(scope="module")
def custom() -> Iterator[PlasmaProcess]:
    """Mock source (quiet), origin, renamed query, short retry and heartbeat."""
    process = PlasmaProcess(
        env={
            "PLASMA_SUBSCRIBER_MOCK_INTERVAL": "1h",
            "PLASMA_ORIGIN": "https://app.example",
            "PLASMA_SSE_EVENTQUERY": "topics",
            "PLASMA_SSE_RETRY": "1234",
            "PLASMA_SSE_HEARTBEAT": "200ms",
            "PLASMA_DEBUG": "true",
        }
    ).start()
    yield process
    process.stop()


@pytest.fixture(params=["lean", "aiohttp"])
def via(request: pytest.FixtureRequest) -> str:
    """Which way the stream is served: ``lean`` (first request of a fresh connection) or
    ``aiohttp`` (the SSE request follows another request on the same, kept-alive connection)."""
    return str(request.param)


def unique(prefix: str = "t") -> str:
    return f"{prefix}{uuid.uuid4().hex[:8]}"


async def open_ready(url: str, types: str, via: str, **kwargs: object) -> SSEStream:
    stream = await SSEStream.open(
        url,
        types,
        after_request=via == "aiohttp",
        **kwargs,  # type: ignore[arg-type]
    )
    assert stream.response.status == 200, await stream.response.text()
    await stream.wait_retry()
    return stream


async def open_raw(port: int, path: str, via: str, **kwargs: Any) -> RawSSE:
    return await RawSSE.open(port, path, after_request=via == "aiohttp", **kwargs)


async def answer(
    port: int, path: str, via: str, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    """The status, headers and body of a request that gets a plain (non-stream) answer."""
    raw = await open_raw(port, path, via, headers=headers)
    try:
        head = (await raw.read_until(b"\r\n\r\n")).partition(b"\r\n\r\n")[0]
        status_line, *lines = head.decode("latin-1").split("\r\n")
        fields = {k.strip().lower(): v.strip() for k, _, v in (x.partition(":") for x in lines)}
        start = len(head) + 4
        end = start + int(fields["content-length"])
        async with asyncio.timeout(5):
            while len(raw.buffer) < end:
                chunk = await raw.reader.read(65536)
                assert chunk, "connection closed inside the body"
                raw.buffer += chunk
        return int(status_line.split()[1]), fields, raw.buffer[start:end]
    finally:
        raw.close()


@pytest.mark.parametrize("path", ["/", "/events", "/some/deep/path", "/index.html"])
async def test_any_path_streams(
    server: PlasmaProcess, redis_module: RedisServer, path: str, via: str
) -> None:
    t = unique()
    stream = await open_ready(server.url + path, t, via)
    try:
        redis_module.publish("events", {"meta": {"type": t}, "data": path})
        event = await stream.next_event()
        assert event.json() == {"meta": {"type": t}, "data": path}
    finally:
        await stream.close()


@pytest.mark.parametrize(
    "accept",
    ["text/event-stream", "text/event-stream; charset=utf-8", "text/html, text/event-stream"],
)
async def test_accept_variants_get_a_stream(server: PlasmaProcess, accept: str, via: str) -> None:
    stream = await open_ready(server.url + "/", "x", via, headers={"Accept": accept})
    try:
        assert stream.response.headers["Content-Type"].startswith("text/event-stream")
    finally:
        await stream.close()


async def test_without_accept_it_is_not_a_stream(server: PlasmaProcess) -> None:
    result = http(server.url + "/?eventType=x")
    assert result.status == 404


async def test_headers(server: PlasmaProcess, via: str) -> None:
    stream = await open_ready(server.url + "/", "x", via)
    try:
        h = stream.response.headers
        assert h["Content-Type"].split(";")[0].strip() == "text/event-stream"
        assert h["Cache-Control"] == "no-cache"
        assert h["Connection"].lower() == "keep-alive"
        assert "Access-Control-Allow-Origin" not in h
    finally:
        await stream.close()


async def test_origin_header_when_configured(custom: PlasmaProcess, via: str) -> None:
    stream = await open_ready(custom.url + "/", "x", via, query="topics")
    try:
        assert stream.response.headers["Access-Control-Allow-Origin"] == "https://app.example"
    finally:
        await stream.close()
    status, headers, _ = await answer(custom.port, "/", via)
    assert status == 400
    assert headers["access-control-allow-origin"] == "https://app.example"


async def test_event_query_is_renamed(custom: PlasmaProcess, via: str) -> None:
    t = unique()
    stream = await open_ready(custom.url + "/", t, via, query="topics")
    try:
        assert stream.retry == 1234
        post_event(custom.url, t, {"renamed": True})
        assert (await stream.next_event()).json()["data"] == {"renamed": True}
    finally:
        await stream.close()
    status, _, body = await answer(custom.port, "/?eventType=" + t, via)
    assert status == 400
    assert b"topics" in body


@pytest.mark.parametrize(
    "query",
    ["", "?eventType=", "?eventType=,,", "?eventType=%20", "?other=program", "?eventtype=a"],
)
async def test_missing_or_empty_types_is_400(server: PlasmaProcess, query: str, via: str) -> None:
    status, _, body = await answer(server.port, "/" + query, via)
    assert status == 400
    reason = body.decode().strip()
    assert reason, "a short reason is given"
    assert len(reason) < 200
    assert "\n" not in reason


async def test_retry_comes_first_and_at_once(server: PlasmaProcess, via: str) -> None:
    """Nothing is published: the stream still opens with retry: right away."""
    raw = await open_raw(server.port, "/?eventType=" + unique(), via)
    try:
        data = await raw.read_until(b"\r\n\r\n", timeout=5)
        head, _, body = data.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200")
        raw.buffer = body
        data = await raw.read_until(b"retry: 2000\n\n", timeout=5)
        # Chunked: the first chunk's payload is exactly the retry frame.
        assert data.startswith(b"d\r\nretry: 2000\n\n\r\n"), data
    finally:
        raw.close()


async def test_frames_carry_id_and_compact_event(
    server: PlasmaProcess, redis_module: RedisServer, via: str
) -> None:
    t = unique()
    stream = await open_ready(server.url + "/", t, via)
    try:
        redis_module.publish(
            "events", b'{ "meta": { "type": "%s:x" }, "data": { "a": [1, 2] } }' % t.encode()
        )
        redis_module.publish("events", b'{"meta":{"type":"%s"},"data":"str"}' % t.encode())
        lines: list[bytes] = []
        async with asyncio.timeout(5):
            while sum(1 for line in lines if line.startswith(b"data:")) < 2 or lines[-1] != b"":
                lines.append((await stream.response.content.readline()).rstrip(b"\n"))
    finally:
        await stream.close()
    # The retry: frame was consumed by wait_retry; the rest is two id/data frames.
    frames = [f.strip(b"\n").split(b"\n") for f in b"\n".join(lines).split(b"\n\n") if f.strip()]
    assert len(frames) == 2, lines
    first, second = frames
    assert first[0].startswith(b"id: ") and first[0][4:]
    assert first[1] == b'data: {"meta":{"type":"%s:x"},"data":{"a":[1,2]}}' % t.encode()
    assert second[0].startswith(b"id: ") and second[0] != first[0]
    assert second[1] == b'data: {"meta":{"type":"%s"},"data":"str"}' % t.encode()


async def test_heartbeat_comment(custom: PlasmaProcess, via: str) -> None:
    stream = await open_ready(custom.url + "/", unique(), via, query="topics")
    try:
        async with asyncio.timeout(5):
            seen = 0
            while seen < 2:
                line = await stream.response.content.readline()
                assert line, "stream ended"
                if line.rstrip(b"\n") == b":heartbeat":
                    seen += 1
    finally:
        await stream.close()


async def test_several_types_comma_separated(
    server: PlasmaProcess, redis_module: RedisServer, via: str
) -> None:
    t = unique()
    stream = await open_ready(server.url + "/", f"{t}:a, {t}:b:c", via)
    try:
        for suffix in ["a:1", "b:x", "b:c", "b:c:d", "c", "b", "a", "ab", "end"]:
            redis_module.publish("events", {"meta": {"type": f"{t}:{suffix}"}, "data": suffix})
        redis_module.publish("events", {"meta": {"type": f"{t}:a:end"}, "data": "end"})
        got = []
        while not got or got[-1] != "end":
            got.append((await stream.next_event()).json()["data"])
    finally:
        await stream.close()
    assert got == ["a:1", "b:c", "b:c:d", "a", "end"]


async def test_prefix_subscribers_each_get_the_event_once(
    server: PlasmaProcess, redis_module: RedisServer, via: str
) -> None:
    t = unique()
    end = f"{t}-end"  # not a segment of t: only those asking for it get it
    subscriptions = (t, f"{t}:1234", f"{t}:1234:views", f"{t},{t}:1234", f"{t}:12", f"{t}:1234:v")
    streams = [await open_ready(server.url + "/", f"{types},{end}", via) for types in subscriptions]
    try:
        redis_module.publish("events", {"meta": {"type": f"{t}:1234:views"}, "data": 1})
        redis_module.publish("events", {"meta": {"type": f"{t}:12:views"}, "data": 2})
        redis_module.publish("events", {"meta": {"type": f"{t}:1234:v"}, "data": 3})
        redis_module.publish("events", {"meta": {"type": end}, "data": "end"})
        got = []
        for stream in streams:
            frames = []
            while not frames or frames[-1] != "end":
                frames.append((await stream.next_event()).json()["data"])
            got.append(frames[:-1])
    finally:
        for stream in streams:
            await stream.close()
    assert got == [[1, 2, 3], [1, 3], [1], [1, 2, 3], [2], [3]]


async def test_order_of_500_events(
    server: PlasmaProcess, redis_module: RedisServer, via: str
) -> None:
    t = unique()
    stream = await open_ready(server.url + "/", t, via)
    try:
        with redis_module.client() as client:
            pipe = client.pipeline(transaction=False)
            for n in range(500):
                pipe.publish("events", orjson.dumps({"meta": {"type": f"{t}:{n % 7}"}, "data": n}))
            pipe.execute()
        got = [(await stream.next_event()).json()["data"] for _ in range(500)]
    finally:
        await stream.close()
    assert got == list(range(500))


async def test_2000_concurrent_clients_all_receive_an_event(
    server: PlasmaProcess, redis_module: RedisServer, via: str
) -> None:
    clients_n = 2000
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < clients_n + 200:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, clients_n + 1000), hard))
    t = unique()
    limit = asyncio.Semaphore(200)

    async def connect(i: int) -> RawSSE:
        async with limit:
            raw = await open_raw(server.port, f"/?eventType={t}:{i % 10},{t}", via)
            await raw.read_until(b"retry: 2000\n\n", timeout=30)
            return raw

    clients = await asyncio.gather(*(connect(i) for i in range(clients_n)))
    try:
        before = server.metrics()["connections"]
        assert before >= clients_n
        marker = unique("marker").encode()
        redis_module.publish("events", {"meta": {"type": f"{t}:3:x"}, "data": marker.decode()})
        results = await asyncio.gather(
            *(c.read_until(marker, timeout=30) for c in clients), return_exceptions=True
        )
        failed = [r for r in results if isinstance(r, BaseException)]
        assert not failed, f"{len(failed)} clients missed the event: {failed[:3]}"
        # Exactly one delivery per client, even for those subscribed to the type and a prefix.
        assert all(c.buffer.count(marker) == 1 for c in clients)
    finally:
        for c in clients:
            c.close()
    await async_wait_for(
        lambda: server.metrics()["connections"] <= before - clients_n,
        timeout=15,
        what="plasma to count the closed streams",
    )


async def test_stream_on_a_kept_alive_connection(custom: PlasmaProcess) -> None:
    """A page load then an EventSource on the same connection, as browsers do."""
    t = unique()
    reader, writer = await asyncio.open_connection("127.0.0.1", custom.port)
    try:
        writer.write(b"GET /debug HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/html\r\n\r\n")
        async with asyncio.timeout(5):
            head = await reader.readuntil(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200")
            length = next(
                int(line.split(b":", 1)[1])
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length:")
            )
            page = await reader.readexactly(length)
        assert b"<form" in page
        raw = RawSSE(reader, writer)
        writer.write(
            f"GET /?topics={t} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            "Accept: text/event-stream\r\n\r\n".encode()
        )
        await raw.read_until(b"retry: 1234\n\n")
        assert raw.buffer.startswith(b"HTTP/1.1 200")
        post_event(custom.url, t, "same connection")
        await raw.read_until(b'"data":"same connection"}')
    finally:
        writer.close()


async def test_http10_client_gets_an_unchunked_stream(
    server: PlasmaProcess, redis_module: RedisServer, via: str
) -> None:
    t = unique()
    raw = await open_raw(server.port, f"/?eventType={t}", via, version="1.0")
    try:
        head = await raw.read_until(b"retry: 2000\n\n", timeout=5)
        assert head.startswith(b"HTTP/1.0 200") or head.startswith(b"HTTP/1.1 200")
        assert b"chunked" not in head.lower()
        raw.buffer = b""
        redis_module.publish("events", {"meta": {"type": t}, "data": 7})
        frame = await raw.read_until(b"\n\n", timeout=5)
        assert frame.startswith(b"id: ")
        assert frame.endswith(b'data: {"meta":{"type":"' + t.encode() + b'"},"data":7}\n\n')
    finally:
        raw.close()


async def test_debug_post_while_redis_is_down_is_503(
    redis_plasma: Callable[..., PlasmaProcess], redis_server: RedisServer
) -> None:
    process = redis_plasma(PLASMA_DEBUG="true")
    redis_server.stop()
    body = orjson.dumps({"meta": {"type": "x"}, "data": 1})
    result = http(process.url + "/debug", "POST", body)
    assert result.status == 503
    assert b"redis" in result.body
    assert http(process.url + "/hc").status == 500


def _head_fields(head: bytes) -> dict[str, str]:
    lines = head.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")[1:]
    fields = {}
    for line in lines:
        name, _, value = line.partition(":")
        fields[name.strip().lower()] = value.strip()
    fields.pop("date", None)
    fields.pop("server", None)
    return fields


async def test_fresh_and_kept_alive_streams_answer_alike(custom: PlasmaProcess) -> None:
    """The lean path (first request) and aiohttp (after a page load) send the same stream."""
    t = unique()
    request = (
        f"GET /?topics={t} HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n\r\n"
    ).encode()
    fresh = await RawSSE.open(custom.port, f"/?topics={t}")
    reader, writer = await asyncio.open_connection("127.0.0.1", custom.port)
    kept = RawSSE(reader, writer)
    try:
        writer.write(b"GET /hc HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        await kept.read_until(b"OK\n")
        kept.buffer = b""
        writer.write(request)
        for stream in (fresh, kept):
            await stream.read_until(b"retry: 1234\n\n\r\n")
        assert _head_fields(fresh.buffer) == _head_fields(kept.buffer)
        assert _head_fields(fresh.buffer) == {
            "content-type": "text/event-stream",
            "cache-control": "no-cache",
            "connection": "keep-alive",
            "x-accel-buffering": "no",
            "access-control-allow-origin": "https://app.example",
            "transfer-encoding": "chunked",
        }
        for stream in (fresh, kept):
            # The retry: chunk first (a 200 ms heartbeat may already follow it).
            assert stream.buffer.split(b"\r\n\r\n", 1)[1].startswith(b"d\r\nretry: 1234\n\n\r\n")
        post_event(custom.url, t, "both")
        for stream in (fresh, kept):
            await stream.read_until(b'"data":"both"}')
    finally:
        fresh.close()
        kept.close()
