"""gRPC Events on the shared port: real grpcio clients with stubs built from the shipped .protos.

The 2017 interface (``stream.proto``) is used in this process with ``grpc.aio``. The
bidirectional interface (``stream_v2.proto``) declares the same protobuf package, so its client
runs in a child process (``V2Client``), as a separate application would.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import grpc
import pytest

from plasma.events import Event
from plasma.transports.grpc import proto as grpc_proto
from plasma.transports.grpc.events import encode_payload
from tests.support import (
    PlasmaProcess,
    RedisServer,
    SSEStream,
    async_wait_for,
    start_redis_plasma,
    wait_for,
)

pytestmark = pytest.mark.integration

PROTO_DIR = Path(__file__).resolve().parents[2] / "src" / "plasma" / "transports" / "grpc"


# --- helpers shared with test_grpc_extras.py and test_tls.py -------------------------------------


def protoc(out: Path, proto: str) -> None:
    """Generate Python messages and grpcio stubs for one shipped .proto into ``out``."""
    from grpc_tools import protoc as grpc_protoc

    args = [
        "protoc",
        f"-I{PROTO_DIR}",
        f"--python_out={out}",
        f"--grpc_python_out={out}",
        str(PROTO_DIR / proto),
    ]
    if grpc_protoc.main(args) != 0:
        raise AssertionError(f"protoc failed for {proto}")


@pytest.fixture(scope="session")
def stubs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimpleNamespace]:
    """``stream_pb2`` / ``stream_pb2_grpc`` generated from the shipped 2017 ``stream.proto``."""
    out = tmp_path_factory.mktemp("stubs-v1")
    protoc(out, "stream.proto")
    sys.path.insert(0, str(out))
    try:
        pb = importlib.import_module("stream_pb2")
        pb_grpc = importlib.import_module("stream_pb2_grpc")
        yield SimpleNamespace(pb=pb, grpc=pb_grpc)
    finally:
        sys.path.remove(str(out))


@pytest.fixture(scope="session")
def v2_stub_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("stubs-v2")
    protoc(out, "stream_v2.proto")
    return out


def request(stubs: SimpleNamespace, *types: str, last_event_id: str = "") -> Any:
    return stubs.pb.Request(
        Events=[stubs.pb.EventType(type=t) for t in types], lastEventId=last_event_id
    )


def event(type: str, data: Any = None) -> dict[str, Any]:
    return {"meta": {"type": type}, "data": data}


async def next_payload(call: Any, timeout: float = 5.0) -> Any:
    message = await asyncio.wait_for(call.read(), timeout)
    if message is grpc.aio.EOF:
        raise AssertionError(f"stream ended: {await call.code()} {await call.details()}")
    return message


async def subscribe(
    channel: grpc.aio.Channel, stubs: SimpleNamespace, *types: str, **kw: str
) -> Any:
    """Open an Events call and wait for its headers: plasma sends them once it has subscribed."""
    call = stubs.grpc.StreamServiceStub(channel).Events(request(stubs, *types, **kw))
    await asyncio.wait_for(call.initial_metadata(), 5)
    return call


# --- fixtures for this module ------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(redis_module: RedisServer) -> Iterator[PlasmaProcess]:
    process = start_redis_plasma(redis_module)
    yield process
    process.stop()


@pytest.fixture
async def channel(server: PlasmaProcess) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as ch:
        yield ch


# --- the 2017 interface --------------------------------------------------------------------------


async def test_grpc_and_sse_clients_share_one_port(
    server: PlasmaProcess, redis_module: RedisServer, channel: grpc.aio.Channel, stubs: Any
) -> None:
    sse = await SSEStream.open(server.url + "/", "program:1234")
    try:
        await sse.wait_retry()
        call = await subscribe(channel, stubs, "program:1234:views", "other")
        redis_module.publish("events", event("program:1234:views", {"v": 1}))
        redis_module.publish("events", event("other", "a string keeps its quotes"))
        first = await next_payload(call)
        second = await next_payload(call)
        from_sse = await sse.next_event()
        assert first.eventType.type == "program:1234:views"
        assert first.data == '{"v":1}'
        assert first.id == from_sse.id  # one id per event, whichever the transport
        assert from_sse.json() == event("program:1234:views", {"v": 1})
        assert second.eventType.type == "other"
        assert second.data == '"a string keeps its quotes"'
        call.cancel()
    finally:
        await sse.close()


async def test_types_match_whole_colon_segments_and_each_event_arrives_once(
    redis_module: RedisServer, channel: grpc.aio.Channel, stubs: Any
) -> None:
    parent = await subscribe(channel, stubs, "a", "a:b")  # overlapping: still once per event
    child = await subscribe(channel, stubs, "a:b")
    for t in ("a:bc", "a:b:c", "ab", "a:b", "end"):
        redis_module.publish("events", event(t))
    assert [(await next_payload(parent)).eventType.type for _ in range(3)] == [
        "a:bc",
        "a:b:c",
        "a:b",
    ]
    assert [(await next_payload(child)).eventType.type for _ in range(2)] == ["a:b:c", "a:b"]
    redis_module.publish("events", event("a:b:end"))
    assert (await next_payload(parent)).eventType.type == "a:b:end"  # "ab" never came
    assert (await next_payload(child)).eventType.type == "a:b:end"  # nor "a:bc"
    parent.cancel()
    child.cancel()


@pytest.mark.parametrize(
    ("types", "message"),
    [((), "no event type requested"), (("bad type",), "spaces"), (("",), "no event type")],
)
async def test_an_invalid_type_list_is_invalid_argument(
    channel: grpc.aio.Channel, stubs: Any, types: tuple[str, ...], message: str
) -> None:
    call = stubs.grpc.StreamServiceStub(channel).Events(request(stubs, *types))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await asyncio.wait_for(call.read(), 5)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in (caught.value.details() or "")


async def test_cancel_removes_the_subscriber_at_once(
    server: PlasmaProcess, channel: grpc.aio.Channel, stubs: Any
) -> None:
    before = server.metrics()["connections_grpc"]
    call = await subscribe(channel, stubs, "cancel:me")
    metrics = server.metrics()
    assert metrics["connections_grpc"] == before + 1
    assert metrics["connections"] >= metrics["connections_grpc"]
    call.cancel()
    await async_wait_for(
        lambda: server.metrics()["connections_grpc"] == before, 5, what="the stream to close"
    )
    line = await async_wait_for(
        lambda: [
            e
            for e in server.log_lines()
            if e.get("transport") == "grpc" and e.get("types") == ["cancel:me"]
        ],
        5,
        what="the access-log line",
    )
    assert line[0]["reason"] == "client"
    assert line[0]["path"] == "/proto.StreamService/Events"


async def test_closing_the_connection_removes_the_subscriber(
    server: PlasmaProcess, stubs: Any
) -> None:
    before = server.metrics()["connections_grpc"]
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as ch:
        await subscribe(ch, stubs, "gone")
        assert server.metrics()["connections_grpc"] == before + 1
    await async_wait_for(lambda: server.metrics()["connections_grpc"] == before, 5)


async def test_a_burst_larger_than_the_flow_control_window_arrives_whole_and_in_order(
    redis_module: RedisServer, channel: grpc.aio.Channel, stubs: Any
) -> None:
    call = await subscribe(channel, stubs, "burst")
    count = 400  # ~400 KiB: several times the initial 64 KiB windows
    with redis_module.client() as client:
        pipe = client.pipeline(transaction=False)
        for i in range(count):
            pipe.publish("events", json.dumps(event("burst", {"i": i, "pad": "x" * 1000})))
        pipe.execute()
    received = [json.loads((await next_payload(call)).data)["i"] for _ in range(count)]
    assert received == list(range(count))
    call.cancel()


async def test_unknown_method_is_unimplemented(channel: grpc.aio.Channel) -> None:
    call = channel.unary_unary("/proto.StreamService/Nope")(b"")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await asyncio.wait_for(call, 5)
    assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED


async def test_resume_replays_missed_events_by_payload_id(
    redis_module: RedisServer, channel: grpc.aio.Channel, stubs: Any
) -> None:
    call = await subscribe(channel, stubs, "resume")
    redis_module.publish("events", event("resume", 1))
    seen = await next_payload(call)
    call.cancel()
    redis_module.publish("events", event("resume", 2))
    redis_module.publish("events", event("resume", 3))
    again = await subscribe(channel, stubs, "resume", last_event_id=seen.id)
    assert [(await next_payload(again)).data for _ in range(2)] == ["2", "3"]
    again.cancel()


async def test_resume_from_an_unknown_id_starts_with_a_gap_event(
    channel: grpc.aio.Channel, stubs: Any
) -> None:
    call = await subscribe(channel, stubs, "gap", last_event_id="no-such-id")
    gap = await next_payload(call)
    assert gap.eventType.type == "plasma:gap"
    assert json.loads(gap.data)["lastEventId"] == "no-such-id"
    call.cancel()


def test_the_payload_is_encoded_once_as_a_framed_2017_message(stubs: Any) -> None:
    ev = Event("program:1:views", b'{"v":"\xc3\xa9"}')
    ev.id = "42"
    framed = ev.encode(encode_payload)
    assert ev.encode(encode_payload) is framed  # cached: one encoding for every subscriber
    assert framed[0] == 0 and int.from_bytes(framed[1:5], "big") == len(framed) - 5
    payload = stubs.pb.Payload.FromString(framed[5:])
    assert (payload.eventType.type, payload.data, payload.id) == (
        "program:1:views",
        '{"v":"é"}',
        "42",
    )


def test_stream_proto_keeps_the_2017_wire_names_and_numbers() -> None:
    d = grpc_proto.get("stream").descriptor
    assert d.package == "proto"
    method = d.services_by_name["StreamService"].methods_by_name["Events"]
    assert (method.client_streaming, method.server_streaming) == (False, True)
    fields = {
        m.name: {f.name: f.number for f in m.fields} for m in d.message_types_by_name.values()
    }
    assert fields == {
        "Request": {"Events": 1, "lastEventId": 3},
        "EventType": {"type": 1},
        "Payload": {"eventType": 1, "data": 2, "id": 3},
    }
    v2 = grpc_proto.get("stream_v2").descriptor
    method = v2.services_by_name["StreamService"].methods_by_name["Events"]
    assert (method.client_streaming, method.server_streaming) == (True, True)
    request_fields = {f.name: f.number for f in v2.message_types_by_name["Request"].fields}
    assert request_fields == {"Events": 1, "forceClose": 2, "lastEventId": 3}


# --- the bidirectional interface (stream_v2.proto), in a child process --------------------------

_V2_CLIENT = r"""
import json, sys
import grpc
import stream_v2_pb2 as pb, stream_v2_pb2_grpc as pb_grpc

def out(obj):
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()

def requests():
    for line in sys.stdin:
        cmd = json.loads(line)
        if cmd.get("half_close"):
            return
        yield pb.Request(
            Events=[pb.EventType(type=t) for t in cmd.get("events", [])],
            forceClose=cmd.get("forceClose", False),
        )
    # stdin closed: keep the request side open until the call ends
    threading_event.wait()

import threading
threading_event = threading.Event()
token = sys.argv[2] if len(sys.argv) > 2 else ""
with grpc.insecure_channel(sys.argv[1]) as channel:
    metadata = [("authorization", "Bearer " + token)] if token else None
    call = pb_grpc.StreamServiceStub(channel).Events(requests(), metadata=metadata)
    try:
        call.initial_metadata()
        out({"ready": True})
        for p in call:
            out({"type": p.eventType.type, "data": p.data, "id": p.id})
        out({"status": call.code().name, "details": call.details()})
    except grpc.RpcError as exc:
        out({"status": exc.code().name, "details": exc.details()})
    threading_event.set()
"""


class V2Client:
    """A stream_v2.proto client in its own process, driven by JSON lines on stdin/stdout."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc

    @classmethod
    async def start(cls, stub_dir: Path, port: int, token: str = "") -> V2Client:
        """``token``: sent as the call's ``authorization: Bearer`` metadata."""
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            _V2_CLIENT,
            f"127.0.0.1:{port}",
            *([token] if token else []),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env={"PYTHONPATH": str(stub_dir), "PATH": "/usr/bin:/bin"},
        )
        return cls(proc)

    def send(self, *types: str, force_close: bool = False, half_close: bool = False) -> None:
        cmd = {"events": list(types), "forceClose": force_close, "half_close": half_close}
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(cmd).encode() + b"\n")

    async def next(self, timeout: float = 5.0) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = await asyncio.wait_for(self.proc.stdout.readline(), timeout)
        if not line:
            raise AssertionError("the v2 client exited")
        return dict(json.loads(line))

    async def next_type(self, timeout: float = 5.0) -> str:
        return str((await self.next(timeout))["type"])

    async def next_with_data(self, timeout: float = 5.0) -> dict[str, Any]:
        """The next event that carries data (skipping ``publish_until``'s empty probes)."""
        while (received := await self.next(timeout)).get("data") == "null":
            pass
        return received

    async def close(self) -> None:
        if self.proc.returncode is None:
            self.proc.kill()
        await self.proc.wait()


@pytest.fixture
async def v2(server: PlasmaProcess, v2_stub_dir: Path) -> AsyncIterator[V2Client]:
    client = await V2Client.start(v2_stub_dir, server.port)
    yield client
    await client.close()


async def publish_until(redis: RedisServer, client: V2Client, wanted: str, *also: str) -> None:
    """Publish ``also`` then ``wanted`` until ``wanted`` arrives (the Request is applied)."""
    for _ in range(50):
        for t in (*also, wanted):
            redis.publish("events", event(t))
        try:
            while await client.next_type(0.1) != wanted:
                pass
            return
        except TimeoutError:
            continue
    raise AssertionError(f"{wanted} never arrived")


async def test_each_request_replaces_the_subscription(
    redis_module: RedisServer, v2: V2Client
) -> None:
    v2.send("x")
    assert await v2.next() == {"ready": True}
    redis_module.publish("events", event("x", 1))
    assert await v2.next_type() == "x"
    v2.send("y")
    await publish_until(redis_module, v2, "y", "x")
    redis_module.publish("events", event("x", "after"))
    redis_module.publish("events", event("y", "after"))
    received = await v2.next()
    assert (received["type"], received["data"]) == ("y", '"after"')  # "x" was not delivered
    assert received["id"]


async def test_an_empty_request_unsubscribes_and_the_stream_stays(
    redis_module: RedisServer, v2: V2Client
) -> None:
    v2.send("u")
    assert await v2.next() == {"ready": True}
    v2.send()  # unsubscribe everything
    v2.send("w")
    await publish_until(redis_module, v2, "w")  # requests apply in order: both are applied
    redis_module.publish("events", event("u", "lost"))
    redis_module.publish("events", event("w", "last"))
    assert (await v2.next_with_data())["data"] == '"last"'


async def test_force_close_ends_the_stream_with_ok(
    server: PlasmaProcess, redis_module: RedisServer, v2: V2Client
) -> None:
    v2.send("f")
    assert await v2.next() == {"ready": True}
    v2.send(force_close=True)
    assert (await v2.next())["status"] == "OK"


async def test_the_first_request_must_name_a_type(v2: V2Client) -> None:
    v2.send()
    status = await v2.next()
    if status.get("ready"):  # trailers-only responses still resolve initial metadata
        status = await v2.next()
    assert status["status"] == "INVALID_ARGUMENT"
    assert status["details"]


async def test_half_close_does_not_end_the_stream(redis_module: RedisServer, v2: V2Client) -> None:
    v2.send("h")
    assert await v2.next() == {"ready": True}
    v2.send(half_close=True)
    await publish_until(redis_module, v2, "h")  # an ended stream would never get one
    redis_module.publish("events", event("h", "still here"))
    assert (await v2.next_with_data())["data"] == '"still here"'


async def test_resume_after_1000_missed_events_then_live(
    redis_module: RedisServer, channel: grpc.aio.Channel, stubs: Any
) -> None:
    call = await subscribe(channel, stubs, "many")
    redis_module.publish("events", event("many:x", -1))
    seen = await next_payload(call)
    call.cancel()
    with redis_module.client() as r:
        pipe = r.pipeline(transaction=False)
        for n in range(1000):
            pipe.publish("events", json.dumps(event("many:x" if n % 2 else "other", n)))
        pipe.execute()
    again = await subscribe(channel, stubs, "many", last_event_id=seen.id)
    missed = [await next_payload(again) for _ in range(500)]
    assert [int(p.data) for p in missed] == list(range(1, 1000, 2))
    assert len({p.id for p in missed}) == 500
    redis_module.publish("events", event("many:y", 5000))
    assert (await next_payload(again)).data == "5000"
    again.cancel()


async def test_grpc_limits_refuse_cleanly(redis_module: RedisServer, stubs: Any) -> None:
    process = start_redis_plasma(
        redis_module,
        PLASMA_MAX_CONNECTIONS="2",
        PLASMA_MAX_TYPES="2",
        PLASMA_GRPC_MAX_STREAMS="3",
    )
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{process.port}") as ch:
            too_many = stubs.grpc.StreamServiceStub(ch).Events(request(stubs, "a", "b", "c"))
            assert await too_many.code() == grpc.StatusCode.INVALID_ARGUMENT
            first = await subscribe(ch, stubs, "a")
            second = await subscribe(ch, stubs, "a")
            third = stubs.grpc.StreamServiceStub(ch).Events(request(stubs, "a"))
            assert await third.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            first.cancel()
            second.cancel()
            wait_for(lambda: process.metrics()["connections"] == 0)
            again = await subscribe(ch, stubs, "a")
            again.cancel()
    finally:
        process.stop()


def test_http2_settings_announce_the_stream_and_frame_limits(redis_module: RedisServer) -> None:
    import socket

    import h2.config
    import h2.connection
    import h2.events
    import h2.settings

    process = start_redis_plasma(
        redis_module, PLASMA_GRPC_MAX_STREAMS="7", PLASMA_GRPC_MAX_FRAME_SIZE="32768"
    )
    try:
        client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        client.initiate_connection()
        with socket.create_connection(("127.0.0.1", process.port), timeout=5) as sock:
            sock.sendall(client.data_to_send())
            settings: dict[int, int] = {}
            while not settings:
                for ev in client.receive_data(sock.recv(65536)):
                    if isinstance(ev, h2.events.RemoteSettingsChanged):
                        settings = {k: v.new_value for k, v in ev.changed_settings.items()}
        assert settings[h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS] == 7
        assert settings[h2.settings.SettingCodes.MAX_FRAME_SIZE] == 32768
    finally:
        process.stop()


async def test_grpc_streams_move_the_prometheus_series(
    redis_module: RedisServer, server: PlasmaProcess, stubs: Any
) -> None:
    from tests.support import scrape, value

    before = scrape(server.url)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as ch:
        call = await subscribe(ch, stubs, "prom")
        during = scrape(server.url)
        assert (
            value(during, "plasma_connections", transport="grpc")
            == value(before, "plasma_connections", transport="grpc") + 1
        )
        assert (
            value(during, "plasma_connections_opened_total", transport="grpc")
            == value(before, "plasma_connections_opened_total", transport="grpc") + 1
        )
        redis_module.publish("events", event("prom", 1))
        assert (await next_payload(call)).data == "1"
        after = scrape(server.url)
        assert value(after, "plasma_events_delivered_total") > value(
            before, "plasma_events_delivered_total"
        )
        assert value(after, "plasma_bytes_written_total") > value(
            before, "plasma_bytes_written_total"
        )
        call.cancel()
    wait_for(
        lambda: (
            value(scrape(server.url), "plasma_connections", transport="grpc")
            == value(before, "plasma_connections", transport="grpc")
        ),
        what="the gRPC stream to close",
    )
