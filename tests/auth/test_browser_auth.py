"""A real browser: headless Chromium's EventSource carrying its token in a cookie."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import orjson
import pytest
from aiohttp import web

from tests.auth.keyring import SECRET, mint
from tests.support import PlasmaProcess, free_port, http

pytestmark = pytest.mark.integration

# Opens an EventSource (with credentials) and resolves once open; messages collect in window.got.
OPEN_WITH_CREDENTIALS = """
(url) => new Promise((resolve, reject) => {
  window.got = [];
  const source = new EventSource(url, { withCredentials: true });
  window.source = source;
  source.onmessage = (m) => window.got.push(m.data);
  source.onopen = () => resolve(source.readyState);
  source.onerror = () => {
    if (source.readyState === 2) reject(new Error("EventSource did not open: closed"));
  };
  setTimeout(() => reject(new Error("EventSource did not open")), 10000);
})
"""


def token(publish: bool = False) -> str:
    grant = {"subscribe": ["user:42"], "publish": ["user:42"] if publish else []}
    return mint(SECRET, "HS256", {"sub": "42", "plasma": grant})


def publish(server: PlasmaProcess, data: Any) -> None:
    body = orjson.dumps({"meta": {"type": "user:42:notifications"}, "data": data})
    result = http(
        server.url + "/debug", "POST", body, {"Authorization": f"Bearer {token(publish=True)}"}
    )
    assert result.status == 200, result.body


async def test_same_origin_event_source_with_a_cookie(
    browser: Any, plasma: Callable[..., PlasmaProcess]
) -> None:
    server = plasma(
        PLASMA_AUTH_JWT_SECRET=SECRET, PLASMA_DEBUG="true", PLASMA_SUBSCRIBER_MOCK_INTERVAL="1h"
    )
    context = await browser.new_context()
    try:
        page = await context.new_page()
        await page.goto(server.url + "/hc")
        # Without the cookie the stream is refused (401), and EventSource gives up.
        with pytest.raises(Exception, match="did not open"):
            await page.evaluate(OPEN_WITH_CREDENTIALS, "/?eventType=user:42")
        await context.add_cookies(
            [{"name": "plasmaAuthorization", "value": token(), "url": server.url}]
        )
        assert await page.evaluate(OPEN_WITH_CREDENTIALS, "/?eventType=user:42") == 1
        publish(server, {"hello": "cookie"})
        await page.wait_for_function("window.got.length >= 1", timeout=10000)
        got = await page.evaluate("window.got")
        assert json.loads(got[0])["data"] == {"hello": "cookie"}
    finally:
        await context.close()


async def test_cross_origin_event_source_with_credentials(
    browser: Any, plasma: Callable[..., PlasmaProcess]
) -> None:
    page_port = free_port()
    origin = f"http://127.0.0.1:{page_port}"
    server = plasma(
        PLASMA_AUTH_JWT_SECRET=SECRET,
        PLASMA_DEBUG="true",
        PLASMA_SUBSCRIBER_MOCK_INTERVAL="1h",
        PLASMA_ORIGIN=origin,
    )

    async def index(request: web.Request) -> web.Response:
        return web.Response(text="<!doctype html><p>app</p>", content_type="text/html")

    app = web.Application()
    app.router.add_get("/", index)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", page_port).start()
    context = await browser.new_context()
    try:
        # Cookies belong to the host, not the port: the app's page and plasma share it.
        await context.add_cookies(
            [{"name": "plasmaAuthorization", "value": token(), "url": origin}]
        )
        page = await context.new_page()
        await page.goto(origin + "/")
        url = server.url + "/?eventType=user:42"
        assert await page.evaluate(OPEN_WITH_CREDENTIALS, url) == 1
        publish(server, {"from": "another origin"})
        await page.wait_for_function("window.got.length >= 1", timeout=10000)
        got = await page.evaluate("window.got")
        assert json.loads(got[0])["data"] == {"from": "another origin"}
    finally:
        await context.close()
        await runner.cleanup()


async def test_the_debug_page_publishes_and_watches_with_a_token(
    browser: Any, plasma: Callable[..., PlasmaProcess]
) -> None:
    server = plasma(
        PLASMA_AUTH_JWT_SECRET=SECRET, PLASMA_DEBUG="true", PLASMA_SUBSCRIBER_MOCK_INTERVAL="1h"
    )
    page = await browser.new_page()
    try:
        await page.goto(server.url + "/debug")
        await page.fill("#type", "user:42:notifications")
        await page.click("#publish button[type=submit]")
        await page.wait_for_function("document.querySelector('#result').textContent !== ''")
        assert (await page.inner_text("#result")).startswith("401")
        await page.fill("#token", token(publish=True))
        await page.fill("#types", "user:42")
        await page.click("#watch button[type=submit]")
        await page.wait_for_function(
            "document.querySelector('#watch-status').textContent.startsWith('watching')"
        )
        await page.fill("#data", '{"from": "the page"}')
        await page.click("#publish button[type=submit]")
        await page.wait_for_selector("#events li[data-type='user:42:notifications']")
        assert "the page" in await page.inner_text("#events")
        assert (await page.inner_text("#result")).startswith("published")
    finally:
        await page.close()
