"""One load-generator process for the scale scenarios: thousands of SSE streams on one epoll.

A Python client per connection (asyncio streams, aiohttp) costs several KB and several µs per
read; 19,000 streams per process need less. Here a stream is one non-blocking socket and a small
``_Stream`` record; one ``select.epoll`` serves them all, and a read is accounted for with a
few C-speed calls (``bytes.find``, one regex ``findall`` over the whole read).

Run by ``plasma_bench.scale``, one per ~15,000 streams, each from its own loopback source address
(127.0.0.x) so ephemeral ports never run out:

    python -m plasma_bench.swarm HOST PORT PATH COUNT SOURCE_IP MODE

MODE ``fanout``: connect COUNT streams, then account for every event (data field ``s``, the
sequence; ``t``, the publish time in ns). MODE ``storm``: the same, and every stream that ends
reconnects at once with its ``Last-Event-ID`` (after a refused connect, 50 ms later; after a
``503``, when ``Retry-After`` says). Commands on stdin, one per line, answered with one JSON
line on stdout: ``report`` (counts so far), ``quit``. It prints ``{"ready": ...}`` once every
stream has its ``200`` head.

Arrival times are the kernel's (``SO_TIMESTAMPNS``: when the server's bytes reached this
socket), not when this process got round to reading them, so a busy load generator does not
inflate the server's figure.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import resource
import select
import socket
import struct
import sys
import time
from typing import Any

__all__ = ["main"]

_SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)
_CMSG = socket.CMSG_SPACE(16)
_READ = 1 << 16
_SEQ = re.compile(rb'"s":(\d+)')
_PUBLISHED = re.compile(rb'"t":(\d+)')
_IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)
_IN_FLIGHT = 500
"""Connects not yet answered at once, while connecting the first time (a storm's reconnects
are not paced: every stream reconnects at once)."""
_REFUSED_DELAY = 0.05

CONNECTING, HEAD, STREAMING, WAITING = range(4)


class _Stream:
    __slots__ = ("buf", "first_at", "index", "last_id", "next", "sock", "state", "wake")

    def __init__(self, index: int) -> None:
        self.index = index
        self.sock: socket.socket | None = None
        self.state = WAITING
        self.buf = b""
        self.last_id = b""
        self.next = -1
        """The sequence expected next (-1: whatever comes first)."""
        self.first_at = 0
        """Kernel arrival (ns) of the first event published after ``Swarm.mark``."""
        self.wake = 0.0


class Swarm:
    def __init__(self, host: str, port: int, path: str, count: int, source: str, mode: str) -> None:
        self.addr = (host, port)
        self.path = path
        self.source = source
        self.storm = mode == "storm"
        self.streams = [_Stream(i) for i in range(count)]
        self.by_fd: dict[int, _Stream] = {}
        self.ep = select.epoll()
        self.connecting = 0
        self.todo = list(range(count))
        """Streams to (re)connect, by index."""
        self.waiting: list[int] = []
        """Streams that reconnect later (after a refusal or a ``503``), by index."""
        self.ready = 0
        self.started = time.time()
        self.ready_at = 0.0
        self.mark = 0
        """Publish time (ns) from which ``first_at`` is taken (the restart, in a storm)."""
        # Per sequence: copies received, latest kernel arrival, latest read (ns).
        self.copies: dict[int, int] = {}
        self.latest: dict[int, int] = {}
        self.published: dict[int, int] = {}
        self.lost = self.duplicated = 0
        """Sequences skipped; sequences seen again or out of order (never both)."""
        self.refused = self.retried_503 = self.errors = self.connects = 0
        self.statuses: dict[str, int] = {}

    # --- connecting ----------------------------------------------------------------------

    def _open(self, index: int) -> None:
        st = self.streams[index]
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        sock.setsockopt(socket.SOL_SOCKET, _SO_TIMESTAMPNS, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 16)
        # The port is chosen at connect, per destination, where TIME-WAIT ports may be reused.
        sock.setsockopt(socket.SOL_IP, _IP_BIND_ADDRESS_NO_PORT, 1)
        sock.bind((self.source, 0))
        err = sock.connect_ex(self.addr)
        if err not in (0, errno.EINPROGRESS):
            sock.close()
            self._later(st, index, _REFUSED_DELAY)
            self.refused += 1
            return
        st.sock, st.state, st.buf = sock, CONNECTING, b""
        self.by_fd[sock.fileno()] = st
        self.ep.register(sock.fileno(), select.EPOLLOUT)
        self.connecting += 1
        self.connects += 1

    def _later(self, st: _Stream, index: int, delay: float) -> None:
        st.state, st.wake = WAITING, time.monotonic() + delay
        self.waiting.append(index)

    def _close(self, st: _Stream, index: int, delay: float) -> None:
        sock = st.sock
        if sock is not None:
            if st.state in (CONNECTING, HEAD):
                self.connecting -= 1
            fd = sock.fileno()
            self.by_fd.pop(fd, None)
            with contextlib.suppress(OSError):
                self.ep.unregister(fd)
            sock.close()
            st.sock = None
        if st.state == STREAMING and self.ready > 0:
            self.ready -= 1
        if self.storm:
            self._later(st, index, delay)
        else:
            st.state = WAITING

    def _send_request(self, st: _Stream) -> None:
        assert st.sock is not None
        resume = b"Last-Event-ID: " + st.last_id + b"\r\n" if st.last_id else b""
        st.sock.send(
            b"GET " + self.path.encode() + b" HTTP/1.0\r\nHost: bench\r\n"
            b"Accept: text/event-stream\r\n" + resume + b"\r\n"
        )
        st.state = HEAD
        self.ep.modify(st.sock.fileno(), select.EPOLLIN)

    # --- reading -------------------------------------------------------------------------

    def _head(self, st: _Stream, index: int) -> bool:
        """Read the response head; ``False`` once the stream is closed or still incomplete."""
        end = st.buf.find(b"\r\n\r\n")
        if end < 0:
            if len(st.buf) > 8192:
                self.errors += 1
                self._close(st, index, 1.0)
            return False
        status = st.buf[9:12].decode(errors="replace")
        self.statuses[status] = self.statuses.get(status, 0) + 1
        if status != "200":
            head = st.buf[:end].decode(errors="replace")
            match = re.search(r"(?im)^retry-after:\s*(\d+)", head)
            if status == "503" and match:
                self.retried_503 += 1
                self._close(st, index, float(match.group(1)))
            else:
                self.errors += 1
                self._close(st, index, 1.0)
            return False
        st.buf = st.buf[end + 4 :]
        st.state = STREAMING
        self.connecting -= 1
        self.ready += 1
        if self.ready == len(self.streams) and not self.ready_at:
            self.ready_at = time.time()
            self._say({"ready": self.ready, "seconds": self.ready_at - self.started})
        return True

    def _frames(self, st: _Stream, arrived: int) -> None:
        buf = st.buf
        end = buf.rfind(b"\n\n")
        if end < 0:
            return
        whole, st.buf = buf[: end + 2], buf[end + 2 :]
        seqs = _SEQ.findall(whole)
        if not seqs:
            return
        last = whole.rfind(b"id: ")
        if last >= 0:
            st.last_id = whole[last + 4 : whole.index(b"\n", last)]
        numbers = list(map(int, seqs))
        first = numbers[0]
        if (st.next < 0 or first == st.next) and numbers == list(
            range(first, first + len(numbers))
        ):
            st.next = numbers[-1] + 1
        else:
            self._account_disorder(st, numbers)
        if self.mark and not st.first_at:
            times = _PUBLISHED.findall(whole)
            if times and int(times[-1]) >= self.mark:
                st.first_at = arrived
        if self.storm:
            return  # per-stream order is all a storm checks: no per-event work here
        copies, latest = self.copies, self.latest
        for n in numbers:
            copies[n] = copies.get(n, 0) + 1
            if arrived > latest.get(n, 0):
                latest[n] = arrived
        for n, t in zip(numbers, _PUBLISHED.findall(whole), strict=False):
            self.published.setdefault(n, int(t))

    def _account_disorder(self, st: _Stream, numbers: list[int]) -> None:
        expected = st.next
        for n in numbers:
            if expected < 0 or n == expected:
                pass
            elif n > expected:
                self.lost += n - expected
            elif n < expected:
                self.duplicated += 1
                continue
            expected = n + 1
        st.next = expected

    def _readable(self, st: _Stream, index: int) -> None:
        sock = st.sock
        assert sock is not None
        try:
            data, anc, _flags, _addr = sock.recvmsg(_READ, _CMSG)
        except BlockingIOError:
            return
        except OSError:
            data, anc = b"", []
        if not data:
            self._close(st, index, 0.0)
            return
        arrived = 0
        for level, kind, value in anc:
            if level == socket.SOL_SOCKET and kind == _SO_TIMESTAMPNS and len(value) >= 16:
                sec, nsec = struct.unpack("qq", value[:16])
                arrived = sec * 1_000_000_000 + nsec
        if not arrived:
            arrived = time.time_ns()
        st.buf += data
        if st.state == HEAD and not self._head(st, index):
            return
        self._frames(st, arrived)

    # --- the loop ------------------------------------------------------------------------

    def _say(self, message: dict[str, Any]) -> None:
        sys.stdout.write(json.dumps(message) + "\n")
        sys.stdout.flush()

    def report(self) -> dict[str, Any]:
        return {
            "streams": len(self.streams),
            "ready": self.ready,
            "ready_seconds": (self.ready_at - self.started) if self.ready_at else None,
            "copies": self.copies,
            "latest": self.latest,
            "published": self.published,
            "next": [st.next for st in self.streams],
            "first_after_mark": [st.first_at for st in self.streams],
            "lost": self.lost,
            "duplicated": self.duplicated,
            "refused": self.refused,
            "retried_503": self.retried_503,
            "errors": self.errors,
            "connects": self.connects,
            "statuses": self.statuses,
        }

    def run(self) -> None:
        stdin = sys.stdin.fileno()
        os.set_blocking(stdin, False)
        self.ep.register(stdin, select.EPOLLIN)
        pending = b""
        while True:
            # A storm reconnects every stream at once; the first connects are paced.
            in_flight = len(self.streams) if self.storm and self.ready_at else _IN_FLIGHT
            while self.todo and self.connecting < in_flight:
                self._open(self.todo.pop())
            if self.waiting:
                now = time.monotonic()
                due = [i for i in self.waiting if self.streams[i].wake <= now]
                if due:
                    self.waiting = [i for i in self.waiting if self.streams[i].wake > now]
                    self.todo.extend(due)
            timeout = 0.02 if (self.waiting or self.todo) else 0.5
            for fd, mask in self.ep.poll(timeout, 4096):
                if fd == stdin:
                    chunk = os.read(stdin, 4096)
                    if not chunk:
                        return
                    pending += chunk
                    while b"\n" in pending:
                        line, pending = pending.split(b"\n", 1)
                        if not self._command(line.decode().strip()):
                            return
                    continue
                st = self.by_fd.get(fd)
                if st is None:
                    continue
                index = st.index
                if st.state == CONNECTING:
                    if mask & (select.EPOLLERR | select.EPOLLHUP):
                        self.refused += 1
                        self._close(st, index, _REFUSED_DELAY)
                        if not self.storm:
                            self._later(st, index, _REFUSED_DELAY)
                        continue
                    try:
                        self._send_request(st)
                    except OSError:
                        self.refused += 1
                        self._close(st, index, _REFUSED_DELAY)
                    continue
                self._readable(st, index)

    def _command(self, line: str) -> bool:
        if line == "report":
            self._say(self.report())
        elif line.startswith("mark "):
            self.mark = int(line.split()[1])
            self._say({"marked": self.mark})
        elif line == "quit":
            return False
        return True


def main() -> None:
    host, port, path, count, source, mode = sys.argv[1:7]
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    Swarm(host, int(port), path, int(count), source, mode).run()


if __name__ == "__main__":
    main()
