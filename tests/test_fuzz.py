"""Property-based tests of every parser a peer can reach, and of the hub's matching rule.

The default profile runs a few hundred examples per property in the normal suite. The long
fuzz run is the same file with the ``fuzz`` profile (tens of thousands of examples each):

    ./scripts/test tests/test_fuzz.py --hypothesis-profile=fuzz --timeout=0
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from plasma.config import SETTINGS, Config, parse_bool, parse_duration
from plasma.errors import ConfigError, InvalidEvent
from plasma.events import Event, parse_batch, parse_event
from plasma.hub import Flushable, Hub
from plasma.metrics import Metrics
from plasma.subscription import InvalidSubscription, parse_types, split_types
from plasma.transports.sse.wire import query_values

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=8), children, max_size=5)
    ),
    max_leaves=20,
)
segments = st.text(alphabet="abcxyz019_-.", min_size=1, max_size=4)
event_types = st.lists(segments, min_size=1, max_size=4).map(":".join)


# --- events -------------------------------------------------------------------------------


_elements = st.one_of(
    json_values.map(orjson.dumps),  # any JSON value: mostly not an event
    st.builds(
        lambda t, d: orjson.dumps({"meta": {"type": t}, "data": d}), event_types, json_values
    ),
)


@given(st.lists(_elements, max_size=6))
def test_a_batch_parses_as_its_events_would_one_by_one(elements: list[bytes]) -> None:
    """The publish API's batch parser accepts or refuses exactly what parse_event does."""
    singles: list[Any] = []
    for element in elements:
        try:
            singles.append(parse_event(element))
        except InvalidEvent:
            singles.append(None)
    raw = b"[" + b",".join(elements) + b"]"
    try:
        batch = parse_batch(raw)
    except InvalidEvent as exc:
        assert exc.index is not None  # the body is one JSON array: an element is invalid,
        assert singles[exc.index] is None  # and it is the first invalid one
        assert all(s is not None for s in singles[: exc.index])
        return
    assert None not in singles
    # What is published for each element reads back (as every plasma reads it) as that event.
    assert batch.types == [e.type for e in singles]
    forwarded = [parse_event(body) for body in batch.bodies]
    assert [(e.type, e.data) for e in forwarded] == [(e.type, e.data) for e in singles]


@given(st.binary(max_size=512))
def test_any_bytes_parse_or_are_rejected_cleanly(raw: bytes) -> None:
    try:
        event = parse_event(raw)
    except InvalidEvent as exc:
        assert exc.reason in {"invalid_json", "not_object", "no_type", "too_large", "too_deep"}
    else:
        assert isinstance(event, Event)
        assert event.type


@given(st.text(max_size=300))
def test_any_text_parses_or_is_rejected_cleanly(raw: str) -> None:
    with contextlib.suppress(InvalidEvent):
        parse_event(raw)


def _same_json(a: Any, b: Any) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        return isinstance(a, int | float) and isinstance(b, int | float) and math.isclose(a, b)
    if isinstance(a, list):
        return isinstance(b, list) and len(a) == len(b) and all(map(_same_json, a, b))
    if isinstance(a, dict):
        return (
            isinstance(b, dict) and a.keys() == b.keys() and all(_same_json(a[k], b[k]) for k in a)
        )
    return bool(a == b) and type(a) is type(b)


@given(event_types, json_values)
def test_valid_events_keep_type_and_data(event_type: str, data: Any) -> None:
    raw = orjson.dumps({"meta": {"type": event_type}, "data": data})
    event = parse_event(raw)
    assert event.type == event_type
    assert _same_json(orjson.loads(event.data), data)
    body = orjson.loads(event.body)
    assert body["meta"] == {"type": event_type}
    assert _same_json(body["data"], data)


@given(st.integers(min_value=2**64, max_value=2**200))
def test_integers_beyond_64_bits_pass_through_exactly(big: int) -> None:
    event = parse_event(b'{"meta":{"type":"n"},"data":%d}' % big)
    assert event.data == str(big).encode()


# --- subscriptions and queries ------------------------------------------------------------------


@given(st.text(max_size=300))
def test_type_lists_parse_to_clean_types_or_are_refused(text: str) -> None:
    try:
        types = parse_types(split_types(text), max_types=8, max_length=16)
    except InvalidSubscription as exc:
        assert str(exc)
    else:
        assert 1 <= len(types) <= 8
        assert len(set(types)) == len(types)
        for t in types:
            assert t and len(t) <= 16 and t.isprintable() and " " not in t and "," not in t


@given(st.text(max_size=200), st.sampled_from(["eventType", "lastEventId", "x"]))
def test_any_query_string_decodes_strictly_or_is_refused(query: str, name: str) -> None:
    try:
        values = query_values(query, name)
    except InvalidSubscription:
        return
    assert all(isinstance(v, str) for v in values)


@given(st.binary(max_size=100))
def test_raw_query_bytes_decode_strictly_or_are_refused(raw: bytes) -> None:
    # A request line carries the query as latin-1 text (what aiohttp hands over).
    with contextlib.suppress(InvalidSubscription):
        query_values(raw.decode("latin-1"), "eventType")


# --- configuration ----------------------------------------------------------------------------


@given(st.text(max_size=30))
def test_any_duration_text_parses_or_raises_value_error(text: str) -> None:
    try:
        value = parse_duration(text)
    except ValueError:
        return
    assert isinstance(value, float)


@given(
    st.lists(
        st.tuples(st.integers(0, 10_000), st.sampled_from(["ns", "us", "ms", "s", "m", "h"])),
        min_size=1,
        max_size=4,
    )
)
def test_go_durations_add_up(parts: list[tuple[int, str]]) -> None:
    unit = {"ns": 1e-9, "us": 1e-6, "ms": 1e-3, "s": 1, "m": 60, "h": 3600}
    text = "".join(f"{n}{u}" for n, u in parts)
    assert math.isclose(parse_duration(text), sum(n * unit[u] for n, u in parts), abs_tol=1e-9)


@given(st.text(max_size=10))
def test_any_bool_text_parses_or_raises_value_error(text: str) -> None:
    with contextlib.suppress(ValueError):
        assert isinstance(parse_bool(text), bool)


@given(st.sampled_from([s.name for s in SETTINGS]), st.text(max_size=40))
def test_any_setting_value_gives_a_config_or_a_config_error(name: str, value: str) -> None:
    env = {name: value}
    if name != "PLASMA_SUBSCRIBER_REDIS_CHANNELS":
        env["PLASMA_SUBSCRIBER_REDIS_CHANNELS"] = "events"
    try:
        Config.from_env(env)
    except ConfigError as exc:
        assert exc.name.startswith("PLASMA_")
        assert exc.name in str(exc)


# --- the hub's matching rule ------------------------------------------------------------------


class _Recorder:
    def __init__(self) -> None:
        self.last_seq = 0
        self.got: list[bytes] = []

    @staticmethod
    def encoder(event: Event) -> bytes:
        return event.type.encode() + b"\n"

    def push(self, data: bytes, count: int = 1) -> Flushable | None:
        frames = data.split(b"\n")[:-1]  # a run of same-type events comes joined
        assert len(frames) == count
        self.got.extend(frames)
        return None


def _matches(event_type: str, wanted: tuple[str, ...]) -> bool:
    return any(event_type == t or event_type.startswith(t + ":") for t in wanted)


@st.composite
def _hub_case(draw: st.DrawFn) -> tuple[list[list[str]], list[str], int]:
    """Subscriptions (often prefixes of what is published), the published types (drawn from
    a few, so runs of one type occur) and how many are read together (runs are joined)."""
    pool = draw(st.lists(event_types, min_size=1, max_size=5))
    prefixes = sorted(
        {":".join(t.split(":")[:i]) for t in pool for i in range(1, t.count(":") + 2)}
    )
    wanted = st.sampled_from(prefixes) | event_types
    subscriptions = draw(st.lists(st.lists(wanted, min_size=1, max_size=3), min_size=1, max_size=6))
    published = draw(st.lists(st.sampled_from(pool), min_size=1, max_size=20))
    return subscriptions, published, draw(st.integers(min_value=1, max_value=20))


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(_hub_case())
def test_hub_delivers_exactly_the_matching_events_once_in_order(
    case: tuple[list[list[str]], list[str], int],
) -> None:
    subscriptions, published, batch = case

    async def run() -> None:
        hub = Hub(Metrics())
        recorders = []
        for types in subscriptions:
            recorder = _Recorder()
            hub.subscribe(recorder, tuple(dict.fromkeys(types)))  # type: ignore[arg-type]
            recorders.append((recorder, tuple(types)))
        # One at a time, or read together (``batch`` at a time: runs of one type are joined).
        for at in range(0, len(published), batch):
            hub.publish_events([Event(t, b"1") for t in published[at : at + batch]])
        for recorder, types in recorders:
            expected = [t.encode() for t in published if _matches(t, types)]
            assert recorder.got == expected

    asyncio.run(run())


@pytest.mark.parametrize("depth", [10, 253, 254, 255, 500, 1023, 1024, 5000])
def test_deeply_nested_json_is_rejected_or_parsed_never_crashes(depth: int) -> None:
    # Found by this file: orjson read 500 levels but could not write them back (TypeError).
    raw = b'{"meta":{"type":"d"},"data":' + b"[" * depth + b"]" * depth + b"}"
    try:
        event = parse_event(raw)
    except InvalidEvent as exc:
        assert exc.reason in {"invalid_json", "too_deep"}
    else:
        assert event.data == b"[" * depth + b"]" * depth


# --- HTTP/2 frame sequences on a real connection ---------------------------------------------

_H2_STREAMS = st.sampled_from([0, 1, 3, 5, 2, 2**31 - 1])
_H2_PATHS = st.sampled_from(
    [
        b"/proto.StreamService/Events",
        b"/grpc.health.v1.Health/Check",
        b"/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        b"/no.Such/Method",
    ]
)
_H2_BODIES = st.sampled_from([b"\x0a\x07\x0a\x05fuzz1", b"", b"\x0a\x03\x0a\x01"]) | st.binary(
    max_size=40
)
_H2_FRAMES = st.one_of(
    st.tuples(st.just("headers"), _H2_STREAMS, _H2_PATHS, st.booleans(), st.booleans()),
    st.tuples(st.just("data"), _H2_STREAMS, _H2_BODIES, st.booleans(), st.booleans()),
    st.tuples(
        st.just("raw"),
        st.integers(0, 12),  # every frame type plus an unknown one
        st.integers(0, 255),
        _H2_STREAMS,
        st.binary(max_size=24),
    ),
    st.tuples(st.just("window"), _H2_STREAMS, st.integers(0, 2**31 - 1)),
    st.tuples(
        st.just("settings"),
        st.lists(st.tuples(st.integers(0, 8), st.integers(0, 2**32 - 1)), max_size=3),
    ),
)


def _h2_frame(kind: int, flags: int, stream_id: int, payload: bytes) -> bytes:
    return (
        len(payload).to_bytes(3, "big")
        + bytes((kind, flags))
        + stream_id.to_bytes(4, "big")
        + payload
    )


def _h2_bytes(specs: list[tuple[Any, ...]]) -> bytes:
    """The frames of one example, HPACK-encoded on one connection's encoder."""
    import hpack

    encoder = hpack.Encoder()
    out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + _h2_frame(0x4, 0, 0, b"")
    for spec in specs:
        if spec[0] == "headers":
            _, sid, path, end_stream, end_headers = spec
            block = encoder.encode(
                [
                    (b":method", b"POST"),
                    (b":scheme", b"http"),
                    (b":path", path),
                    (b":authority", b"fuzz"),
                    (b"content-type", b"application/grpc"),
                    (b"te", b"trailers"),
                ]
            )
            flags = (0x1 if end_stream else 0) | (0x4 if end_headers else 0)
            out += _h2_frame(0x1, flags, sid, block)
        elif spec[0] == "data":
            _, sid, body, framed, end_stream = spec
            payload = b"\x00" + len(body).to_bytes(4, "big") + body if framed else body
            out += _h2_frame(0x0, 0x1 if end_stream else 0, sid, payload)
        elif spec[0] == "raw":
            _, kind, flags, sid, payload = spec
            out += _h2_frame(kind, flags, sid, payload)
        elif spec[0] == "window":
            _, sid, increment = spec
            out += _h2_frame(0x8, 0, sid, increment.to_bytes(4, "big"))
        else:
            payload = b"".join(k.to_bytes(2, "big") + v.to_bytes(4, "big") for k, v in spec[1])
            out += _h2_frame(0x4, 0, 0, payload)
    return out


def _h2_exchange(port: int, data: bytes) -> None:
    """Send ``data`` and a PING; read until the PING's ack or the server's close."""
    import socket

    marker = b"fuzzdone"
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        try:
            sock.sendall(data + _h2_frame(0x6, 0, 0, marker))
        except OSError:
            return  # closed on us mid-send: an answer too
        received = b""
        while True:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                return
            if not chunk:
                return
            received += chunk
            pos = 0
            while len(received) - pos >= 9:
                length = int.from_bytes(received[pos : pos + 3], "big")
                if len(received) - pos < 9 + length:
                    break
                kind, flags = received[pos + 3], received[pos + 4]
                if kind == 0x6 and flags & 1 and received[pos + 9 : pos + 17] == marker:
                    return
                pos += 9 + length
            received = received[pos:]


@pytest.mark.integration
def test_any_h2_frame_sequence_leaves_plasma_serving(redis_server: Any, redis_plasma: Any) -> None:
    """Sequences of HTTP/2 frames, valid and not, on fresh connections to a real plasma: each
    one is answered or closed, and a gRPC and an SSE canary opened before are still served."""
    import socket

    import grpc

    process = redis_plasma()
    sse = socket.create_connection(("127.0.0.1", process.port), timeout=10)
    sse.sendall(b"GET /?eventType=canary HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n")
    channel = grpc.insecure_channel(f"127.0.0.1:{process.port}")
    # The 2017 Request is field 1 (EventType) holding field 1 (type): no stubs needed.
    events = channel.unary_stream(
        "/proto.StreamService/Events",
        request_serializer=lambda b: b,
        response_deserializer=lambda b: b,
    )(b"\x0a\x08\x0a\x06canary", timeout=60)
    events.initial_metadata()  # sent once plasma has subscribed

    @settings(suppress_health_check=[HealthCheck.too_slow])
    @given(st.lists(_H2_FRAMES, max_size=12))
    def any_frames(specs: list[tuple[Any, ...]]) -> None:
        _h2_exchange(process.port, _h2_bytes(specs))
        assert process.proc.poll() is None

    try:
        any_frames()
        redis_server.publish("events", orjson.dumps({"meta": {"type": "canary"}, "data": 1}))
        assert b"canary" in next(events)
        received = b""
        while b'"canary"' not in received:
            chunk = sse.recv(65536)
            assert chunk, "the SSE canary was closed"
            received += chunk
    finally:
        events.cancel()
        channel.close()
        sse.close()
