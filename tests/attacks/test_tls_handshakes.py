"""TLS handshakes that never finish: bounded in number, and their memory returns afterwards.

2,000 connections that open TLS and send half a ClientHello (or nothing) must neither keep
memory once they are gone nor take more than their share while they last: the server caps
connections still in their handshake and gives the memory of failed handshakes back.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.attacks.harness import MAX_RSS_GROWTH, Canaries, MemoryWatch, rss
from tests.support import PlasmaProcess, RedisServer, start_redis_plasma, wait_for
from tests.transports.test_tls import Certs

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return Certs(tmp_path_factory.mktemp("certs"))


@pytest.fixture(scope="module")
def ca_file(certs: Certs, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("ca") / "ca.pem"
    path.write_bytes(certs.root)
    return path


@pytest.fixture(scope="module")
def server(redis_module: RedisServer, certs: Certs) -> Iterator[PlasmaProcess]:
    process = start_redis_plasma(redis_module, PLASMA_HEADER_TIMEOUT="2s", **certs.env())
    yield process
    assert process.stop() == 0


def half_client_hello(certs: Certs) -> bytes:
    """The first half of the ClientHello a real client sends."""
    outgoing = ssl.MemoryBIO()
    tls = certs.client_context().wrap_bio(ssl.MemoryBIO(), outgoing, server_hostname="localhost")
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    hello = outgoing.read()
    return hello[: len(hello) // 2]


async def _stall(port: int, first: bytes, hold: float) -> None:
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return  # refused or reset: the cap at work
    if first:
        writer.write(first)
    await asyncio.sleep(hold)
    writer.close()


async def test_stalled_handshakes_are_capped_and_their_memory_returns(
    server: PlasmaProcess, redis_module: RedisServer, certs: Certs, ca_file: Path
) -> None:
    hello = half_client_hello(certs)
    pid = server.proc.pid
    canaries = Canaries(server, redis_module, ca_file=str(ca_file))
    with canaries, MemoryWatch(pid) as memory:
        for first in (hello, b"", hello):
            await asyncio.gather(*(_stall(server.port, first, 1.5) for _ in range(2000)))
    canaries.assert_on_time()
    memory.assert_bounded()
    # Once the attack is over, what it cost is given back.
    wait_for(
        lambda: rss(pid) - memory.baseline <= MAX_RSS_GROWTH // 4,
        timeout=5,
        what="the memory of the failed handshakes to return",
    )
