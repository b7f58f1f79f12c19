"""A real browser EventSource, cut by a plasma restart, resumes by itself with no loss."""

from __future__ import annotations

import shutil
from collections.abc import Callable

import orjson
import pytest

from tests.support import CHROMIUM, CHROMIUM_ARGS, PlasmaProcess, RedisServer, wait_for

pytestmark = pytest.mark.integration


@pytest.mark.skipif(shutil.which("chromium") is None, reason="chromium missing: ./scripts/test")
async def test_eventsource_resumes_after_server_restart_without_loss(
    redis_plasma: Callable[..., PlasmaProcess], redis_server: RedisServer
) -> None:
    from playwright.async_api import async_playwright

    env = {
        "PLASMA_SUBSCRIBER_TYPE": "redis-stream",
        "PLASMA_SUBSCRIBER_REDIS_CHANNELS": "browser",
        "PLASMA_DEBUG": "true",
        "PLASMA_SSE_RETRY": "300",
    }
    server = redis_plasma(wait=False, **env)
    server.wait_ready()

    def reading(plasma: PlasmaProcess) -> None:
        """The stream source reads from the stream's tail once it is up: wait for that."""
        wait_for(lambda: plasma.metrics()["source_up"] == 1, what="the stream source to read")

    def add(n: int) -> None:
        with redis_server.client() as r:
            r.xadd("browser", {"event": orjson.dumps({"meta": {"type": "t"}, "data": {"n": n}})})

    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = await browser.new_page()
            await page.goto(server.url + "/debug")
            await page.evaluate(
                """() => {
                  window.got = []; window.opens = 0;
                  const es = new EventSource('/?eventType=t');
                  es.onopen = () => { window.opens += 1; };
                  es.onmessage = (m) => window.got.push(JSON.parse(m.data).data.n);
                }"""
            )
            await page.wait_for_function("window.opens === 1")
            reading(server)
            for n in range(5):
                add(n)
            await page.wait_for_function("window.got.length === 5")
            assert server.stop() == 0
            for n in range(5, 25):  # published while no plasma runs
                add(n)
            restarted = redis_plasma(wait=False, PLASMA_PORT=str(server.port), **env)
            restarted.wait_ready()
            await page.wait_for_function("window.opens === 2", timeout=15000)
            reading(restarted)
            for n in range(25, 31):
                add(n)
            # Anything delivered twice would come before the last event: the stream is ordered.
            await page.wait_for_function("window.got.includes(30)", timeout=15000)
            assert await page.evaluate("window.got") == list(range(31))
        finally:
            await browser.close()
