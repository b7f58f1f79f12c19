"""A real browser: headless Chromium's EventSource against plasma, same-origin and cross-origin."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from aiohttp import web

from tests.support import PlasmaProcess, free_port, post_event

pytestmark = pytest.mark.integration


# Opens an EventSource and resolves once it is open; messages collect in window.got.
OPEN_EVENT_SOURCE = """
(url) => new Promise((resolve, reject) => {
  window.got = [];
  window.errors = 0;
  const source = new EventSource(url);
  window.source = source;
  source.onmessage = (m) => window.got.push({id: m.lastEventId, data: m.data});
  source.onopen = () => resolve(source.readyState);
  source.onerror = () => {
    window.errors += 1;
    // CLOSED: the browser gave up on this source (e.g. refused by CORS); it will not retry.
    if (source.readyState === 2) reject(new Error("EventSource did not open: closed"));
  };
  setTimeout(() => reject(new Error("EventSource did not open; errors: " + window.errors)), 10000);
})
"""


async def test_same_origin_event_source_from_the_debug_page(
    browser: Any, plasma: Callable[..., PlasmaProcess]
) -> None:
    server = plasma(PLASMA_DEBUG="true", PLASMA_SUBSCRIBER_MOCK_INTERVAL="1h")
    page = await browser.new_page()
    response = await page.goto(server.url + "/debug")
    assert response is not None and response.status == 200
    # Opened right after the page load, so Chromium reuses the kept-alive connection.
    assert await page.evaluate(OPEN_EVENT_SOURCE, "/?eventType=browser") == 1
    # Publish with the page's own form, as a person would.
    await page.fill("#type", "browser:same")
    await page.fill("#data", '{"hello": "chromium", "n": [1, 2]}')
    await page.click("#publish button[type=submit]")
    await page.wait_for_function("window.got.length >= 1", timeout=10000)
    got = await page.evaluate("window.got")
    assert got[0]["id"]
    assert json.loads(got[0]["data"]) == {
        "meta": {"type": "browser:same"},
        "data": {"hello": "chromium", "n": [1, 2]},
    }
    assert "published" in await page.inner_text("#result")
    await page.close()


async def test_cross_origin_event_source(
    browser: Any, plasma: Callable[..., PlasmaProcess]
) -> None:
    page_port = free_port()
    origin = f"http://127.0.0.1:{page_port}"
    allowed = plasma(
        PLASMA_DEBUG="true", PLASMA_SUBSCRIBER_MOCK_INTERVAL="1h", PLASMA_ORIGIN=origin
    )
    elsewhere = plasma(
        PLASMA_DEBUG="true",
        PLASMA_SUBSCRIBER_MOCK_INTERVAL="1h",
        PLASMA_ORIGIN="http://127.0.0.1:1",
    )

    async def index(request: web.Request) -> web.Response:
        return web.Response(
            text="<!doctype html><title>app</title><p>app</p>", content_type="text/html"
        )

    app = web.Application()
    app.router.add_get("/", index)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", page_port)
    await site.start()
    try:
        page = await browser.new_page()
        await page.goto(origin + "/")
        url = allowed.url + "/?eventType=cors"
        assert await page.evaluate(OPEN_EVENT_SOURCE, url) == 1
        post_event(allowed.url, "cors:1", {"from": "another origin"})
        await page.wait_for_function("window.got.length >= 1", timeout=10000)
        got = await page.evaluate("window.got")
        assert json.loads(got[0]["data"])["data"] == {"from": "another origin"}

        # A server that allows a different origin: the browser refuses the stream.
        await page.evaluate("window.source.close()")
        with pytest.raises(Exception, match="did not open"):
            await page.evaluate(OPEN_EVENT_SOURCE, elsewhere.url + "/?eventType=cors")
        assert await page.evaluate("window.got.length") == 0
        await page.close()
    finally:
        await runner.cleanup()
