"""The bytes the benchmark writes and reads: events, RESP, HTTP/1.1 requests, gRPC/protobuf.

Events carry a global sequence number ``s`` and a publish timestamp ``t`` (ns since the run's
epoch, so the number stays under 19 digits and plasma's fast JSON path is used) in ``data``:
``{"meta":{"type":"bench"},"data":{"s":12,"t":3456789,"p":"xxxx"}}``. Subscribers find them with
one regular expression over everything received, whatever the framing (SSE or gRPC).
"""

from __future__ import annotations

import re

__all__ = [
    "EVENT_RE",
    "event_json",
    "grpc_frame",
    "http_post",
    "pb_payload_decode",
    "pb_request",
    "resp_publish",
]

EVENT_RE = re.compile(rb'"s":(\d+),"t":(\d+)')
"""Finds (sequence, publish time) in any framing of the event's data."""


def event_json(event_type: str, seq: int, t_ns: int, size: int) -> bytes:
    """One event of about ``size`` bytes (padding in ``data.p``)."""
    head = b'{"meta":{"type":"%s"},"data":{"s":%d,"t":%d,"p":"' % (
        event_type.encode(),
        seq,
        t_ns,
    )
    pad = max(0, size - len(head) - 3)
    return head + b"x" * pad + b'"}}'


def resp_publish(channel: bytes, payload: bytes) -> bytes:
    """A Redis ``PUBLISH channel payload`` command in RESP."""
    return b"*3\r\n$7\r\nPUBLISH\r\n$%d\r\n%b\r\n$%d\r\n%b\r\n" % (
        len(channel),
        channel,
        len(payload),
        payload,
    )


def http_post(host: str, path: str, body: bytes) -> bytes:
    """An HTTP/1.1 keep-alive POST (the Nchan publisher)."""
    return (
        b"POST %b HTTP/1.1\r\nHost: %b\r\nContent-Type: text/plain\r\n"
        b"Accept: text/plain\r\nContent-Length: %d\r\n\r\n%b"
        % (path.encode(), host.encode(), len(body), body)
    )


# --- protobuf, just the messages of stream.proto -------------------------------------------


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _ld(field: int, payload: bytes) -> bytes:
    return _varint(field << 3 | 2) + _varint(len(payload)) + payload


def pb_request(types: list[str]) -> bytes:
    """``Request{Events: [EventType{type}]}``."""
    return b"".join(_ld(1, _ld(1, t.encode())) for t in types)


def _read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    shift = result = 0
    while True:
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7


def _fields(buf: bytes) -> dict[int, bytes]:
    out: dict[int, bytes] = {}
    pos = 0
    while pos < len(buf):
        key, pos = _read_varint(buf, pos)
        wire = key & 7
        if wire == 2:
            n, pos = _read_varint(buf, pos)
            out[key >> 3] = buf[pos : pos + n]
            pos += n
        elif wire == 0:
            _, pos = _read_varint(buf, pos)
        elif wire == 5:
            pos += 4
        elif wire == 1:
            pos += 8
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
    return out


def pb_payload_decode(buf: bytes) -> tuple[str, bytes]:
    """``Payload`` → (eventType.type, data)."""
    f = _fields(buf)
    etype = _fields(f.get(1, b"")).get(1, b"").decode()
    return etype, f.get(2, b"")


def grpc_frame(message: bytes) -> bytes:
    """gRPC length-prefixed message (uncompressed)."""
    return b"\x00" + len(message).to_bytes(4, "big") + message
