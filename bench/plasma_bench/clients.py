"""Subscriber processes: each runs one asyncio loop holding many SSE and gRPC connections.

A client process is driven over a ``multiprocessing`` pipe by the controller (``ClientPool``).
Connections are plain ``asyncio.Protocol`` objects on raw sockets: SSE is an HTTP/1.1 GET whose
response headers are parsed once; after that, every received buffer is scanned for events with
one regular expression (``wire.EVENT_RE``), up to the last complete frame. gRPC speaks HTTP/2
through the ``h2`` state machine with huge flow-control windows, and gRPC message framing by
hand. ``--strict`` parsing (the smoke mode) instead de-chunks, splits SSE fields and parses
every event's JSON, and decodes every protobuf ``Payload``, to prove the wire format too.

Per connection the process checks that the events of a phase arrive exactly once and in
order (``[base, base + count)``), and records publish-to-receive latency when asked.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import socket
import struct
import time
from array import array
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

import orjson

from plasma_bench.auth import TokenMinter
from plasma_bench.tls import SERVER_NAME, client_context
from plasma_bench.wire import EVENT_RE, grpc_frame, pb_payload_decode, pb_request

__all__ = ["client_main", "raise_nofile"]

_LINGER0 = struct.pack("ii", 1, 0)


def raise_nofile() -> tuple[int, int]:
    """Raise the soft RLIMIT_NOFILE to the hard limit; return the new limits."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


@dataclass
class Phase:
    """What every connection of this process should receive now, and what it did receive."""

    base: int = 0
    count: int = 0
    mode: str = "idle"  # idle | warmup | check
    latency: bool = False
    epoch_ns: int = 0
    conns: int = 0
    done_conns: int = 0
    received: int = 0
    lost: int = 0
    duplicated: int = 0
    reordered: int = 0
    stale: int = 0
    first_ns: int = 0
    last_ns: int = 0
    done_ns: int = 0
    latencies: array[int] = field(default_factory=lambda: array("q"))
    strict_errors: int = 0


class Subscriber:
    """What SSE and gRPC connections share: the per-connection sequence check."""

    __slots__ = (
        "closed",
        "complete",
        "error",
        "etype",
        "nxt",
        "proc",
        "ready",
        "seen",
        "transport",
    )

    def __init__(self, proc: ClientProcess) -> None:
        self.proc = proc
        self.transport: asyncio.Transport | None = None
        self.ready: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self.nxt = 0
        self.seen: set[int] | None = None
        self.complete = False
        self.closed = False
        self.error = ""
        self.etype = proc.event_type
        """The event type this connection subscribed to (its own with ``--unicast``)."""

    def start_phase(self, phase: Phase) -> None:
        self.nxt = phase.base
        self.seen = None
        self.complete = phase.count == 0

    def _fail(self, why: str) -> None:
        if not self.ready.done():
            self.ready.set_result(False)
        if not self.error:
            self.error = why
        if self.transport is not None:
            self.transport.abort()

    def _got(self, seqs: list[int], times: list[int] | None) -> None:
        """Account for the events found in one receive; ``times`` only when timing."""
        phase = self.proc.phase
        n = len(seqs)
        if not n:
            return
        now = time.time_ns()
        if phase.first_ns == 0:
            phase.first_ns = now
        phase.last_ns = now
        phase.received += n
        mode = phase.mode
        if mode == "warmup":
            if not self.complete:
                self.complete = True
                phase.done_conns += 1
                self.proc.maybe_done()
            return
        if mode != "check":
            phase.stale += n
            return
        if times is not None and phase.latency:
            rel = now - phase.epoch_ns
            phase.latencies.extend([rel - t for t in times])
        nxt = self.nxt
        if self.seen is None and seqs[0] == nxt and seqs == list(range(nxt, nxt + n)):
            self.nxt = nxt + n
        else:
            self._slow(seqs, phase)
        if not self.complete and self._have_all(phase):
            self.complete = True
            phase.done_conns += 1
            self.proc.maybe_done()

    def _slow(self, seqs: list[int], phase: Phase) -> None:
        seen = self.seen
        if seen is None:
            seen = self.seen = set(range(phase.base, self.nxt))
        end = phase.base + phase.count
        high = max(seen) if seen else phase.base - 1
        for s in seqs:
            if s < phase.base or s >= end:
                phase.stale += 1
            elif s in seen:
                phase.duplicated += 1
            else:
                if s < high:
                    phase.reordered += 1
                seen.add(s)
                high = max(high, s)

    def _have_all(self, phase: Phase) -> bool:
        if self.seen is None:
            return self.nxt >= phase.base + phase.count
        return len(self.seen) >= phase.count

    def missing(self, phase: Phase) -> int:
        if self.seen is None:
            return max(0, phase.base + phase.count - self.nxt)
        return max(0, phase.count - len(self.seen))

    def lost(self, exc: Exception | None) -> None:
        """The server closed the connection: it will receive nothing more this phase."""
        if self.closed:
            return
        self.closed = True
        self.proc.lost_connections += 1
        if not self.ready.done():
            self.ready.set_result(False)
        self.error = self.error or f"connection lost: {exc!r}"
        if not self.complete:
            self.complete = True
            self.proc.phase.done_conns += 1
            self.proc.maybe_done()

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            sock = self.transport.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER0)
            self.transport.abort()


class SSEClient(Subscriber, asyncio.Protocol):
    """``GET <path>?eventType=...`` with ``Accept: text/event-stream``; scans frames for events."""

    __slots__ = ("_buf", "_chunked", "_headers_done", "_strict_buf", "request")

    def __init__(self, proc: ClientProcess, request: bytes) -> None:
        super().__init__(proc)
        self.request = request
        self._buf = b""
        self._headers_done = False
        self._chunked = False
        self._strict_buf = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.write(self.request)  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        if self._headers_done:
            if self.proc.strict:
                self._strict(data)
                return
            buf = self._buf + data if self._buf else data
            end = buf.rfind(b"\n\n")
            if end < 0:
                self._buf = buf
                return
            self._buf = buf[end + 2 :]
            found = EVENT_RE.findall(buf, 0, end)
            if found:
                if self.proc.phase.latency:
                    self._got([int(s) for s, _ in found], [int(t) for _, t in found])
                else:
                    self._got([int(s) for s, _ in found], None)
            return
        buf = self._buf + data
        head_end = buf.find(b"\r\n\r\n")
        if head_end < 0:
            if len(buf) > 16384:
                self._fail("response headers too long")
            self._buf = buf
            return
        head = buf[:head_end].decode("latin-1")
        status_line, _, rest = head.partition("\r\n")
        parts = status_line.split(" ", 2)
        if len(parts) < 2 or parts[1] != "200":
            self._fail(f"HTTP status {status_line!r}")
            return
        lower = rest.lower()
        if "text/event-stream" not in lower:
            self._fail("response is not text/event-stream")
            return
        self._chunked = "transfer-encoding: chunked" in lower
        self._headers_done = True
        self._buf = b""
        if not self.ready.done():
            self.ready.set_result(True)
        body = buf[head_end + 4 :]
        if body:
            self.data_received(body)

    def _strict(self, data: bytes) -> None:
        """De-chunk, split SSE frames, parse each event's JSON: the format check."""
        if self._chunked:
            buf = self._strict_buf + data
            out = []
            pos = 0
            while True:
                line_end = buf.find(b"\r\n", pos)
                if line_end < 0:
                    break
                size = int(buf[pos:line_end].split(b";", 1)[0], 16)
                if size == 0:
                    self._fail("stream ended (last chunk)")
                    return
                if len(buf) < line_end + 2 + size + 2:
                    break
                chunk_end = line_end + 2 + size
                if buf[chunk_end : chunk_end + 2] != b"\r\n":
                    self.proc.phase.strict_errors += 1
                    self._fail("bad chunk framing")
                    return
                out.append(buf[line_end + 2 : chunk_end])
                pos = chunk_end + 2
            self._strict_buf = buf[pos:]
            text = self._buf + b"".join(out)
        else:
            text = self._buf + data
        frames = text.split(b"\n\n")
        self._buf = frames.pop()
        seqs: list[int] = []
        times: list[int] = []
        for frame in frames:
            data_lines = []
            has_id = False
            for line in frame.split(b"\n"):
                if line.startswith(b"data:"):
                    data_lines.append(line[5:].removeprefix(b" "))
                elif line.startswith(b"id:"):
                    has_id = True
            if not data_lines:
                continue  # retry:, comments
            try:
                event = orjson.loads(b"\n".join(data_lines))
                etype = event["meta"]["type"]
                s = int(event["data"]["s"])
                t = int(event["data"]["t"])
            except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
                self.proc.phase.strict_errors += 1
                continue
            if not has_id or etype != self.etype:
                self.proc.phase.strict_errors += 1
            seqs.append(s)
            times.append(t)
        self._got(seqs, times)

    def eof_received(self) -> bool | None:
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.lost(exc)


class GrpcClient(Subscriber, asyncio.Protocol):
    """One HTTP/2 connection carrying one ``/proto.StreamService/Events`` server stream."""

    __slots__ = (
        "_h2",
        "_msg_buf",
        "_stream_id",
        "_unacked",
        "authority",
        "status",
        "token",
        "types",
    )

    _WINDOW = 2**31 - 1

    def __init__(
        self, proc: ClientProcess, authority: str, types: list[str], token: str | None = None
    ) -> None:
        super().__init__(proc)
        import h2.config
        import h2.connection

        self.authority = authority
        self.types = types
        self.token = token
        self._h2 = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=True, header_encoding="utf-8")
        )
        self._msg_buf = b""
        self._stream_id = 0
        self._unacked = 0
        self.status = ""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        from h2.settings import SettingCodes

        self.transport = transport  # type: ignore[assignment]
        c = self._h2
        c.initiate_connection()
        c.update_settings(
            {SettingCodes.INITIAL_WINDOW_SIZE: self._WINDOW, SettingCodes.ENABLE_PUSH: 0}
        )
        c.increment_flow_control_window(self._WINDOW - 65535)
        sid = self._stream_id = c.get_next_available_stream_id()
        c.send_headers(
            sid,
            [
                (":method", "POST"),
                (":scheme", "https" if transport.get_extra_info("ssl_object") else "http"),
                (":path", "/proto.StreamService/Events"),
                (":authority", self.authority),
                ("content-type", "application/grpc"),
                ("te", "trailers"),
                ("user-agent", "plasma-bench"),
                *([("authorization", f"Bearer {self.token}")] if self.token else []),
            ],
        )
        c.send_data(sid, grpc_frame(pb_request(self.types)), end_stream=True)
        transport.write(c.data_to_send())  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        import h2.events
        import h2.exceptions

        c = self._h2
        try:
            events = c.receive_data(data)
        except h2.exceptions.ProtocolError as exc:
            self._fail(f"HTTP/2 protocol error: {exc}")
            return
        for ev in events:
            if isinstance(ev, h2.events.DataReceived):
                self._unacked += ev.flow_controlled_length
                self._messages(ev.data)
            elif isinstance(ev, h2.events.ResponseReceived):
                headers = dict(ev.headers)  # type: ignore[arg-type]
                if headers.get(":status") != "200":
                    self._fail(f"HTTP/2 status {headers.get(':status')}")
                elif "grpc-status" in headers and headers["grpc-status"] != "0":
                    self._fail(f"grpc-status {headers['grpc-status']}")
                elif not self.ready.done():
                    self.ready.set_result(True)
            elif isinstance(ev, h2.events.TrailersReceived):
                headers = dict(ev.headers)  # type: ignore[arg-type]
                self.status = f"{headers.get('grpc-status')} {headers.get('grpc-message', '')}"
                self._fail(f"stream ended: grpc-status {self.status}")
            elif isinstance(ev, h2.events.StreamReset):
                self._fail(f"stream reset: {ev.error_code!r}")
            elif isinstance(ev, h2.events.ConnectionTerminated):
                self._fail(f"GOAWAY: {ev.error_code!r}")
            elif isinstance(ev, h2.events.RemoteSettingsChanged) and not self.ready.done():
                # Some servers send response headers only with the first message; the
                # controller's warm-up events prove the subscription either way.
                asyncio.get_running_loop().call_later(0.2, self._settle)
        if self._unacked > 1 << 30:
            c.acknowledge_received_data(self._unacked, self._stream_id)
            self._unacked = 0
        out = c.data_to_send()
        if out and self.transport is not None:
            self.transport.write(out)

    def _settle(self) -> None:
        if not self.ready.done() and self.transport is not None:
            self.ready.set_result(True)

    def _messages(self, data: bytes) -> None:
        buf = self._msg_buf + data if self._msg_buf else data
        pos = 0
        n = len(buf)
        strict = self.proc.strict
        payloads: list[bytes] = []
        while pos + 5 <= n:
            size = int.from_bytes(buf[pos + 1 : pos + 5], "big")
            end = pos + 5 + size
            if end > n:
                break
            if strict:
                if buf[pos] != 0:
                    self.proc.phase.strict_errors += 1
                payloads.append(buf[pos + 5 : end])
            pos = end
        self._msg_buf = buf[pos:]
        if strict:
            seqs: list[int] = []
            times: list[int] = []
            for p in payloads:
                try:
                    etype, raw = pb_payload_decode(p)
                    d = orjson.loads(raw)
                    seqs.append(int(d["s"]))
                    times.append(int(d["t"]))
                except (ValueError, KeyError, TypeError, IndexError):
                    self.proc.phase.strict_errors += 1
                    continue
                if etype != self.etype:
                    self.proc.phase.strict_errors += 1
            self._got(seqs, times)
            return
        found = EVENT_RE.findall(buf, 0, pos)
        if found:
            if self.proc.phase.latency:
                self._got([int(s) for s, _ in found], [int(t) for _, t in found])
            else:
                self._got([int(s) for s, _ in found], None)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.lost(exc)


class ClientProcess:
    """The state of one subscriber process, and its command loop."""

    def __init__(self, conn: Connection, replies: Connection, index: int) -> None:
        self.conn = conn
        self.replies = replies
        self.index = index
        self.subs: list[Subscriber] = []
        self.phase = Phase()
        self.strict = False
        self.event_type = "bench"
        self.lost_connections = 0
        self._done_sent = True
        self._stop = asyncio.get_running_loop().create_future()

    # --- commands ------------------------------------------------------------------------------

    def send(self, *msg: Any) -> None:
        self.replies.send(msg)

    def on_command(self) -> None:
        while self.conn.poll():
            try:
                cmd, args = self.conn.recv()
            except EOFError:
                if not self._stop.done():
                    self._stop.set_result(None)
                return
            handler = getattr(self, "cmd_" + cmd)
            result = handler(**args)
            if asyncio.iscoroutine(result):
                task = asyncio.get_running_loop().create_task(result)
                task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        if not task.cancelled() and task.exception() is not None:
            self.send("error", repr(task.exception()))

    async def cmd_connect(
        self,
        kind: str,
        host: str,
        port: int,
        count: int,
        path: str,
        types: list[str],
        concurrency: int,
        timeout: float,
        strict: bool,
        auth: dict[str, str] | None = None,
        unicast_from: int | None = None,
        tls: str | None = None,
    ) -> None:
        """Open ``count`` connections. With ``unicast_from``, the k-th one subscribes to its own
        type ``types[0] + str(unicast_from + k)`` (``path`` holds ``{type}`` for it)."""
        self.strict = strict
        self.event_type = types[0]
        loop = asyncio.get_running_loop()
        sem = asyncio.Semaphore(concurrency)
        started = time.monotonic()
        deadline = started + timeout
        authority = f"{host}:{port}"
        head = (
            f"GET {path} HTTP/1.1\r\nHost: {authority}\r\nAccept: text/event-stream\r\n"
            f"Cache-Control: no-cache\r\nUser-Agent: plasma-bench\r\n"
        )
        request = (head + "\r\n").encode()
        minter = TokenMinter(auth, types) if auth else None
        errors: dict[str, int] = {}
        # --tls: trust the bench's certificate; SSE asks for HTTP/1.1, gRPC for h2 (ALPN).
        context = client_context(tls, ["h2" if kind == "grpc" else "http/1.1"]) if tls else None
        server_name = SERVER_NAME if tls else None

        async def one(k: int) -> bool:
            async with sem:
                sub: Subscriber
                token = minter.mint() if minter is not None else None
                if unicast_from is not None:
                    own = f"{types[0]}{unicast_from + k}"
                    sub = SSEClient(
                        self,
                        head.replace("{type}", own, 1).encode() + b"\r\n",
                    )
                    sub.etype = own
                elif kind == "sse":
                    if token is not None:
                        sub = SSEClient(
                            self, f"{head}Authorization: Bearer {token}\r\n\r\n".encode()
                        )
                    else:
                        sub = SSEClient(self, request)
                else:
                    sub = GrpcClient(self, authority, types, token)
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                sock.setblocking(False)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                try:
                    async with asyncio.timeout(max(0.1, deadline - time.monotonic())):
                        await loop.sock_connect(sock, (host, port))
                        await loop.create_connection(
                            lambda: sub,  # type: ignore[arg-type, return-value]
                            sock=sock,
                            ssl=context,
                            server_hostname=server_name,
                        )
                        ok = await sub.ready
                except (OSError, TimeoutError) as exc:  # ssl.SSLError is an OSError
                    sock.close()
                    sub.close()
                    key = type(exc).__name__ + (f" {exc.errno}" if isinstance(exc, OSError) else "")
                    errors[key] = errors.get(key, 0) + 1
                    return False
                if not ok:
                    errors[sub.error[:80]] = errors.get(sub.error[:80], 0) + 1
                    sub.close()
                    return False
                sub.start_phase(self.phase)
                self.subs.append(sub)
                return True

        results = await asyncio.gather(*(one(k) for k in range(count)))
        self.send(
            "connected",
            {
                "ok": sum(results),
                "failed": count - sum(results),
                "errors": errors,
                "seconds": time.monotonic() - started,
                "total": len(self.subs),
            },
        )

    def cmd_phase(self, mode: str, base: int, count: int, latency: bool, epoch_ns: int) -> None:
        """Start a phase: from now on each connection expects ``[base, base + count)``."""
        self.phase = phase = Phase(
            base=base, count=count, mode=mode, latency=latency, epoch_ns=epoch_ns
        )
        live = [s for s in self.subs if not s.closed and s.transport is not None]
        self.subs = live
        phase.conns = len(live)
        for s in live:
            s.start_phase(phase)
        self._done_sent = False
        self.send("phase_started", {"conns": phase.conns})
        self.maybe_done()

    def maybe_done(self) -> None:
        phase = self.phase
        if not self._done_sent and phase.done_conns >= phase.conns:
            phase.done_ns = time.time_ns()
            self._done_sent = True
            self.send("done", {"done_ns": phase.done_ns})

    def cmd_collect(self) -> None:
        phase = self.phase
        lost = 0
        if phase.mode == "check":
            lost = sum(s.missing(phase) for s in self.subs)
        incomplete = phase.conns - phase.done_conns
        errors: dict[str, int] = {}
        for s in self.subs:
            if s.error:
                errors[s.error[:80]] = errors.get(s.error[:80], 0) + 1
        self.send(
            "collected",
            {
                "conns": phase.conns,
                "incomplete": incomplete,
                "received": phase.received,
                "lost": lost,
                "duplicated": phase.duplicated,
                "reordered": phase.reordered,
                "stale": phase.stale,
                "strict_errors": phase.strict_errors,
                "first_ns": phase.first_ns,
                "last_ns": phase.last_ns,
                "done_ns": phase.done_ns,
                "latencies": phase.latencies.tobytes(),
                "lost_connections": self.lost_connections,
                "errors": errors,
                "cpu": _own_cpu(),
            },
        )
        phase.latencies = array("q")

    def cmd_close(self, kind: str = "") -> None:
        keep = []
        for s in self.subs:
            is_grpc = isinstance(s, GrpcClient)
            if not kind or (kind == "grpc") == is_grpc:
                s.close()
            else:
                keep.append(s)
        self.subs = keep
        self.send("closed", {"total": len(keep)})

    def cmd_stop(self) -> None:
        for s in self.subs:
            s.close()
        self.subs = []
        if not self._stop.done():
            self._stop.set_result(None)

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        loop.add_reader(self.conn.fileno(), self.on_command)
        self.send("hello", {"pid": os.getpid(), "nofile": list(raise_nofile())})
        await self._stop
        loop.remove_reader(self.conn.fileno())
        await asyncio.sleep(0.05)


def _own_cpu() -> float:
    t = os.times()
    return t.user + t.system


def client_main(conn: Connection, replies: Connection, index: int) -> None:
    """Entry point of a subscriber process: commands come on ``conn``, replies go to ``replies``."""
    raise_nofile()

    async def main() -> None:
        await ClientProcess(conn, replies, index).run()

    try:
        import uvloop
    except ImportError:
        asyncio.run(main())
    else:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(main())
    conn.close()
    replies.close()
