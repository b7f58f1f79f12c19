"""PLASMA_METRICS_TYPE=log|syslog against real files and real loopback syslog receivers."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import itertools
import re
import socket
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import orjson
import pytest

from plasma.exporters.syslog import SyslogWriter
from tests.support import PlasmaProcess, SSEStream, free_port, http, wait_for

pytestmark = pytest.mark.integration

_LINE = re.compile(r"^(\d{4}/\d\d/\d\d \d\d:\d\d:\d\d\.\d{6}) plasma-metrics: (\{.*\})$")
_SYSLOG = re.compile(r"^<(\d+)>(\S+) (\S+) ([\w-]+)\[(\d+)\]: (\{.*\})$")


class Receiver:
    """A syslog receiver on loopback (UDP, TCP or a unix datagram socket) in a thread."""

    def __init__(self, network: str, port: int = 0) -> None:
        self.network = network
        self.messages: list[str] = []
        self._stop = threading.Event()
        if network == "unixgram":
            self.addr = str(Path(tempfile.mkdtemp(prefix="plasma-syslog-")) / "log.sock")
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            self.sock.bind(self.addr)
        else:
            kind = socket.SOCK_DGRAM if network == "udp" else socket.SOCK_STREAM
            self.sock = socket.socket(socket.AF_INET, kind)
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self.sock.bind(("127.0.0.1", port))
            self.addr = f"127.0.0.1:{self.sock.getsockname()[1]}"
            if network == "tcp":
                self.sock.listen()
        self.sock.settimeout(0.1)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        if self.network == "tcp":
            self._run_tcp()
            return
        while not self._stop.is_set():
            with contextlib.suppress(TimeoutError):
                self.messages.append(self.sock.recv(65536).decode())

    def _run_tcp(self) -> None:
        conns: list[socket.socket] = []
        buffers: dict[socket.socket, bytes] = {}
        while not self._stop.is_set():
            with contextlib.suppress(TimeoutError):
                conn, _ = self.sock.accept()
                conn.settimeout(0.02)
                conns.append(conn)
                buffers[conn] = b""
            for conn in conns:
                with contextlib.suppress(TimeoutError):
                    buffers[conn] += conn.recv(65536)
                while b"\n" in buffers[conn]:
                    line, _, buffers[conn] = buffers[conn].partition(b"\n")
                    self.messages.append(line.decode() + "\n")
        for conn in conns:
            conn.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()


@pytest.fixture
def receivers() -> Iterator[Callable[..., Receiver]]:
    started: list[Receiver] = []

    def start(network: str, port: int = 0) -> Receiver:
        receiver = Receiver(network, port)
        started.append(receiver)
        return receiver

    yield start
    for receiver in started:
        receiver.close()


def _quiet_mock() -> dict[str, str]:
    return {"PLASMA_SUBSCRIBER_MOCK_INTERVAL": "1h", "PLASMA_METRICS_INTERVAL": "100ms"}


async def test_log_sender_writes_a_line_every_interval(
    plasma: Callable[..., PlasmaProcess], tmp_path: Path
) -> None:
    out = tmp_path / "metrics.log"
    server = plasma(
        PLASMA_METRICS_TYPE="log",
        PLASMA_METRICS_LOG_OUT=str(out),
        PLASMA_METRICS_LOG_INTERVAL="200ms",
        PLASMA_METRICS_LOG_PREFIX="plasma-metrics: ",
        # Ldate | Ltime | Lmicroseconds | LUTC | Lmsgprefix
        PLASMA_METRICS_LOG_FLAG=str(1 | 2 | 4 | 32 | 64),
        **_quiet_mock(),
    )
    stream = await SSEStream.open(server.url + "/", "poll")
    try:
        await stream.wait_retry()

        def lines() -> list[str]:
            return out.read_text().splitlines() if out.exists() else []

        def connected_lines() -> list[str]:
            return [line for line in lines() if '"connections":1,' in line]

        wait_for(lambda: len(connected_lines()) >= 3, timeout=10, what="3 lines with a client")
    finally:
        await stream.close()
    written = lines()
    stamps = []
    for line in written:
        match = _LINE.match(line)
        assert match is not None, line
        stamps.append(datetime.datetime.strptime(match.group(1), "%Y/%m/%d %H:%M:%S.%f"))
        data = orjson.loads(match.group(2))
        assert data["pid"] == server.proc.pid  # type: ignore[union-attr]
        assert {"connections", "events_received", "events_delivered", "memory_rss"} <= set(data)
    now = datetime.datetime.now(datetime.UTC).replace(tzinfo=None)
    assert abs((now - stamps[-1]).total_seconds()) < 60, "LUTC: the stamp is UTC"
    gaps = [(b - a).total_seconds() for a, b in itertools.pairwise(stamps)]
    assert min(gaps) >= 0.1, f"lines come every 200ms, not in bursts: {gaps}"
    assert server.stop() == 0


@pytest.mark.parametrize(
    ("network", "variable"),
    [
        ("udp", "PLASMA_METRICS_SYSLOG_NETWORDK"),  # the original README's spelling
        ("tcp", "PLASMA_METRICS_SYSLOG_NETWORK"),
        ("unixgram", "PLASMA_METRICS_SYSLOG_NETWORK"),
    ],
)
def test_syslog_sender_delivers(
    plasma: Callable[..., PlasmaProcess],
    receivers: Callable[..., Receiver],
    network: str,
    variable: str,
) -> None:
    receiver = receivers(network)
    server = plasma(
        PLASMA_METRICS_TYPE="syslog",
        PLASMA_METRICS_SYSLOG_INTERVAL="200ms",
        PLASMA_METRICS_SYSLOG_TAG="plasma-test",
        PLASMA_METRICS_SYSLOG_FACILITY="16",  # LOG_LOCAL0
        PLASMA_METRICS_SYSLOG_SEVERITY="6",  # LOG_INFO
        PLASMA_METRICS_SYSLOG_ADDR=receiver.addr,
        **{variable: network},
        **_quiet_mock(),
    )
    wait_for(lambda: len(receiver.messages) >= 2, timeout=10, what=f"2 {network} messages")
    for message in receiver.messages:
        assert message.endswith("\n")
        match = _SYSLOG.match(message.rstrip("\n"))
        assert match is not None, message
        priority, stamp, _host, tag, pid, body = match.groups()
        assert int(priority) == 16 * 8 + 6
        assert tag == "plasma-test"
        assert int(pid) == server.proc.pid  # type: ignore[union-attr]
        datetime.datetime.fromisoformat(stamp.replace("Z", "+00:00"))
        assert orjson.loads(body)["connections"] == 0
    assert server.stop() == 0


async def test_absent_syslog_receiver_never_hurts_the_server(
    plasma: Callable[..., PlasmaProcess], receivers: Callable[..., Receiver]
) -> None:
    port = free_port()  # nothing listens here yet
    server = plasma(
        PLASMA_METRICS_TYPE="syslog",
        PLASMA_METRICS_SYSLOG_NETWORK="tcp",
        PLASMA_METRICS_SYSLOG_ADDR=f"127.0.0.1:{port}",
        PLASMA_METRICS_SYSLOG_INTERVAL="100ms",
        PLASMA_METRICS_INTERVAL="100ms",
        PLASMA_SUBSCRIBER_MOCK_INTERVAL="100ms",
    )
    stream = await SSEStream.open(server.url + "/", "poll,program,other")
    try:
        await stream.wait_retry()
        for _ in range(5):  # about half a second of events while every send fails
            await stream.next_event()
            assert http(server.url + "/hc").status == 200
    finally:
        await stream.close()

    def warnings() -> list[dict[str, object]]:
        return [
            line
            for line in server.log_lines()
            if line.get("msg") == "metrics syslog unreachable; dropping lines until it answers"
        ]

    assert len(warnings()) == 1, "a failing receiver is logged once, not per line"
    assert warnings()[0]["level"] == "warn"

    # The receiver comes up on that port: the sender reconnects on its own.
    receiver = receivers("tcp", port)
    wait_for(lambda: receiver.messages, timeout=10, what="a message after reconnecting")
    wait_for(
        lambda: any(
            line.get("msg") == "metrics syslog reachable again" for line in server.log_lines()
        ),
        what="the recovery to be logged",
    )
    assert len(warnings()) == 1
    assert server.stop() == 0


def test_absent_udp_receiver_is_logged_once(plasma: Callable[..., PlasmaProcess]) -> None:
    server = plasma(
        PLASMA_METRICS_TYPE="syslog",
        PLASMA_METRICS_SYSLOG_NETWORK="udp",
        PLASMA_METRICS_SYSLOG_ADDR=f"127.0.0.1:{free_port()}",
        PLASMA_METRICS_SYSLOG_INTERVAL="100ms",
        **_quiet_mock(),
    )
    wait_for(
        lambda: any(
            line.get("msg", "").startswith("metrics syslog") for line in server.log_lines()
        ),
        what="the refused datagrams to be noticed",
    )
    wait_for(lambda: http(server.url + "/hc").status == 200, timeout=1, what="/hc")
    unreachable = [
        line for line in server.log_lines() if str(line.get("msg")).startswith("metrics syslog")
    ]
    assert len(unreachable) == 1
    assert server.stop() == 0


def test_bad_metrics_settings_stop_startup_with_a_clear_message(
    plasma: Callable[..., PlasmaProcess], tmp_path: Path
) -> None:
    server = plasma(
        wait=False,
        PLASMA_METRICS_TYPE="log",
        PLASMA_METRICS_LOG_OUT=str(tmp_path / "missing-dir" / "metrics.log"),
    )
    assert server.proc is not None
    assert server.proc.wait(15) != 0
    assert "PLASMA_METRICS_LOG_OUT" in server.output()
    server = plasma(
        wait=False,
        PLASMA_METRICS_TYPE="syslog",
        PLASMA_METRICS_SYSLOG_NETWORK="udp",
        PLASMA_METRICS_SYSLOG_ADDR="no-port-here",
    )
    assert server.proc is not None
    assert server.proc.wait(15) != 0
    assert "PLASMA_METRICS_SYSLOG_ADDR" in server.output()


async def test_a_tcp_receiver_that_stops_reading_makes_sends_drop_not_wait() -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    writer = SyslogWriter(network="tcp", addr=f"127.0.0.1:{port}", tag="plasma", priority=6)
    try:
        results = []
        async with asyncio.timeout(10):  # each send returns at once, read or not
            while len(results) < 5000 and (not results or results[-1]):
                results.append(await writer.send("x" * 16384))
        assert results[0] is True
        assert results[-1] is False, "once the kernel buffers are full, lines are dropped"
        assert writer.dropped == 1
    finally:
        await writer.aclose()
        listener.close()
