"""Events: parse {"meta":{"type":...},"data":...} once; data is any JSON and passes through."""

from __future__ import annotations

import json
from typing import Any

import orjson
import pytest

from plasma.errors import InvalidEvent
from plasma.events import (
    EVENT_OVERHEAD,
    Event,
    batch_is_exact,
    parse_batch,
    parse_event,
    type_prefixes,
)


def _raw(data: Any, type: str = "program:1234:views") -> bytes:
    return json.dumps({"meta": {"type": type}, "data": data}, ensure_ascii=False).encode()


@pytest.mark.parametrize(
    "data",
    [
        {"views": 10},
        {"nested": {"list": [1, 2.5, {"deep": [None, True, False]}], "s": "x"}},
        42,
        -7,
        3.25,
        "a string",
        "",
        None,
        True,
        [],
        [1, "two", None],
        {},
        {"unicode": "日本語 ✓ 🎉", "escaped": 'quote " backslash \\ newline \n tab \t'},
        {"ctl": "\u0001\u001f"},
    ],
)
def test_data_passes_through(data: Any) -> None:
    event = parse_event(_raw(data))
    assert event.type == "program:1234:views"
    assert json.loads(event.data) == data
    assert json.loads(event.body) == {"meta": {"type": "program:1234:views"}, "data": data}


def test_body_is_compact_json() -> None:
    event = parse_event(b'{ "meta" : { "type" : "a:b" } , "data" : { "x" : [ 1 , 2 ] } }')
    assert event.body == b'{"meta":{"type":"a:b"},"data":{"x":[1,2]}}'
    assert event.data == b'{"x":[1,2]}'


def test_string_data_keeps_its_quotes() -> None:
    event = parse_event(b'{"meta":{"type":"a"},"data":"hello"}')
    assert event.data == b'"hello"'
    assert event.body == b'{"meta":{"type":"a"},"data":"hello"}'


def test_number_data() -> None:
    assert parse_event(b'{"meta":{"type":"a"},"data":12}').data == b"12"


def test_null_and_missing_data() -> None:
    assert parse_event(b'{"meta":{"type":"a"},"data":null}').data == b"null"
    assert parse_event(b'{"meta":{"type":"a"}}').data == b"null"


def test_unicode_is_kept_as_utf8() -> None:
    event = parse_event('{"meta":{"type":"a"},"data":"é日本🎉"}'.encode())
    assert event.data.decode("utf-8") == '"é日本🎉"'
    escaped = parse_event(b'{"meta":{"type":"a"},"data":"\\u00e9\\ud83c\\udf89"}')
    assert json.loads(escaped.data) == "é🎉"


def test_unicode_type() -> None:
    event = parse_event('{"meta":{"type":"программа:1"},"data":1}'.encode())
    assert event.type == "программа:1"
    assert json.loads(event.body)["meta"]["type"] == "программа:1"


def test_str_input_is_accepted() -> None:
    assert parse_event('{"meta":{"type":"a"},"data":[1]}').data == b"[1]"


@pytest.mark.parametrize(
    "number",
    [
        "123456789012345678901234567890",
        "-123456789012345678901234567890",
        "18446744073709551616",  # 2**64
        "-9223372036854775809",  # below int64
        "9223372036854775807",  # int64 max
        "18446744073709551615",  # uint64 max
    ],
)
def test_integers_beyond_64_bits_are_exact(number: str) -> None:
    event = parse_event(b'{"meta":{"type":"a"},"data":{"n":%b,"s":"x"}}' % number.encode())
    assert event.data == b'{"n":%b,"s":"x"}' % number.encode()
    assert json.loads(event.body)["data"]["n"] == int(number)


def test_big_integer_with_unicode() -> None:
    raw = '{"meta":{"type":"a"},"data":["日本",123456789012345678901234567890]}'.encode()
    assert parse_event(raw).data.decode() == '["日本",123456789012345678901234567890]'


def test_extra_top_level_keys_are_dropped_from_the_body() -> None:
    event = parse_event(b'{"meta":{"type":"a","other":1},"data":1,"extra":true}')
    assert orjson.loads(event.body) == {"meta": {"type": "a"}, "data": 1}


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"", "invalid_json"),
        (b"not json", "invalid_json"),
        (b'{"meta":{"type":"a"},"data":', "invalid_json"),
        (b"{'meta': {'type': 'a'}}", "invalid_json"),
        (b'{"meta":{"type":"a"},"data":NaN}', "invalid_json"),
        (b'{"meta":{"type":"a"},"data":Infinity}', "invalid_json"),
        (b'{"meta":{"type":"a"},"data":1e400}', "invalid_json"),
        (b'{"meta":{"type":"a"},"data":[12345678901234567890123,NaN]}', "invalid_json"),
        (b'{"meta":{"type":"a"},"data":[12345678901234567890123,1e400]}', "invalid_json"),
        (b'{"meta":{"type":"a"},"data":"\\ud800"}', "invalid_json"),
        (b'{"meta":{"type":"\\ud800"},"data":12345678901234567890123}', "invalid_json"),
        (b'{"meta":{"type":"a"},"data":"\xff\xfe"}', "invalid_json"),
        (b"[" * 100_000, "invalid_json"),
        (b"[1,2]", "not_object"),
        (b'"event"', "not_object"),
        (b"42", "not_object"),
        (b"null", "not_object"),
        (b'{"data":1}', "no_type"),
        (b'{"meta":null,"data":1}', "no_type"),
        (b'{"meta":"program","data":1}', "no_type"),
        (b'{"meta":{},"data":1}', "no_type"),
        (b'{"meta":{"type":""},"data":1}', "no_type"),
        (b'{"meta":{"type":null},"data":1}', "no_type"),
        (b'{"meta":{"type":42},"data":1}', "no_type"),
        (b'{"meta":{"type":["a"]},"data":1}', "no_type"),
    ],
)
def test_invalid_messages(raw: bytes, reason: str) -> None:
    with pytest.raises(InvalidEvent) as info:
        parse_event(raw)
    assert info.value.reason == reason
    assert str(info.value)


def test_too_large() -> None:
    raw = _raw("x" * 2000)
    with pytest.raises(InvalidEvent) as info:
        parse_event(raw, max_bytes=1000)
    assert info.value.reason == "too_large"
    assert parse_event(raw, max_bytes=len(raw)).type == "program:1234:views"


def test_encode_is_cached_per_encoder() -> None:
    calls: list[Event] = []

    def encoder(event: Event) -> bytes:
        calls.append(event)
        return b"frame:" + event.data

    event = parse_event(b'{"meta":{"type":"a"},"data":1}')
    assert event.encode(encoder) == b"frame:1"
    assert event.encode(encoder) is event.encode(encoder)
    assert len(calls) == 1


@pytest.mark.parametrize(
    ("type", "prefixes"),
    [
        ("a", ["a"]),
        ("a:b", ["a", "a:b"]),
        ("program:1234:views", ["program", "program:1234", "program:1234:views"]),
    ],
)
def test_type_prefixes(type: str, prefixes: list[str]) -> None:
    assert type_prefixes(type) == prefixes


def test_an_event_holds_one_copy_and_drops_its_frames_on_request() -> None:
    event = parse_event(b'{"meta":{"type":"a"},"data":{"x":"' + b"y" * 1000 + b'"}}')
    assert event.data == event.body[len(b'{"meta":{"type":"a"},"data":') : -1]
    assert event.data_text() == event.data.decode()
    assert event.held_bytes == len(event.body) + EVENT_OVERHEAD

    def frame(event: Event) -> bytes:
        return b"frame:" + event.body

    first = event.encode(frame)
    assert event.encode(frame) is first, "a fan-out shares one encoding"
    event.forget_frames()
    assert event.encode(frame) is not first and event.encode(frame) == first


def test_long_digit_runs_anywhere_in_a_large_message_are_found() -> None:
    pad = b"x" * 500_000
    exact = parse_event(b'{"meta":{"type":"a"},"data":["%b",-9223372036854775808]}' % pad)
    assert exact.data.endswith(b",-9223372036854775808]")
    big = parse_event(b'{"meta":{"type":"a"},"data":["%b",18446744073709551616]}' % pad)
    assert big.data.endswith(b",18446744073709551616]"), "past 2**64: kept exact"


# --- batches (the publish API) ----------------------------------------------------------------


def test_batch_is_each_event_by_the_same_rules() -> None:
    items = [
        {"meta": {"type": "a"}, "data": 123456789012345678901234567890},
        {"meta": {"type": "b", "extra": 1}, "data": [1, {"x": None}]},
    ]
    batch = parse_batch(json.dumps(items).encode())
    singles = [parse_event(json.dumps(i).encode()) for i in items]
    assert batch.types == ["a", "b"]
    forwarded = [parse_event(body) for body in batch.bodies]
    assert [(e.type, e.data, e.body) for e in forwarded] == [
        (e.type, e.data, e.body) for e in singles
    ]
    assert forwarded[0].data == b"123456789012345678901234567890"


def test_batch_forwards_an_element_as_orjson_writes_it() -> None:
    """The fast path publishes the element itself (one orjson call, extra keys kept) and
    checks its size as a reader would; the slow path (long integers) publishes the event."""
    batch = parse_batch(b'[{"meta":{"type":"a","by":"x"},"data":[1, 2],"extra":true}]')
    assert batch.bodies == [b'{"meta":{"type":"a","by":"x"},"data":[1,2],"extra":true}']
    raw = b'[{"meta":{"type":"a"},"data":1,"extra":"' + b"x" * 100 + b'"}]'
    with pytest.raises(InvalidEvent) as info:
        parse_batch(raw, max_bytes=100)  # the event alone would fit; what is sent does not
    assert info.value.reason == "too_large"
    big = parse_batch(b'[{"meta":{"type":"a"},"data":123456789012345678901,"extra":1}]')
    assert big.bodies == [b'{"meta":{"type":"a"},"data":123456789012345678901}']
    deep = b'[{"meta":{"type":"a"},"data":' + b"[" * 253 + b"]" * 253 + b"}]"
    assert parse_event(parse_batch(deep).bodies[0]).data == b"[" * 253 + b"]" * 253


@pytest.mark.parametrize(
    ("raw", "reason", "index"),
    [
        (b'{"meta":{"type":"a"}}', "not_array", None),
        (b"[1", "invalid_json", None),
        (b'[{"meta":{"type":"a"}},{"meta":{}}]', "no_type", 1),
        (b'[{"meta":{"type":"a"}},5]', "not_object", 1),
        (b'[{"meta":{"type":"a"}},{"meta":"a"}]', "no_type", 1),
        (b'[{"meta":{"type":"a"}},{"meta":{"type":""}}]', "no_type", 1),
        (b'[{"meta":{"type":"a"}},{"meta":{"type":["a"]}}]', "no_type", 1),
        (
            b'[{"meta":{"type":"a"}},{"meta":{"type":"b"},"data":'
            + b"[" * 300
            + b"]" * 300
            + b"}]",
            "too_deep",
            1,
        ),
        (b'[{"meta":{"type":"a"},"data":[1e400,123456789012345678901]}]', "invalid_json", 0),
        (b'[{"meta":{"type":"a"},"data":"' + b"x" * 200 + b'"}]', "too_large", 0),
    ],
)
def test_invalid_batch_names_the_event(raw: bytes, reason: str, index: int | None) -> None:
    with pytest.raises(InvalidEvent) as info:
        parse_batch(raw, max_bytes=128)
    assert info.value.reason == reason
    assert info.value.index == index
    if index is not None:
        assert str(info.value).startswith(f"event {index}: ")


def test_a_batch_is_scanned_for_long_integers_once_and_keeps_their_digits() -> None:
    from plasma.hub import Hub
    from plasma.ingest import Batch
    from plasma.metrics import Metrics

    small = b'{"meta":{"type":"a"},"data":12345678901234567890}'  # 20 digits: orjson is exact
    huge = b'{"meta":{"type":"a"},"data":-123456789012345678901234567890}'
    assert batch_is_exact([small, small]) and not batch_is_exact([small, huge])
    assert not batch_is_exact(["text", "messages"])  # str messages: checked one by one
    events = Hub(Metrics()).publish_batch(Batch([small, huge, small], [b"c"] * 3, None))
    assert [e.data for e in events] == [
        b"12345678901234567890",
        b"-123456789012345678901234567890",
        b"12345678901234567890",
    ]
