"""What a new user meets at the door: the rough edges of a first session, each driven black-box.

Every test here talks to a real ``plasma`` process with a real client (raw sockets, httpx,
grpcio, the h2 library, ``redis-cli``), the way someone trying plasma for the first time would.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import grpc
import h2.config
import h2.connection
import h2.events
import httpx
import orjson
import pytest

from tests.support import PlasmaProcess, free_port, port_open, wait_for

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
EVENTS_METHOD = "/proto.StreamService/Events"


@pytest.fixture(scope="module")
def server() -> Iterator[PlasmaProcess]:
    """One mock-source plasma with ``/debug`` on, shared by the tests that only send requests."""
    process = PlasmaProcess(
        env={"PLASMA_DEBUG": "true", "PLASMA_SUBSCRIBER_MOCK_INTERVAL": "100ms"}
    ).start()
    yield process
    process.stop()


def exchange(port: int, data: bytes, wait: float = 5.0) -> bytes:
    """Send ``data`` on a fresh connection and read until the server closes it."""
    with socket.create_connection(("127.0.0.1", port), timeout=wait) as sock:
        sock.sendall(data)
        chunks = []
        try:
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        except (TimeoutError, ConnectionResetError):
            pass
    return b"".join(chunks)


def header_lines(reply: bytes) -> list[str]:
    head = reply.split(b"\r\n\r\n", 1)[0].decode("latin-1")
    return head.split("\r\n")


def events_request(*types: str) -> bytes:
    """A ``Request`` message of stream.proto, encoded by hand: ``Events`` is field 1."""
    out = b""
    for t in types:
        raw = t.encode()
        event_type = b"\x0a" + bytes([len(raw)]) + raw
        out += b"\x0a" + bytes([len(event_type)]) + event_type
    return out


def readme_section(title: str) -> str:
    text = README.read_text()
    start = text.index(title)
    end = text.find("\n## ", start + len(title))
    return text[start : end if end != -1 else len(text)]


def stream_closed_lines(server: PlasmaProcess, transport: str) -> list[dict[str, Any]]:
    return [
        line
        for line in server.log_lines()
        if line.get("msg") == "stream closed" and line.get("transport") == transport
    ]


# --- 1. /debug labels the publish field as the original's README names it ----------------------


class _Labels(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.labels: dict[str, str] = {}
        self.textareas: list[str] = []
        self._label_for: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        named = dict(attrs)
        if tag == "label":
            self._label_for = named.get("for") or ""
            self.labels[self._label_for] = ""
        elif tag == "textarea":
            self.textareas.append(named.get("id") or "")

    def handle_endtag(self, tag: str) -> None:
        if tag == "label":
            self._label_for = None

    def handle_data(self, data: str) -> None:
        if self._label_for is not None:
            self.labels[self._label_for] += data


def test_debug_page_labels_the_json_field_eventdata(server: PlasmaProcess) -> None:
    """The original's README says: 'enter valid JSON in EventData form'."""
    page = httpx.get(server.url + "/debug", timeout=5)
    assert page.status_code == 200
    parser = _Labels()
    parser.feed(page.text)
    assert parser.textareas, "the debug page has no field for the event's JSON"
    assert parser.labels.get(parser.textareas[0], "").strip() == "EventData", parser.labels


# --- 2. every access line carries the same request fields --------------------------------------

REQUEST_FIELDS = ("method", "path", "remote", "user_agent", "status")


def test_every_access_line_carries_method_path_remote_user_agent_status(
    server: PlasmaProcess,
) -> None:
    sse_before = len(stream_closed_lines(server, "sse"))
    grpc_before = len(stream_closed_lines(server, "grpc"))
    stream_headers = {"Accept": "text/event-stream"}
    # A fresh connection (plasma's lean SSE path) ...
    with (
        httpx.Client(base_url=server.url, headers={"User-Agent": "new-user-fresh/1"}) as client,
        client.stream("GET", "/?eventType=program", headers=stream_headers) as response,
    ):
        assert response.status_code == 200
        next(response.iter_lines())
    # ... and a kept-alive one (a request first, then the stream on the same connection).
    with httpx.Client(base_url=server.url, headers={"User-Agent": "new-user-kept/1"}) as client:
        assert client.get("/hc").status_code == 200
        with client.stream("GET", "/?eventType=program", headers=stream_headers) as response:
            assert response.status_code == 200
            next(response.iter_lines())
    options = [("grpc.primary_user_agent", "new-user-grpc/1")]
    with grpc.insecure_channel(f"127.0.0.1:{server.port}", options=options) as channel:
        call = channel.unary_stream(EVENTS_METHOD)(events_request("program"))
        next(call)
        call.cancel()

    sse = wait_for(
        lambda: (
            (lines := stream_closed_lines(server, "sse")[sse_before:]) and len(lines) >= 2 and lines
        ),
        what="two SSE 'stream closed' lines",
    )
    grpc_lines = wait_for(
        lambda: stream_closed_lines(server, "grpc")[grpc_before:], what="a gRPC 'stream closed'"
    )
    requests = [line for line in server.log_lines() if line.get("msg") == "request"]
    for line in [*sse, *grpc_lines, requests[-1]]:
        missing = [f for f in REQUEST_FIELDS if f not in line]
        assert not missing, f"access line lacks {missing}: {line}"
    assert {line["user_agent"] for line in sse} == {"new-user-fresh/1", "new-user-kept/1"}
    assert all(line["method"] == "GET" and line["path"] == "/" for line in sse)
    assert "new-user-grpc/1" in grpc_lines[0]["user_agent"]
    assert grpc_lines[0]["method"] == "POST"
    assert grpc_lines[0]["path"] == EVENTS_METHOD
    assert grpc_lines[0]["remote"] == "127.0.0.1"


# --- 3. a closed stdout ends quietly ------------------------------------------------------------


def plasma_into_closed_pipe(
    args: list[str], env: dict[str, str] | None = None
) -> tuple[subprocess.Popen[bytes], Path]:
    """Start ``python -m plasma`` with a stdout pipe nobody reads (``plasma ... | true``)."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    stderr = Path(tempfile.mkdtemp(prefix="plasma-pipe-")) / "stderr.log"
    base = {k: v for k, v in os.environ.items() if not k.startswith("PLASMA_")}
    try:
        process = subprocess.Popen(
            [sys.executable, "-m", "plasma", *args],
            stdout=write_end,
            stderr=open(stderr, "wb"),  # noqa: SIM115
            env={**base, **(env or {})},
        )
    finally:
        os.close(write_end)
    return process, stderr


def test_help_into_a_closed_pipe_ends_quietly() -> None:
    process, stderr = plasma_into_closed_pipe(["--help"])
    process.wait(15)
    assert stderr.read_text() == ""


@pytest.mark.parametrize("workers", ["1", "2"])
def test_server_logging_into_a_closed_pipe_stays_quiet_and_serves(workers: str) -> None:
    port = free_port()
    env = {"PLASMA_HOST": "127.0.0.1", "PLASMA_PORT": str(port), "PLASMA_WORKERS": workers}
    process, stderr = plasma_into_closed_pipe([], env)
    try:
        wait_for(lambda: process.poll() is not None or port_open(port), 15, what="plasma")
        assert process.poll() is None, stderr.read_text()
        for _ in range(3):
            assert httpx.get(f"http://127.0.0.1:{port}/hc", timeout=5).status_code == 200
    finally:
        process.send_signal(signal.SIGTERM)
        rc = process.wait(20)
    assert stderr.read_text() == ""
    assert rc == 0


# --- 4. a port in use is reported once, on the error log ---------------------------------------


@pytest.mark.parametrize("workers", ["1", "2"])
def test_port_in_use_is_reported_once_on_the_error_log(
    plasma: Callable[..., PlasmaProcess], workers: str
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        server = plasma(wait=False, PLASMA_PORT=str(port), PLASMA_WORKERS=workers)
        assert server.proc is not None
        assert server.proc.wait(20) == 1
    assert server.stderr_path.read_text() == ""
    reports = [line for line in server.log_lines() if "in use" in line.get("msg", "")]
    assert len(reports) == 1, reports
    assert reports[0]["level"] == "critical"
    assert f"PLASMA_PORT={port}" in reports[0]["msg"]
    assert "choose another port" in reports[0]["msg"]


# --- 5. a plain GET on a stream URL says what a stream needs ----------------------------------


@pytest.mark.parametrize(
    "accept", [None, "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"]
)
def test_plain_get_on_a_stream_url_says_a_stream_needs_the_accept_header(
    server: PlasmaProcess, accept: str | None
) -> None:
    headers = {"Accept": accept} if accept else {}
    response = httpx.get(server.url + "/?eventType=program", headers=headers, timeout=5)
    assert response.status_code == 404  # what the original answers
    assert "Accept: text/event-stream" in response.text


# --- 6. an unknown /metrics format is a 400 that lists the formats ------------------------------


def test_metrics_with_an_unknown_format_is_400_listing_the_formats(server: PlasmaProcess) -> None:
    response = httpx.get(server.url + "/metrics?format=bogus", timeout=5)
    assert response.status_code == 400
    for name in ("json", "prometheus", "openmetrics"):
        assert name in response.text
    assert httpx.get(server.url + "/metrics?format=json", timeout=5).status_code == 200


# --- 7. the README's gRPC example says what it assumes -----------------------------------------


def test_readme_grpc_example_says_where_the_proto_is_and_what_it_assumes() -> None:
    section = readme_section("## Subscribing with gRPC")
    assert "6379" in section, "the example assumes a Redis on localhost:6379: say so"
    assert "redis-server" in section or "quick start" in section.lower()
    # grpc-js and reflection-based clients drop a lowercase `events` field without a word.
    assert "`events`" in section and "capital" in section
    # How to get stream.proto with plasma installed (not only in a clone): run what it says.
    if "plasma proto" in section:
        command = [sys.executable, "-m", "plasma", "proto"]
    else:
        found = re.search(r'`python -c "([^"]+)"`', section)
        assert found, "say how to find stream.proto in an installed plasma"
        command = [sys.executable, "-c", found.group(1)]
    got = subprocess.run(command, capture_output=True, text=True, timeout=15, check=True)
    text = got.stdout if "plasma proto" in section else Path(got.stdout.strip()).read_text()
    assert "service StreamService" in text


# --- 8. /metrics memory figures come from one source ------------------------------------------


def peak_resident_kib(pid: int) -> int:
    """The kernel's own high-water mark of a process's resident memory (``VmHWM``)."""
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"^VmHWM:\s+(\d+) kB", status, re.MULTILINE).group(1))  # type: ignore[union-attr]


def test_metrics_resident_memory_and_its_peak_agree(server: PlasmaProcess) -> None:
    """``memory_rss`` never above ``memory_max_rss``, and the peak is the kernel's peak."""
    assert server.proc is not None
    for _ in range(5):
        peak_before = peak_resident_kib(server.proc.pid) * 1024
        figures = server.metrics()
        peak_after = peak_resident_kib(server.proc.pid) * 1024
        rss, peak = figures["memory_rss"], figures["memory_max_rss"]
        assert 0 < rss <= peak, (rss, peak)
        # ru_maxrss lags the kernel's peak, and counts the parent's memory from before exec.
        assert peak_before <= peak <= peak_after, (peak_before, peak, peak_after)
        assert figures["processes"][0]["memory_rss"] == rss


# --- 9. Server: plasma, no versions -------------------------------------------------------------


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"GET /hc HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
        b"GET /metrics HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
        b"GET /debug HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
        b"POST /metrics HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        b"GET /nowhere HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
        b"OPTIONS / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: t\r\nAccept: text/event-stream\r\nConnection: close\r\n\r\n",
        b"GARBAGE\r\n\r\n",
    ],
    ids=["hc", "metrics", "debug", "405", "404", "options", "sse-400", "malformed"],
)
def test_every_answer_says_server_plasma_without_versions(
    server: PlasmaProcess, request_bytes: bytes
) -> None:
    lines = header_lines(exchange(server.port, request_bytes))
    assert lines[0].startswith("HTTP/1."), lines
    servers = [line for line in lines[1:] if line.lower().startswith("server:")]
    assert servers == ["Server: plasma"], lines


def test_a_stream_does_not_name_library_versions(server: PlasmaProcess) -> None:
    with (
        socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock,
    ):
        sock.sendall(
            b"GET /?eventType=program HTTP/1.1\r\nHost: t\r\nAccept: text/event-stream\r\n\r\n"
        )
        head = b""
        while b"\r\n\r\n" not in head:
            head += sock.recv(4096)
    lines = header_lines(head)
    assert lines[0] == "HTTP/1.1 200 OK"
    assert not [line for line in lines if re.search(r"aiohttp|python", line, re.IGNORECASE)]


# --- 10. gRPC deadlines are acted on by the server ---------------------------------------------


def raw_events_call(port: int, grpc_timeout: str) -> dict[bytes, bytes]:
    """One Events call from a raw h2 client; the headers of its end (``grpc-status``...).

    Unlike grpcio, this client never ends the call itself at its deadline: only the server can.
    """
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    stream_id = conn.get_next_available_stream_id()
    conn.send_headers(
        stream_id,
        [
            (":method", "POST"),
            (":scheme", "http"),
            (":path", EVENTS_METHOD),
            (":authority", f"127.0.0.1:{port}"),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
            ("grpc-timeout", grpc_timeout),
        ],
    )
    message = events_request("nothing-publishes-this")
    conn.send_data(stream_id, b"\x00" + len(message).to_bytes(4, "big") + message, end_stream=True)
    trailers: dict[bytes, bytes] = {}
    with socket.create_connection(("127.0.0.1", port), timeout=15) as sock:
        sock.sendall(conn.data_to_send())
        ended = False
        while not ended:
            data = sock.recv(65536)
            assert data, "the server closed the connection instead of ending the stream"
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.TrailersReceived | h2.events.ResponseReceived):
                    trailers.update(dict(event.headers or []))
                elif isinstance(event, h2.events.DataReceived):
                    conn.acknowledge_received_data(event.flow_controlled_length, stream_id)
                elif isinstance(event, h2.events.StreamEnded | h2.events.StreamReset):
                    ended = True
            sock.sendall(conn.data_to_send())
    return trailers


def test_grpc_timeout_ends_the_stream_with_deadline_exceeded(server: PlasmaProcess) -> None:
    before = len(stream_closed_lines(server, "grpc"))
    trailers = raw_events_call(server.port, "300m")
    assert trailers.get(b"grpc-status") == b"4", trailers  # DEADLINE_EXCEEDED
    line = wait_for(
        lambda: stream_closed_lines(server, "grpc")[before:], what="a gRPC 'stream closed' line"
    )[0]
    assert line["reason"] == "deadline", line
    assert line["status"] == "DEADLINE_EXCEEDED", line


@pytest.mark.parametrize("bad", ["soon", "300", "123456789S", "-1S", "1x"])
def test_a_malformed_grpc_timeout_is_refused_with_a_status(server: PlasmaProcess, bad: str) -> None:
    trailers = raw_events_call(server.port, bad)
    assert trailers.get(b"grpc-status") == b"13", trailers  # INTERNAL, as grpc-go answers
    assert b"grpc-timeout" in trailers.get(b"grpc-message", b"")


# --- 11. the quick start's Redis example runs on the machine ./scripts/test set up -------------


def readme_redis_example() -> list[str]:
    quick_start = readme_section("## Quick start")
    block = re.search(r"With Redis.*?```bash\n(.*?)```", quick_start, re.DOTALL)
    assert block, "no Redis example in the quick start"
    return [line for line in block.group(1).splitlines() if line.strip()]


def test_readme_redis_example_says_where_redis_cli_comes_from() -> None:
    text = readme_section("## Quick start")
    assert "redis-tools" in text, "say which Debian package brings redis-cli"
    assert shutil.which("redis-cli"), "./scripts/test should leave redis-cli installed"
    assert "redis-cli" in (ROOT / "scripts" / "test").read_text()


def test_readme_redis_example_runs_as_written(tmp_path: Path) -> None:
    """Each line of the example, run on a free port instead of 6379 (the only change)."""
    lines = [line.split("  #", 1)[0].strip() for line in readme_redis_example()]
    lines = [line for line in lines if not line.startswith(("sudo ", "apt"))]
    starts = [line for line in lines if line.startswith("redis-server")]
    assert starts, "the example does not say how to start a Redis"
    redis_port, plasma_port = free_port(), free_port()
    pidfile = tmp_path / "redis.pid"
    subprocess.run(
        [*shlex.split(starts[0]), "--port", str(redis_port), "--bind", "127.0.0.1",
         "--save", "", "--dir", str(tmp_path), "--pidfile", str(pidfile)],
        check=True, timeout=15, stdout=subprocess.DEVNULL,
    )  # fmt: skip
    server: PlasmaProcess | None = None
    try:
        wait_for(lambda: port_open(redis_port) and pidfile.exists(), what="redis-server")
        (run,) = [line for line in lines if line.startswith("PLASMA_")]  # the server
        words = shlex.split(run)
        env = dict(word.split("=", 1) for word in words if "=" in word and word[0].isupper())
        env["PLASMA_SUBSCRIBER_REDIS_ADDR"] = f"127.0.0.1:{redis_port}"
        env["PLASMA_PORT"] = str(plasma_port)
        server = PlasmaProcess(env=env).start()
        channel = env["PLASMA_SUBSCRIBER_REDIS_CHANNELS"]
        (publish,) = [line for line in lines if line.startswith("redis-cli")]
        cli = shlex.split(publish)
        wait_for(
            lambda: subprocess.run(
                ["redis-cli", "-p", str(redis_port), "PUBSUB", "NUMSUB", channel],
                capture_output=True, text=True, timeout=5,
            ).stdout.split()[-1] == "1",
            what="plasma to subscribe",
        )  # fmt: skip
        event = orjson.loads(cli[-1])
        with (
            httpx.Client(base_url=server.url, timeout=10) as client,
            client.stream(
                "GET",
                f"/?eventType={event['meta']['type']}",
                headers={"Accept": "text/event-stream"},
            ) as response,
        ):
            lines_read = response.iter_lines()
            assert next(lines_read).startswith("retry:")
            subprocess.run([cli[0], "-p", str(redis_port), *cli[1:]], check=True, timeout=15)
            data = next(line for line in lines_read if line.startswith("data:"))
        assert orjson.loads(data[5:]) == event
    finally:
        if server is not None:
            server.stop()
        if pidfile.exists():
            os.kill(int(pidfile.read_text()), signal.SIGTERM)
        wait_for(lambda: not port_open(redis_port), what="redis-server to stop")
