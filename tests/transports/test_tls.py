"""TLS on the one port: ALPN ``h2`` reaches gRPC, ``http/1.1`` reaches SSE and the meta endpoints.

Certificates are made per test module with ``trustme``. Browsers offer both protocols and get
HTTP/1.1 (the server's order wins), which a headless Chromium checks with a real EventSource.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest
import trustme

from tests.support import (
    CHROMIUM,
    CHROMIUM_ARGS,
    PlasmaProcess,
    RedisServer,
    SSEStream,
    start_redis_plasma,
)
from tests.transports.test_grpc import event, next_payload, stubs, subscribe

__all__ = ["stubs"]  # the session fixture, imported for this module's tests

pytestmark = pytest.mark.integration


class Certs:
    """A throw-away CA and a server certificate for localhost / 127.0.0.1, as PEM files."""

    def __init__(self, directory: Path) -> None:
        self.ca = trustme.CA()
        server = self.ca.issue_cert("localhost", "127.0.0.1")
        self.cert = directory / "cert.pem"
        self.key = directory / "key.pem"
        server.private_key_and_cert_chain_pem.write_to_path(str(self.cert))
        server.private_key_pem.write_to_path(str(self.key))
        # private_key_and_cert_chain_pem holds the key too; keep the cert file to certificates
        self.cert.write_bytes(b"".join(blob.bytes() for blob in server.cert_chain_pems))
        self.root = self.ca.cert_pem.bytes()

    def client_context(self, alpn: list[str] | None = None) -> ssl.SSLContext:
        context = ssl.create_default_context(cadata=self.root.decode())
        if alpn:
            context.set_alpn_protocols(alpn)
        return context

    def env(self) -> dict[str, str]:
        return {"PLASMA_TLS_CERT_FILE": str(self.cert), "PLASMA_TLS_KEY_FILE": str(self.key)}


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return Certs(tmp_path_factory.mktemp("certs"))


@pytest.fixture(scope="module")
def redis_module() -> Iterator[RedisServer]:
    server = RedisServer().start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def tls_server(redis_module: RedisServer, certs: Certs) -> Iterator[PlasmaProcess]:
    process = start_redis_plasma(redis_module, PLASMA_DEBUG="true", **certs.env())
    yield process
    process.stop()


@pytest.fixture
async def secure_channel(tls_server: PlasmaProcess, certs: Certs) -> AsyncIterator[Any]:
    credentials = grpc.ssl_channel_credentials(root_certificates=certs.root)
    async with grpc.aio.secure_channel(f"localhost:{tls_server.port}", credentials) as ch:
        yield ch


def negotiated(port: int, certs: Certs, offer: list[str]) -> str | None:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        context = certs.client_context(offer)
        with context.wrap_socket(raw, server_hostname="localhost") as tls:
            return tls.selected_alpn_protocol()


def test_alpn_gives_browsers_http11_and_grpc_h2(tls_server: PlasmaProcess, certs: Certs) -> None:
    assert negotiated(tls_server.port, certs, ["h2", "http/1.1"]) == "http/1.1"
    assert negotiated(tls_server.port, certs, ["h2"]) == "h2"
    assert negotiated(tls_server.port, certs, ["http/1.1"]) == "http/1.1"


async def test_grpc_and_https_sse_share_the_tls_port(
    tls_server: PlasmaProcess,
    redis_module: RedisServer,
    certs: Certs,
    secure_channel: Any,
    stubs: Any,
) -> None:
    connector = aiohttp.TCPConnector(ssl=certs.client_context())
    async with aiohttp.ClientSession(connector=connector) as session:
        url = f"https://localhost:{tls_server.port}/"
        sse = await SSEStream.open(url, "secure", session=session)
        try:
            await sse.wait_retry()
            call = await subscribe(secure_channel, stubs, "secure")
            redis_module.publish("events", event("secure:tls", {"ok": True}))
            payload = await next_payload(call)
            assert (payload.eventType.type, payload.data) == ("secure:tls", '{"ok":true}')
            assert (await sse.next_event()).json() == event("secure:tls", {"ok": True})
            call.cancel()
        finally:
            await sse.close()


async def test_sse_over_https_in_headless_chromium(
    tls_server: PlasmaProcess, redis_module: RedisServer
) -> None:
    playwright = pytest.importorskip("playwright.async_api")
    if not Path(CHROMIUM).exists():
        pytest.skip("Debian chromium is not installed")
    async with playwright.async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            context = await browser.new_context(ignore_https_errors=True)
            page = await context.new_page()
            response = await page.goto(f"https://127.0.0.1:{tls_server.port}/hc")
            assert response is not None and response.status == 200
            protocol = await page.evaluate(
                "performance.getEntriesByType('navigation')[0].nextHopProtocol"
            )
            assert protocol == "http/1.1"  # Chromium offered h2 too
            opened = await page.evaluate(
                """() => new Promise((resolve) => {
                    window.received = [];
                    const source = new EventSource('/?eventType=browser');
                    source.onmessage = (e) => window.received.push(e.data);
                    source.onopen = () => resolve('open');
                    source.onerror = () => resolve('error');
                })"""
            )
            assert opened == "open"
            redis_module.publish("events", event("browser:tab", "hello"))
            handle = await page.wait_for_function(
                "window.received.length > 0 && window.received[0]", timeout=10_000
            )
            assert await handle.json_value() == '{"meta":{"type":"browser:tab"},"data":"hello"}'
        finally:
            await browser.close()


# --- start-up errors --------------------------------------------------------------------------


def _fails_to_start(plasma: Callable[..., PlasmaProcess], **env: str) -> str:
    process = plasma(wait=False, **env)
    assert process.proc is not None
    code = process.proc.wait(15)
    assert code != 0
    return process.output()


def test_cert_without_key_names_the_missing_variable(
    plasma: Callable[..., PlasmaProcess], certs: Certs
) -> None:
    assert "PLASMA_TLS_KEY_FILE" in _fails_to_start(plasma, PLASMA_TLS_CERT_FILE=str(certs.cert))
    assert "PLASMA_TLS_CERT_FILE" in _fails_to_start(plasma, PLASMA_TLS_KEY_FILE=str(certs.key))


def test_unreadable_files_name_their_variable(
    plasma: Callable[..., PlasmaProcess], certs: Certs, tmp_path: Path
) -> None:
    missing = str(tmp_path / "missing.pem")
    output = _fails_to_start(
        plasma, PLASMA_TLS_CERT_FILE=missing, PLASMA_TLS_KEY_FILE=str(certs.key)
    )
    assert "PLASMA_TLS_CERT_FILE" in output and "missing.pem" in output
    output = _fails_to_start(
        plasma, PLASMA_TLS_CERT_FILE=str(certs.cert), PLASMA_TLS_KEY_FILE=str(tmp_path)
    )
    assert "PLASMA_TLS_KEY_FILE" in output


def test_a_key_that_does_not_match_the_certificate_is_a_startup_error(
    plasma: Callable[..., PlasmaProcess], certs: Certs, tmp_path: Path
) -> None:
    other = trustme.CA().issue_cert("localhost")
    other_key = tmp_path / "other-key.pem"
    other.private_key_pem.write_to_path(str(other_key))
    output = _fails_to_start(
        plasma, PLASMA_TLS_CERT_FILE=str(certs.cert), PLASMA_TLS_KEY_FILE=str(other_key)
    )
    assert "PLASMA_TLS_KEY_FILE" in output


async def test_a_silent_tls_client_does_not_block_others(
    tls_server: PlasmaProcess, secure_channel: Any, stubs: Any
) -> None:
    _reader, writer = await asyncio.open_connection("127.0.0.1", tls_server.port)
    try:
        writer.write(b"\x16\x03\x01")  # the start of a ClientHello, then nothing
        call = await subscribe(secure_channel, stubs, "while:silent")
        call.cancel()
    finally:
        writer.close()
