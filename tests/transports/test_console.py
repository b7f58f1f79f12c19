"""The /debug console in headless Chromium: live figures, who listens, publish, watch, gaps."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.support import (
    PlasmaProcess,
    RawSSE,
    http,
    post_event,
    scrape,
    value,
)

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
# docs/console.png is refreshed by a run with this set:
#   UPDATE_DOCS_SCREENSHOT=1 ./scripts/test -k console
SCREENSHOT_ENV = "UPDATE_DOCS_SCREENSHOT"


def console(plasma: Callable[..., PlasmaProcess], **env: str) -> PlasmaProcess:
    return plasma(PLASMA_DEBUG="true", PLASMA_SUBSCRIBER_MOCK_INTERVAL="1h", **env)


async def test_publish_from_the_form_shows_in_the_watch_pane(
    browser: Any, plasma: Callable[..., PlasmaProcess]
) -> None:
    server = console(plasma)
    page = await browser.new_page()
    await page.goto(server.url + "/debug")
    await page.fill("#types", "console")
    await page.click("#watch button[type=submit]")
    await page.wait_for_function(
        "document.getElementById('watch-status').textContent.startsWith('watching')"
    )
    # The original's instructions still fit: the publish field is labelled EventData.
    assert "EventData" in await page.inner_text("label[for=data]")
    await page.fill("#type", "console:form")
    await page.fill("#data", '{"hello": "console", "n": [1, 2]}')
    await page.click("#publish button[type=submit]")
    await page.wait_for_selector("#events li[data-type='console:form']", timeout=10000)
    item = await page.inner_text("#events li[data-type='console:form']")
    assert '"hello": "console"' in item  # pretty-printed data
    assert "id " in item
    assert "published" in await page.inner_text("#result")
    # A broken EventData is refused by the page itself, with a reason, and nothing is sent.
    before = server.metrics()["events_received"]
    await page.fill("#data", "{not json")
    await page.click("#publish button[type=submit]")
    assert "not valid JSON" in await page.inner_text("#result")
    assert server.metrics()["events_received"] == before
    await page.close()


async def test_charts_move_when_events_flow(
    browser: Any, plasma: Callable[..., PlasmaProcess]
) -> None:
    server = console(plasma)
    page = await browser.new_page()
    await page.goto(server.url + "/debug")
    stream = await RawSSE.open(server.port, "/?eventType=flow")
    try:
        # Published while the page samples: the rate charts get a non-zero point.
        for n in range(40):
            post_event(server.url, "flow:1", {"n": n})
            await asyncio.sleep(0.05)
        await page.wait_for_function(
            "document.querySelector('#chart-events-in polyline').getAttribute('points')"
            ".split(' ').some((p) => p && Number(p.split(',')[1]) < 99)",
            timeout=10000,
        )
        await page.wait_for_function(
            "document.querySelector('#chart-sse [data-value]').textContent === '1'",
            timeout=10000,
        )
        label = await page.get_attribute("#chart-deliveries svg", "aria-label")
        assert label is not None and label.startswith("deliveries /s")
        assert await page.inner_text("#chart-source [data-value]") == "up · 0 reconnects"
    finally:
        stream.close()
    await page.close()


async def test_top_types_lists_what_clients_subscribe_to(
    browser: Any, plasma: Callable[..., PlasmaProcess]
) -> None:
    server = console(plasma)
    streams = [
        await RawSSE.open(server.port, "/?eventType=user:42:notifications") for _ in range(3)
    ]
    streams.append(await RawSSE.open(server.port, "/?eventType=user:7"))
    try:
        page = await browser.new_page()
        await page.goto(server.url + "/debug")
        row = "#top-types tbody tr:has(code:text-is('user:42:notifications'))"
        await page.wait_for_selector(row, timeout=10000)
        assert (await page.inner_text(row + " td.n")).strip() == "3"
        tree = await page.inner_text("#type-tree")
        assert "user" in tree and "42" in tree and "notifications (3 here)" in tree
        # The type field suggests the live types.
        options = await page.eval_on_selector_all(
            "#known-types option", "os => os.map(o => o.value)"
        )
        assert "user:42:notifications" in options and "user:7" in options
        await page.close()
        # The same figure in /metrics: JSON and the Prometheus exposition (top types only).
        assert server.metrics()["subscribed_types"]["user:42:notifications"] == 3
        samples = scrape(server.url)
        assert value(samples, "plasma_type_subscribers", type="user:7") == 1
    finally:
        for stream in streams:
            stream.close()


async def test_a_gap_shows_as_a_gap_and_pause_resumes_from_the_last_id(
    browser: Any, plasma: Callable[..., PlasmaProcess]
) -> None:
    server = console(plasma, PLASMA_HISTORY_SIZE="3")
    page = await browser.new_page()
    await page.goto(server.url + "/debug")
    await page.fill("#types", "pause")
    await page.click("#watch button[type=submit]")
    await page.wait_for_function(
        "document.getElementById('watch-status').textContent.startsWith('watching')"
    )
    post_event(server.url, "pause:a", {"n": 0})
    await page.wait_for_selector("#events li[data-type='pause:a']", timeout=10000)

    # Paused, then resumed: what arrived meanwhile is replayed from history, once each.
    await page.click("#pause")
    assert await page.get_attribute("#pause", "aria-pressed") == "true"
    post_event(server.url, "pause:b", {"n": 1})
    await page.click("#pause")
    await page.wait_for_selector("#events li[data-type='pause:b']", timeout=10000)
    assert await page.locator("#events li.gap").count() == 0

    # Paused while more events pass than the history holds: resuming announces the gap.
    await page.click("#pause")
    for n in range(5):
        post_event(server.url, "pause:c", {"n": n})
    await page.click("#pause")
    await page.wait_for_selector("#events li.gap", timeout=10000)
    gap = await page.inner_text("#events li.gap")
    assert "GAP" in gap and "could not vouch" in gap
    assert await page.get_attribute("#events li.gap", "role") == "alert"
    assert await page.locator("#events li[data-type='pause:a']").count() == 1
    await page.wait_for_function(
        "document.querySelector('#chart-gaps [data-value]').textContent === '1'", timeout=10000
    )
    await page.close()


async def test_console_on_a_phone_screen_and_its_screenshot(
    browser: Any, plasma: Callable[..., PlasmaProcess], tmp_path: Path
) -> None:
    server = console(plasma)
    streams = [await RawSSE.open(server.port, f"/?eventType=program:{n % 3}") for n in range(6)]
    try:
        phone = await browser.new_page(viewport={"width": 390, "height": 844})
        await phone.goto(server.url + "/debug")
        # Nothing wider than the screen: no sideways scrolling on a phone.
        await phone.wait_for_selector("#top-types tbody tr:has(code)", timeout=10000)
        width = await phone.evaluate("document.documentElement.scrollWidth")
        assert width <= 390
        # Every form control has a label a screen reader can read.
        unlabelled = await phone.evaluate(
            "[...document.querySelectorAll('input, textarea')]"
            ".filter((e) => !document.querySelector(`label[for=${e.id}]`)).map((e) => e.id)"
        )
        assert unlabelled == []
        await phone.close()

        page = await browser.new_page(viewport={"width": 1280, "height": 1000})
        await page.goto(server.url + "/debug")
        await page.fill("#types", "program")
        await page.click("#watch button[type=submit]")
        for n in range(12):
            post_event(server.url, f"program:{n % 3}", {"views": n})
            await asyncio.sleep(0.25)
        await page.wait_for_selector("#events li[data-type='program:2']", timeout=10000)
        shot = tmp_path / "console.png"
        await page.screenshot(path=str(shot), full_page=True)
        assert shot.stat().st_size > 10_000
        if os.environ.get(SCREENSHOT_ENV):
            (ROOT / "docs" / "console.png").write_bytes(shot.read_bytes())
        await page.close()
    finally:
        for stream in streams:
            stream.close()


def test_stats_follow_the_debug_setting(plasma: Callable[..., PlasmaProcess]) -> None:
    off = plasma(PLASMA_SUBSCRIBER_MOCK_INTERVAL="1h")
    assert http(off.url + "/debug/stats").status == 404
    on = console(plasma)
    result = http(on.url + "/debug/stats")
    assert result.status == 200
    body = json.loads(result.body)
    assert body["gaps_sent"] == 0 and body["subscribed_types"] == {}
    assert http(on.url + "/debug/stats", method="POST").status == 405


def test_stats_need_the_debug_token_when_one_is_set(plasma: Callable[..., PlasmaProcess]) -> None:
    secret = "console-token-0123456789"
    server = console(plasma, PLASMA_DEBUG_TOKEN=secret)
    assert http(server.url + "/debug/stats").status == 401
    allowed = http(server.url + "/debug/stats", headers={"Authorization": f"Bearer {secret}"})
    assert allowed.status == 200
    assert secret.encode() not in http(server.url + "/debug/stats").body
