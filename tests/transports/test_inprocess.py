"""The connections in-process: a real ``Server`` on a loopback port in the test's own event loop,
driven by raw sockets and by the ``h2`` library as a gRPC client, so each test can publish into
the hub directly and watch what it counts while it reads the wire.
"""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import h2.config
import h2.connection
import h2.events
import h2.settings
import pytest

from plasma.config import Config, SourceConfig, SSEConfig
from plasma.events import Event
from plasma.logging import ACCESS_LOGGER
from plasma.server import Server
from plasma.transports.grpc import proto
from tests.support import RawSSE, async_wait_for

EVENTS = "/proto.StreamService/Events"


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    """A server with a quiet mock source, listening on a free loopback port."""
    config = Config(
        host="127.0.0.1",
        port=0,
        sse=SSEConfig(heartbeat=3600.0),
        source=SourceConfig(type="mock", mock_interval=3600.0),
    )
    srv = Server(config)
    await srv.start()
    try:
        yield srv
    finally:
        await srv.aclose()
        gc.unfreeze()  # start() froze what existed; the test process goes on


def publish(server: Server, type: str, data: bytes = b"1") -> None:
    server.hub.publish(Event(type, data))


# --- SSE: the lean path, and what both paths share --------------------------------------------


async def test_a_request_arriving_byte_by_byte_is_streamed(server: Server) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", server.ports[0])
    raw = RawSSE(reader, writer)
    try:
        request = b"GET /?eventType=bytes HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n"
        for i in range(len(request)):
            writer.write(request[i : i + 1])
            await writer.drain()
        await raw.read_until(b"retry: 2000\n\n")
        assert server.hub.subscriber_count == 1
        publish(server, "bytes:1", b'"one"')
        await raw.read_until(b'"data":"one"}')
    finally:
        raw.close()
    await async_wait_for(lambda: server.hub.subscriber_count == 0, what="the unsubscribe")
    assert server.metrics.connection_count == 0


@pytest.mark.parametrize("via", ["lean", "aiohttp"])
async def test_both_paths_log_the_forwarded_client_and_end_alike(
    server: Server, caplog: pytest.LogCaptureFixture, via: str
) -> None:
    caplog.set_level(logging.INFO, logger=ACCESS_LOGGER)
    raw = await RawSSE.open(
        server.ports[0],
        "/some/path?eventType=a,b",
        {"X-Forwarded-For": "203.0.113.7, 10.0.0.1"},
        after_request=via == "aiohttp",
    )
    try:
        await raw.read_until(b"retry: 2000\n\n")
        raw.buffer = b""
        server.sse.close_all("shutdown")
        data = await raw.read_to_eof()
    finally:
        raw.close()
    # The server ended it: the chunked body is ended properly, then the connection closed.
    assert data.endswith(b"0\r\n\r\n")
    assert server.hub.subscriber_count == 0

    def stream_closed() -> Any:
        return next((r for r in caplog.records if r.getMessage() == "stream closed"), None)

    record = await async_wait_for(stream_closed, what="the access log line")
    assert record.remote == "203.0.113.7"
    assert (record.path, record.types, record.reason) == ("/some/path", ["a", "b"], "shutdown")


# --- gRPC with h2 as the client -------------------------------------------------------------------


def request_message(*types: str, **fields: Any) -> bytes:
    """A framed ``proto.Request`` for ``types``."""
    request = proto.get("stream_v2").message("proto.Request")
    event_type = proto.get("stream_v2").message("proto.EventType")
    body = request(Events=[event_type(type=t) for t in types], **fields).SerializeToString()
    return b"\x00" + len(body).to_bytes(4, "big") + body


def payload_types(data: bytes) -> list[str]:
    """The event types of the whole ``Payload`` messages in ``data``."""
    payload = proto.get("stream").message("proto.Payload")
    types = []
    while len(data) >= 5 and len(data) >= 5 + (length := int.from_bytes(data[1:5], "big")):
        types.append(payload.FromString(data[5 : 5 + length]).eventType.type)
        data = data[5 + length :]
    return types


class H2Client:
    """A gRPC client made of ``h2`` and a socket: every frame it sends is the test's choice."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        self.events: list[h2.events.Event] = []
        self.data: dict[int, bytes] = {}
        """What arrived on each stream (never acknowledged: the windows only shrink)."""
        self.pings = 0

    @classmethod
    async def connect(cls, port: int, window: int | None = None) -> H2Client:
        client = cls(*await asyncio.open_connection("127.0.0.1", port))
        if window is not None:
            client.conn.local_settings = h2.settings.Settings(
                client=True, initial_values={h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: window}
            )
        client.conn.initiate_connection()
        client.send()
        return client

    def send(self) -> None:
        self.writer.write(self.conn.data_to_send())

    def open_call(self, path: str = EVENTS, body: bytes = b"", end_stream: bool = True) -> int:
        sid = self.conn.get_next_available_stream_id()
        headers = [
            (":method", "POST"),
            (":path", path),
            (":scheme", "http"),
            (":authority", "127.0.0.1"),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
        ]
        self.conn.send_headers(sid, headers, end_stream=end_stream and not body)
        if body:
            self.conn.send_data(sid, body, end_stream=end_stream)
        self.send()
        return sid

    async def until(self, condition: Callable[[], Any], timeout: float = 5.0) -> Any:
        """Read frames until ``condition()`` is truthy; return it."""
        async with asyncio.timeout(timeout):
            while not (value := condition()):
                chunk = await self.reader.read(65536)
                assert chunk, "the server closed the connection"
                for event in self.conn.receive_data(chunk):
                    self.events.append(event)
                    if isinstance(event, h2.events.DataReceived):
                        self.data[event.stream_id] = (
                            self.data.get(event.stream_id, b"") + event.data
                        )
                self.send()  # settings and ping ACKs; never a WINDOW_UPDATE
        return value

    def responded(self, sid: int) -> bool:
        return any(
            isinstance(e, h2.events.ResponseReceived) and e.stream_id == sid for e in self.events
        )

    def status(self, sid: int) -> bytes | None:
        """The call's ``grpc-status``, once its trailers (or trailers-only response) arrived."""
        for e in self.events:
            if (
                isinstance(e, h2.events.ResponseReceived | h2.events.TrailersReceived)
                and e.stream_id == sid
            ):
                status = dict(e.headers).get(b"grpc-status")
                if status is not None:
                    return bytes(status)
        return None

    async def round_trip(self) -> None:
        """Send a PING and read until its ACK: the server has handled all sent before it."""
        self.pings += 1
        opaque = self.pings.to_bytes(8, "big")
        self.conn.ping(opaque)
        self.send()
        await self.until(
            lambda: any(
                isinstance(e, h2.events.PingAckReceived) and e.ping_data == opaque
                for e in self.events
            )
        )

    def close(self) -> None:
        self.writer.close()


async def test_a_short_window_keeps_data_pending_until_window_update(server: Server) -> None:
    client = await H2Client.connect(server.ports[0], window=10)
    try:
        sid = client.open_call(body=request_message("flow"))
        await client.until(lambda: client.responded(sid))
        publish(server, "flow", b'"%b"' % (b"x" * 40))
        await client.until(lambda: len(client.data.get(sid, b"")) >= 10)
        await client.round_trip()
        # h2 raises if the server overruns the window, so exactly the window's 10 bytes came.
        assert len(client.data[sid]) == 10
        publish(server, "flow:2")  # queued behind the rest of the first
        client.conn.increment_flow_control_window(1 << 16, stream_id=sid)
        client.send()
        await client.until(lambda: len(payload_types(client.data[sid])) == 2)
        assert payload_types(client.data[sid]) == ["flow", "flow:2"]
    finally:
        client.close()


@pytest.mark.parametrize("half_close", ["with the request", "after the response headers"])
async def test_a_client_that_half_closes_after_its_request_still_gets_events(
    server: Server, half_close: str
) -> None:
    client = await H2Client.connect(server.ports[0])
    try:
        body = request_message("half")
        sid = client.open_call(body=body, end_stream=half_close == "with the request")
        await client.until(lambda: client.responded(sid))
        if half_close != "with the request":
            client.conn.end_stream(sid)
            client.send()
            await client.round_trip()
        publish(server, "half:1")
        await client.until(lambda: payload_types(client.data.get(sid, b"")) == ["half:1"])
        assert client.status(sid) is None  # still open
    finally:
        client.close()


async def test_a_stream_ended_inside_a_message_is_internal(server: Server) -> None:
    client = await H2Client.connect(server.ports[0])
    try:
        whole = request_message("cut")
        sid = client.open_call(body=whole[:-3])  # END_STREAM three bytes short of the message
        assert await client.until(lambda: client.status(sid)) == b"13"  # INTERNAL
    finally:
        client.close()
    assert server.hub.subscriber_count == 0


async def test_a_half_close_before_any_request_is_invalid_argument(server: Server) -> None:
    client = await H2Client.connect(server.ports[0])
    try:
        sid = client.open_call()  # HEADERS with END_STREAM: no Request will ever come
        assert await client.until(lambda: client.status(sid)) == b"3"  # INVALID_ARGUMENT
    finally:
        client.close()


async def test_an_empty_request_unsubscribes_a_live_stream(server: Server) -> None:
    client = await H2Client.connect(server.ports[0])
    try:
        sid = client.open_call(body=request_message("live"), end_stream=False)
        await client.until(lambda: client.responded(sid))
        assert server.hub.subscriber_count == 1
        client.conn.send_data(sid, request_message())
        client.send()
        await client.round_trip()
        assert server.hub.subscriber_count == 0
        publish(server, "live", b'"lost"')
        client.conn.send_data(sid, request_message("again"))
        client.send()
        await client.round_trip()
        publish(server, "again")
        await client.until(lambda: payload_types(client.data.get(sid, b"")) == ["again"])
    finally:
        client.close()
