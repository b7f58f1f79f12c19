"""Shared fixtures: a clean environment, a real redis-server, and a factory of plasma processes."""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, settings

from tests.support import (
    CHROMIUM,
    CHROMIUM_ARGS,
    PlasmaProcess,
    RedisServer,
    redis_env,
    wait_subscribed,
)

# Property tests: a few hundred examples in the normal suite; `--hypothesis-profile=fuzz` is
# the long fuzz run (see tests/test_fuzz.py).
settings.register_profile("default", max_examples=200, deadline=None)
settings.register_profile(
    "fuzz", max_examples=30_000, deadline=None, suppress_health_check=list(HealthCheck)
)
settings.load_profile("default")


@pytest.fixture(autouse=True)
def _clean_plasma_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No test sees PLASMA_* settings from the shell that started pytest."""
    for name in list(os.environ):
        if name.startswith("PLASMA_"):
            monkeypatch.delenv(name)


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    """Headless Chromium (Debian's), driven by Playwright."""
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"{CHROMIUM} is not installed (./scripts/test installs Debian's chromium)")
    from playwright.async_api import async_playwright

    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            await browser.close()


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer().start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def redis_module() -> Iterator[RedisServer]:
    """One redis-server shared by a module's tests (for modules that keep one plasma too)."""
    server = RedisServer().start()
    yield server
    server.stop()


@pytest.fixture
def plasma() -> Iterator[Callable[..., PlasmaProcess]]:
    """``plasma(PLASMA_X="y", ...)`` starts a server and waits until its port accepts."""
    started: list[PlasmaProcess] = []

    def start(wait: bool = True, **env: str) -> PlasmaProcess:
        process = PlasmaProcess(env=env).start(wait=wait)
        started.append(process)
        return process

    yield start
    for process in started:
        with contextlib.suppress(AssertionError):
            process.stop()


@pytest.fixture
def redis_plasma(
    redis_server: RedisServer, plasma: Callable[..., PlasmaProcess]
) -> Callable[..., PlasmaProcess]:
    """Like ``plasma`` but reading channel ``events`` of the test's redis-server by default."""

    def start(wait: bool = True, **env: str) -> PlasmaProcess:
        settings = redis_env(redis_server, **env)
        process = plasma(wait=wait, **settings)
        if wait:
            wait_subscribed(redis_server, settings)
        return process

    return start
