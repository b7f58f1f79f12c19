"""The publish endpoint's access-control seam, in-process over real HTTP: a refusal stops the
batch before the source sees any of it, and the check sees every event's type."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence

import aiohttp
import orjson
import pytest
from aiohttp import web, web_server

from plasma.metrics import Metrics
from plasma.transports.http.publish import PublishEndpoint, allow_all

Published = list[tuple[list[bytes], str | None]]


async def serve(endpoint: PublishEndpoint) -> AsyncIterator[str]:
    """Yields the URL once, serving ``endpoint`` on a free loopback port meanwhile."""
    server = web_server.Server(endpoint.handle)
    listener = await asyncio.get_running_loop().create_server(server, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}/publish"
    finally:
        listener.close()
        await server.shutdown(1)


def endpoint(published: Published, authorize: object = allow_all) -> PublishEndpoint:
    async def publish_many(raws: list[bytes], channel: str | None) -> list[str | None]:
        published.append((raws, channel))
        return [f"id-{i}" for i in range(len(raws))]

    return PublishEndpoint(
        publish_many,
        path="/publish",
        max_body=1 << 16,
        max_event_bytes=1 << 16,
        channels=("events",),
        body_timeout=5,
        retry_after=1,
        metrics=Metrics(),
        authorize=authorize,  # type: ignore[arg-type]
    )


@pytest.fixture
def published() -> Published:
    return []


async def post(url: str, body: object) -> tuple[int, object]:
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            url, data=orjson.dumps(body), headers={"Content-Type": "application/json"}
        ) as response,
    ):
        return response.status, orjson.loads(await response.read())


BATCH = [{"meta": {"type": "user:42:x"}, "data": 1}, {"meta": {"type": "user:7:y"}, "data": 2}]


async def test_a_refusal_publishes_nothing(published: Published) -> None:
    seen: list[list[str]] = []

    def authorize(request: web.BaseRequest, types: Sequence[str]) -> web.Response | None:
        seen.append(list(types))
        if all(t.startswith("user:42") for t in types):
            return None
        return web.json_response({"error": "not yours"}, status=403)

    edge = endpoint(published, authorize)
    assert not edge.open_to_all
    async for url in serve(edge):
        assert await post(url, BATCH) == (403, {"error": "not yours"})
        assert published == []
        assert await post(url, BATCH[:1]) == (200, {"published": 1, "ids": ["id-0"]})
    assert seen == [["user:42:x", "user:7:y"], ["user:42:x"]]
    assert len(published) == 1


async def test_without_a_check_anyone_may_publish(published: Published) -> None:
    edge = endpoint(published)
    assert edge.open_to_all
    async for url in serve(edge):
        assert (await post(url, BATCH))[0] == 200
    assert [len(raws) for raws, _ in published] == [2]
