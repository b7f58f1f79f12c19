"""The canaries of the attack tests: one SSE stream and one gRPC stream that must hear every event.

Run as its own process (``python -m tests.attacks.canary PORT REDIS_PORT [CA_FILE]``, TLS with
a CA file) so the attacker's
work in the test process cannot delay the canaries' reads: it subscribes an SSE stream (raw
socket) and a gRPC ``Events`` stream (grpcio) to type ``canary``, says ``ready`` on stdout,
publishes one event every ``INTERVAL`` seconds through Redis (each carrying its publication
time), and when stdin closes prints one JSON line: per stream, the events received and the
longest delay from publication to arrival, and the numbers of the events it never got.
"""

from __future__ import annotations

import asyncio
import re
import ssl
import sys
import time
from pathlib import Path
from typing import Any

import grpc
import orjson
import redis.asyncio as aioredis

INTERVAL = 0.2
"""Seconds between canary events."""
SETTLE = 1.5
"""Seconds the canaries keep reading after the last event: a later arrival counts as missing."""

# The data of a canary event, as SSE (inside the event's JSON) and gRPC (Payload.data) carry it.
_EVENT = re.compile(rb'\{"n":(\d+),"t":([0-9.]+)\}')


def events_request(event_type: str) -> bytes:
    """``proto.Request{Events: [EventType{type}]}`` in protobuf wire format."""
    name = event_type.encode()
    inner = b"\x0a" + bytes([len(name)]) + name
    return b"\x0a" + bytes([len(inner)]) + inner


class Ear:
    """What one canary stream heard: the delay of each numbered event."""

    def __init__(self) -> None:
        self.delays: dict[int, float] = {}

    def hear(self, chunk: bytes) -> None:
        now = time.time()
        for match in _EVENT.finditer(chunk):
            self.delays.setdefault(int(match.group(1)), now - float(match.group(2)))

    def report(self, published: int) -> dict[str, Any]:
        return {
            "received": len(self.delays),
            "max_delay": max(self.delays.values(), default=0.0),
            "missing": [n for n in range(published) if n not in self.delays],
        }


async def _read_sse(port: int, ear: Ear, ready: asyncio.Event, tls: ssl.SSLContext | None) -> None:
    host = "localhost" if tls else "127.0.0.1"
    reader, writer = await asyncio.open_connection(host, port, ssl=tls)
    writer.write(
        b"GET /?eventType=canary HTTP/1.1\r\nHost: canary\r\nAccept: text/event-stream\r\n\r\n"
    )
    tail = b""
    while chunk := await reader.read(65536):
        if b"retry:" in chunk:
            ready.set()
        data = tail + chunk
        ear.hear(data)
        tail = data[-200:]


async def _read_grpc(port: int, ear: Ear, ready: asyncio.Event, ca: bytes | None) -> None:
    if ca is None:
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    else:
        credentials = grpc.ssl_channel_credentials(root_certificates=ca)
        channel = grpc.aio.secure_channel(f"localhost:{port}", credentials)
    async with channel:
        events = channel.unary_stream(
            "/proto.StreamService/Events",
            request_serializer=lambda b: b,
            response_deserializer=lambda b: b,
        )
        call = events(events_request("canary"))
        await call.initial_metadata()
        ready.set()
        async for message in call:
            ear.hear(bytes(message))


async def main(port: int, redis_port: int, ca_file: str = "") -> None:
    ca = Path(ca_file).read_bytes() if ca_file else None
    tls = ssl.create_default_context(cadata=ca.decode()) if ca else None
    sse, grpc_ear = Ear(), Ear()
    sse_ready, grpc_ready = asyncio.Event(), asyncio.Event()
    readers = [
        asyncio.create_task(_read_sse(port, sse, sse_ready, tls)),
        asyncio.create_task(_read_grpc(port, grpc_ear, grpc_ready, ca)),
    ]
    await asyncio.wait_for(asyncio.gather(sse_ready.wait(), grpc_ready.wait()), 10)
    loop = asyncio.get_running_loop()
    stdin_closed: asyncio.Future[None] = loop.create_future()

    def on_stdin() -> None:
        if not stdin_closed.done():
            stdin_closed.set_result(None)

    loop.add_reader(sys.stdin.fileno(), on_stdin)
    print("ready", flush=True)
    published = 0
    async with aioredis.Redis(port=redis_port) as r:
        while not stdin_closed.done():
            body = {"meta": {"type": "canary"}, "data": {"n": published, "t": time.time()}}
            await r.publish("events", orjson.dumps(body))
            published += 1
            await asyncio.wait({stdin_closed}, timeout=INTERVAL)
    await asyncio.sleep(SETTLE)
    for task in readers:
        task.cancel()
    result = {"published": published, "sse": sse.report(published)}
    result["grpc"] = grpc_ear.report(published)
    print(orjson.dumps(result).decode(), flush=True)


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]), int(sys.argv[2]), *sys.argv[3:]))
