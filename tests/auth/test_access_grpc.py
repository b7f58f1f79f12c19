"""Access control over gRPC: real grpcio clients, the token as call credentials or metadata."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from tests.auth.keyring import SECRET, mint
from tests.support import PlasmaProcess, RedisServer, start_redis_plasma
from tests.transports.test_grpc import (
    V2Client,
    event,
    next_payload,
    publish_until,
    request,
    stubs,
    v2_stub_dir,
)

__all__ = ["stubs", "v2_stub_dir"]  # fixtures shared with test_grpc, imported for this module

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def server(redis_module: RedisServer) -> Iterator[PlasmaProcess]:
    process = start_redis_plasma(
        redis_module,
        PLASMA_AUTH_JWT_SECRET=SECRET,
        PLASMA_AUTH_PUBLIC_TYPES="news",
        PLASMA_AUTH_JWT_LEEWAY="0",
    )
    yield process
    process.stop()


def token(subscribe: tuple[str, ...] = ("user:42",), **claims: Any) -> str:
    return mint(SECRET, "HS256", {"sub": "42", "plasma": {"subscribe": list(subscribe)}, **claims})


def with_call_credentials(server: PlasmaProcess, jwt: str) -> grpc.aio.Channel:
    """A channel whose every call carries ``authorization: Bearer <jwt>``, as grpcio sends it.

    grpcio attaches call credentials only to a channel it considers secure; local (loopback)
    credentials are, without TLS.
    """
    credentials = grpc.composite_channel_credentials(
        grpc.local_channel_credentials(grpc.LocalConnectionType.LOCAL_TCP),
        grpc.access_token_call_credentials(jwt),
    )
    return grpc.aio.secure_channel(f"127.0.0.1:{server.port}", credentials)


@pytest.fixture
async def plain(server: PlasmaProcess) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        yield channel


async def ended(call: Any) -> tuple[grpc.StatusCode, str]:
    """How a call ended: read to its end (an error status is what ends it), then its status."""
    try:
        while await call.read() is not grpc.aio.EOF:
            pass
    except grpc.aio.AioRpcError:
        pass
    return await call.code(), await call.details()


async def test_call_credentials_subscribe(
    server: PlasmaProcess, redis_module: RedisServer, stubs: Any
) -> None:
    async with with_call_credentials(server, token()) as channel:
        call = stubs.grpc.StreamServiceStub(channel).Events(request(stubs, "user:42"))
        await call.initial_metadata()
        redis_module.publish("events", event("user:42:notifications", {"n": 1}))
        payload = await next_payload(call)
        assert payload.eventType.type == "user:42:notifications"
        call.cancel()


async def test_metadata_token_and_public_types(
    server: PlasmaProcess, redis_module: RedisServer, stubs: Any, plain: grpc.aio.Channel
) -> None:
    stub = stubs.grpc.StreamServiceStub(plain)
    call = stub.Events(
        request(stubs, "user:42", "news"), metadata=[("authorization", f"Bearer {token()}")]
    )
    await call.initial_metadata()
    public = stub.Events(request(stubs, "news"))  # no token needed
    await public.initial_metadata()
    redis_module.publish("events", event("news", "headline"))
    assert (await next_payload(call)).eventType.type == "news"
    assert (await next_payload(public)).eventType.type == "news"
    call.cancel()
    public.cancel()


async def test_refusals(server: PlasmaProcess, stubs: Any, plain: grpc.aio.Channel) -> None:
    stub = stubs.grpc.StreamServiceStub(plain)
    before = server.metrics()["auth_failures_by_reason"]
    code, details = await ended(stub.Events(request(stubs, "user:42")))
    assert code == grpc.StatusCode.UNAUTHENTICATED and "'user:42'" in details
    expired = token(exp=int(time.time()) - 10)
    code, details = await ended(
        stub.Events(request(stubs, "user:42"), metadata=[("authorization", f"Bearer {expired}")])
    )
    assert (code, details) == (grpc.StatusCode.UNAUTHENTICATED, "token expired")
    forged = mint("f" * 40, "HS256", {"plasma": {"subscribe": ["*"]}})
    code, details = await ended(
        stub.Events(request(stubs, "user:42"), metadata=[("authorization", f"Bearer {forged}")])
    )
    assert code == grpc.StatusCode.UNAUTHENTICATED and forged[-20:] not in details
    code, details = await ended(
        stub.Events(
            request(stubs, "user:42", "user"), metadata=[("authorization", f"Bearer {token()}")]
        )
    )
    assert code == grpc.StatusCode.PERMISSION_DENIED and "'user'" in details
    after = server.metrics()["auth_failures_by_reason"]
    for reason in ("missing", "expired", "signature", "forbidden"):
        assert after[reason] == before.get(reason, 0) + 1, reason


async def test_a_call_ends_when_its_token_expires(
    server: PlasmaProcess, redis_module: RedisServer, stubs: Any, plain: grpc.aio.Channel
) -> None:
    exp = int(time.time()) + 6  # room for a busy machine to deliver the first event
    jwt = token(subscribe=("user:7",), exp=exp)
    call = stubs.grpc.StreamServiceStub(plain).Events(
        request(stubs, "user:7"), metadata=[("authorization", f"Bearer {jwt}")]
    )
    await call.initial_metadata()
    redis_module.publish("events", event("user:7", "before exp"))
    assert (await next_payload(call)).data == '"before exp"'
    assert await ended(call) == (grpc.StatusCode.UNAUTHENTICATED, "token expired")
    assert time.time() >= exp - 0.05


async def test_a_refused_resubscription_ends_the_stream(
    server: PlasmaProcess, redis_module: RedisServer, v2_stub_dir: Path
) -> None:
    client = await V2Client.start(v2_stub_dir, server.port, token(subscribe=("user:42", "a")))
    try:
        client.send("user:42")
        assert await client.next() == {"ready": True}
        redis_module.publish("events", event("user:42", 1))
        assert await client.next_type() == "user:42"
        client.send("a")  # allowed: replaces the subscription
        await publish_until(redis_module, client, "a", "user:42")
        client.send("a", "user:43")  # not allowed: the stream ends, nothing subscribed
        while "status" not in (last := await client.next()):
            pass
        assert last["status"] == "PERMISSION_DENIED"
        assert "'user:43'" in last["details"]
    finally:
        await client.close()
