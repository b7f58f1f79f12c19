"""gRPC extras and the edges of the one port: health, reflection, malformed prefaces, the
gRPC-only port, and the checked-in protobuf descriptors."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import descriptor_pb2
from google.protobuf.descriptor_pool import DescriptorPool
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

from plasma.transports.grpc import proto as grpc_proto
from tests.support import (
    PlasmaProcess,
    RedisServer,
    free_port,
    http,
    port_open,
    wait_for,
)
from tests.transports.test_grpc import (
    PROTO_DIR,
    event,
    next_payload,
    request,
    server,
    stubs,
    subscribe,
)

__all__ = ["server", "stubs"]  # fixtures shared with test_grpc, imported for this module

pytestmark = pytest.mark.integration

REPO = PROTO_DIR.parents[3]
H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
EMPTY_SETTINGS = b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"


@pytest.fixture
def channel(server: PlasmaProcess) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as ch:
        yield ch


# --- health ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("service", ["", "proto.StreamService"])
def test_health_check_is_serving_while_the_source_is_up(
    channel: grpc.Channel, service: str
) -> None:
    stub = health_pb2_grpc.HealthStub(channel)
    response = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
    assert response.status == health_pb2.HealthCheckResponse.SERVING


def test_health_check_of_an_unknown_service_is_not_found(channel: grpc.Channel) -> None:
    stub = health_pb2_grpc.HealthStub(channel)
    with pytest.raises(grpc.RpcError) as caught:
        stub.Check(health_pb2.HealthCheckRequest(service="nope"), timeout=5)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


def test_health_list_names_both_services(channel: grpc.Channel) -> None:
    response = health_pb2_grpc.HealthStub(channel).List(health_pb2.HealthListRequest(), timeout=5)
    assert {name: s.status for name, s in response.statuses.items()} == {
        "": health_pb2.HealthCheckResponse.SERVING,
        "proto.StreamService": health_pb2.HealthCheckResponse.SERVING,
    }


def test_health_follows_the_source_like_hc(
    redis_plasma: Callable[..., PlasmaProcess], redis_server: RedisServer
) -> None:
    process = redis_plasma()
    with grpc.insecure_channel(f"127.0.0.1:{process.port}") as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        watch = stub.Watch(health_pb2.HealthCheckRequest(service=""), timeout=15)
        assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
        redis_server.stop()
        assert next(watch).status == health_pb2.HealthCheckResponse.NOT_SERVING
        check = stub.Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert check.status == health_pb2.HealthCheckResponse.NOT_SERVING
        assert http(process.url + "/hc").status == 500
        watch.cancel()


# --- reflection -----------------------------------------------------------------------------------

SERVICES = {
    "proto.StreamService",
    "grpc.health.v1.Health",
    "grpc.reflection.v1.ServerReflection",
    "grpc.reflection.v1alpha.ServerReflection",
}


def test_reflection_lists_and_describes_the_services(channel: grpc.Channel) -> None:
    database = ProtoReflectionDescriptorDatabase(channel)
    assert set(database.get_services()) == SERVICES
    pool = DescriptorPool(database)
    events = pool.FindServiceByName("proto.StreamService").methods_by_name["Events"]
    assert events.input_type.full_name == "proto.Request"
    assert events.output_type.full_name == "proto.Payload"
    assert events.server_streaming and not events.client_streaming
    payload = pool.FindMessageTypeByName("proto.Payload")
    assert {f.name: f.number for f in payload.fields} == {"eventType": 1, "data": 2, "id": 3}
    health = pool.FindServiceByName("grpc.health.v1.Health")
    assert set(health.methods_by_name) == {"Check", "List", "Watch"}


def test_reflection_v1_answers_on_its_own_path(channel: grpc.Channel) -> None:
    # v1 and v1alpha messages are the same on the wire; grpcio-reflection ships v1alpha's.
    info = channel.stream_stream(
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
        response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
    )
    requests = [
        reflection_pb2.ServerReflectionRequest(list_services=""),
        reflection_pb2.ServerReflectionRequest(file_containing_symbol="proto.StreamService.Events"),
        reflection_pb2.ServerReflectionRequest(file_containing_symbol="no.Such"),
    ]
    listed, described, missing = list(info(iter(requests), timeout=5))
    assert {s.name for s in listed.list_services_response.service} == SERVICES
    (raw,) = described.file_descriptor_response.file_descriptor_proto
    file = descriptor_pb2.FileDescriptorProto.FromString(raw)
    assert (file.name, file.package) == ("stream.proto", "proto")
    assert missing.error_response.error_code == grpc.StatusCode.NOT_FOUND.value[0]


# --- the protobuf files ---------------------------------------------------------------------


def test_checked_in_descriptors_are_fresh(tmp_path: Path) -> None:
    subprocess.run(
        [str(REPO / "scripts" / "gen-proto"), str(tmp_path)],
        check=True,
        capture_output=True,
        env={**os.environ, "PYTHON": sys.executable},
    )
    checked_in = PROTO_DIR / "_proto"
    fresh = sorted(p.name for p in tmp_path.glob("*.binpb"))
    assert fresh == sorted(p.name for p in checked_in.glob("*.binpb"))
    stale = [n for n in fresh if (tmp_path / n).read_bytes() != (checked_in / n).read_bytes()]
    assert not stale, f"run scripts/gen-proto: {stale} are stale"


def _shape(file: Any) -> tuple[list[str], list[str]]:
    """Messages and services as text, without what does not reach the wire (json_name)."""
    proto = descriptor_pb2.FileDescriptorProto()
    file.CopyToProto(proto)

    def strip(message: Any) -> None:
        for field in message.field:
            field.ClearField("json_name")
        for nested in message.nested_type:
            strip(nested)

    for message in proto.message_type:
        strip(message)
    return [str(m) for m in proto.message_type], [str(s) for s in proto.service]


def test_extras_protos_match_the_grpcio_packages_on_the_wire() -> None:
    assert _shape(grpc_proto.get("health").descriptor) == _shape(health_pb2.DESCRIPTOR)
    assert _shape(grpc_proto.get("reflection_v1alpha").descriptor) == _shape(
        reflection_pb2.DESCRIPTOR
    )
    v1_messages, _ = _shape(grpc_proto.get("reflection_v1").descriptor)
    alpha_messages, _ = _shape(reflection_pb2.DESCRIPTOR)
    assert [m.replace(".v1.", ".v1alpha.") for m in v1_messages] == alpha_messages


# --- the edges of the one port --------------------------------------------------------------


def _frames(data: bytes) -> list[tuple[int, bytes]]:
    """(type, payload) of each whole HTTP/2 frame in ``data``."""
    out = []
    while len(data) >= 9:
        length = int.from_bytes(data[:3], "big")
        out.append((data[3], data[9 : 9 + length]))
        data = data[9 + length :]
    return out


async def _until_closed(port: int, sent: bytes, timeout: float) -> bytes:
    """Send ``sent``, then read until the server closes; fail if it keeps the socket open."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(sent)
    received = b""
    try:
        async with asyncio.timeout(timeout):
            while chunk := await reader.read(65536):
                received += chunk
    except ConnectionResetError:
        pass
    finally:
        writer.close()
    return received


def _goaway_code(received: bytes) -> int:
    goaways = [payload for kind, payload in _frames(received) if kind == 0x7]
    assert goaways, f"no GOAWAY in {received!r}"
    return int.from_bytes(goaways[-1][4:8], "big")


async def test_malformed_prefaces_are_closed_and_the_server_keeps_serving(
    server: PlasmaProcess, stubs: Any
) -> None:
    port = server.port
    oversized = b"\xff\xff\xff\x00\x00\x00\x00\x00\x01"  # a DATA frame of 16 MiB
    bad_ping = b"\x00\x00\x03\x06\x00\x00\x00\x00\x00abc"  # PING must carry 8 bytes
    results = await asyncio.gather(
        # not the preface after all: the HTTP/1.1 side answers and hangs up
        _until_closed(port, b"PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n", 5),
        # part of the preface, then silence: closed after a short timeout
        _until_closed(port, H2_PREFACE[:10], 8),
        # the whole preface but no SETTINGS: closed after a short timeout
        _until_closed(port, H2_PREFACE, 8),
        # an oversized frame: GOAWAY FRAME_SIZE_ERROR
        _until_closed(port, H2_PREFACE + EMPTY_SETTINGS + oversized, 5),
        # a malformed frame: GOAWAY with an error
        _until_closed(port, H2_PREFACE + EMPTY_SETTINGS + bad_ping, 5),
    )
    not_preface, partial, silent, too_big, garbage = results
    assert not_preface == b"" or not_preface.startswith(b"HTTP/1.")
    assert partial == b""
    assert _frames(silent)[0][0] == 0x4  # the server's SETTINGS, and nothing after
    assert _goaway_code(too_big) == 0x6  # FRAME_SIZE_ERROR
    assert _goaway_code(garbage) in (0x1, 0x6)  # PROTOCOL_ERROR or FRAME_SIZE_ERROR
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
        call = await subscribe(ch, stubs, "still:serving")
        call.cancel()
    assert http(server.url + "/hc").status == 200


def test_a_non_grpc_http2_request_is_refused_with_415(server: PlasmaProcess) -> None:
    import h2.config
    import h2.connection
    import h2.events

    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    headers = [(":method", "GET"), (":path", "/"), (":scheme", "http"), (":authority", "x")]
    conn.send_headers(1, headers, end_stream=True)
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(conn.data_to_send())
        status = None
        while status is None:
            for ev in conn.receive_data(sock.recv(65536)):
                if isinstance(ev, h2.events.ResponseReceived):
                    status = dict(ev.headers)[b":status"]
    assert status == b"405"


async def test_grpc_port_serves_grpc_alone(
    plasma: Callable[..., PlasmaProcess], stubs: Any
) -> None:
    main_port = free_port()
    grpc_port = wait_for(lambda: (p := free_port()) != main_port and p, what="a second port")
    process = plasma(
        PLASMA_PORT=str(main_port),
        PLASMA_GRPC_PORT=str(grpc_port),
        PLASMA_SUBSCRIBER_MOCK_INTERVAL="50ms",
    )
    wait_for(lambda: port_open(grpc_port), what="the gRPC port")
    for port in (grpc_port, process.port):
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
            call = await subscribe(ch, stubs, "poll")
            assert (await next_payload(call)).eventType.type == "poll"
            call.cancel()
    with pytest.raises(OSError):
        http(f"http://127.0.0.1:{grpc_port}/hc", timeout=3)
    assert http(process.url + "/hc").status == 200
    assert request(stubs, "x").Events[0].type == "x"
    assert event("x")["meta"] == {"type": "x"}


def test_a_client_whose_window_stays_shut_is_cut_with_resource_exhausted(
    redis_plasma: Callable[..., PlasmaProcess], redis_server: RedisServer, stubs: Any
) -> None:
    import h2.config
    import h2.connection
    import h2.events
    import h2.settings

    process = redis_plasma(PLASMA_CLIENT_BUFFER="1024")
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.local_settings = h2.settings.Settings(
        client=True, initial_values={h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 100}
    )
    conn.initiate_connection()
    headers = [
        (":method", "POST"),
        (":path", "/proto.StreamService/Events"),
        (":scheme", "http"),
        (":authority", "127.0.0.1"),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
    ]
    conn.send_headers(1, headers)
    body = request(stubs, "slow").SerializeToString()
    conn.send_data(1, b"\x00" + len(body).to_bytes(4, "big") + body, end_stream=True)
    trailers: dict[bytes, bytes] = {}
    with socket.create_connection(("127.0.0.1", process.port), timeout=5) as sock:
        sock.sendall(conn.data_to_send())
        subscribed = False
        published = 0
        while not trailers:
            for ev in conn.receive_data(sock.recv(65536)):
                if isinstance(ev, h2.events.ResponseReceived):
                    subscribed = True
                if isinstance(ev, h2.events.TrailersReceived):
                    trailers = dict(ev.headers)
            sock.sendall(conn.data_to_send())  # settings ACKs, never a WINDOW_UPDATE
            if subscribed and published < 200:
                for _ in range(20):
                    redis_server.publish("events", event("slow", "x" * 100))
                published += 20
    assert trailers[b"grpc-status"] == b"8"  # RESOURCE_EXHAUSTED
    assert b"too slow" in trailers[b"grpc-message"]
    assert process.metrics()["clients_dropped"] >= 1
