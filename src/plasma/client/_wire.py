"""The protobuf wire form of plasma's three gRPC messages, written and read by hand.

``Request{repeated EventType Events = 1; bool forceClose = 2; string lastEventId = 3}``,
``EventType{string type = 1}`` and ``Payload{EventType eventType = 1; string data = 2;
string id = 3}`` (``stream.proto``/``stream_v2.proto``, which ``plasma proto`` prints). Doing
it by hand keeps the client free of generated stubs and of protobuf's descriptor pool, where
``stream.proto`` and ``stream_v2.proto`` would clash; unknown fields are skipped, as protobuf does.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["WireError", "decode_payload", "encode_request"]


class WireError(ValueError):
    """Bytes that are not a valid Payload."""


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _field(number: int, value: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(value)) + value


def encode_request(
    types: Sequence[str], last_event_id: str = "", force_close: bool = False
) -> bytes:
    out = b"".join(_field(1, _field(1, t.encode())) for t in types)
    if force_close:
        out += b"\x10\x01"
    if last_event_id:
        out += _field(3, last_event_id.encode())
    return out


def _read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = 0
    shift = 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise WireError("truncated or overlong varint")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def _fields(buf: bytes) -> dict[int, bytes]:
    """The last value of each length-delimited field; other wire types are skipped."""
    out: dict[int, bytes] = {}
    pos = 0
    while pos < len(buf):
        key, pos = _read_varint(buf, pos)
        number, wire_type = key >> 3, key & 7
        if wire_type == 0:
            _, pos = _read_varint(buf, pos)
        elif wire_type == 1:
            pos += 8
        elif wire_type == 5:
            pos += 4
        elif wire_type == 2:
            size, pos = _read_varint(buf, pos)
            if pos + size > len(buf):
                raise WireError("field runs past the message")
            out[number] = buf[pos : pos + size]
            pos += size
        else:
            raise WireError(f"unsupported wire type {wire_type}")
        if pos > len(buf):
            raise WireError("field runs past the message")
    return out


def decode_payload(buf: bytes) -> tuple[str, str, str]:
    """``(type, data, id)`` of a Payload."""
    fields = _fields(buf)
    try:
        event_type = _fields(fields.get(1, b"")).get(1, b"").decode()
        return event_type, fields.get(2, b"").decode(), fields.get(3, b"").decode()
    except UnicodeDecodeError as exc:
        raise WireError(f"a string field is not UTF-8: {exc}") from None
