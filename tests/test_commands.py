"""``plasma sub``, ``plasma pub``, ``plasma proto`` and ``plasma serve``, run as real processes
against a real plasma and redis-server."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

import orjson
import pytest

from tests.support import (
    PlasmaProcess,
    RedisServer,
    free_port,
    port_open,
    start_redis_plasma,
    wait_for,
)

pytestmark = pytest.mark.integration

PROTO_DIR = Path(__file__).resolve().parent.parent / "src" / "plasma"


def command_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PLASMA_")}
    env.update(extra or {})
    return env


def run(
    *args: str, stdin: str = "", env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "plasma", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        env=command_env(env),
    )


def start_sub(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "plasma", "sub", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=command_env(),
    )


def one_line_failure(result: subprocess.CompletedProcess[str], command: str) -> str:
    assert result.returncode == 1, (result.returncode, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"plasma {command}: ")
    assert "Traceback" not in result.stderr
    return lines[0]


@pytest.fixture
def server(redis_server: RedisServer) -> PlasmaProcess:
    process = start_redis_plasma(
        redis_server,
        PLASMA_SUBSCRIBER_TYPE="redis-stream",
        PLASMA_PUBLISH_API="true",
        PLASMA_SSE_RETRY="100",
    )
    wait_for(lambda: process.metrics()["source_up"], 15, what="the source to connect")
    yield process  # type: ignore[misc]
    process.stop()


def wait_subscribed(server: PlasmaProcess, n: int = 1) -> None:
    wait_for(lambda: server.metrics()["connections"] >= n, 15, what="plasma sub to subscribe")


# --- plasma proto ---------------------------------------------------------------------------


@pytest.mark.parametrize(("flag", "name"), [((), "stream.proto"), (("--v2",), "stream_v2.proto")])
def test_proto_prints_the_installed_file(flag: tuple[str, ...], name: str) -> None:
    result = run("proto", *flag)
    assert result.returncode == 0
    installed = next(PROTO_DIR.rglob(name)).read_text()
    assert result.stdout == installed
    assert "service StreamService" in result.stdout


# --- plasma pub and sub ---------------------------------------------------------------------


@pytest.mark.parametrize("transport", [(), ("--grpc",)])
def test_pub_through_the_api_reaches_sub_as_json_lines(
    server: PlasmaProcess, transport: tuple[str, ...]
) -> None:
    sub = start_sub("job", "--url", server.url, "--json", "--count", "3", *transport)
    try:
        wait_subscribed(server)
        one = run("pub", "job:1", '{"n": 1}', "--url", server.url)
        assert one.returncode == 0, one.stderr
        ndjson = '{"meta":{"type":"job:2"},"data":[2]}\n\n{"meta":{"type":"job:3"},"data":"3"}\n'
        many = run("pub", "-", "--url", server.url, stdin=ndjson)
        assert many.returncode == 0, many.stderr
        out, err = sub.communicate(timeout=30)
    finally:
        if sub.poll() is None:
            sub.kill()
            sub.wait()
    assert sub.returncode == 0, err
    lines = [orjson.loads(line) for line in out.splitlines()]
    ids = one.stdout.split() + many.stdout.split()
    assert [(x["id"], x["type"], x["data"]) for x in lines] == [
        (ids[0], "job:1", {"n": 1}),
        (ids[1], "job:2", [2]),
        (ids[2], "job:3", "3"),
    ]


def test_pub_straight_to_redis_with_the_servers_settings(
    server: PlasmaProcess, redis_server: RedisServer
) -> None:
    sub = start_sub("job", "--url", server.url, "--count", "1")
    try:
        wait_subscribed(server)
        env = {
            "PLASMA_SUBSCRIBER_TYPE": "redis-stream",
            "PLASMA_SUBSCRIBER_REDIS_ADDR": redis_server.addr,
            "PLASMA_SUBSCRIBER_REDIS_CHANNELS": "events",
        }
        result = run("pub", "job:9", "[9]", "--redis", env=env)
        assert result.returncode == 0, result.stderr
        out, _ = sub.communicate(timeout=30)
    finally:
        if sub.poll() is None:
            sub.kill()
            sub.wait()
    entry_id = result.stdout.strip()
    assert out == f"{entry_id} job:9 [9]\n"


def test_sub_resumes_after_a_restart_and_says_when_a_gap_happened(
    redis_server: RedisServer,
) -> None:
    env = {"PLASMA_SSE_RETRY": "100", "PLASMA_PUBLISH_API": "true"}
    first = start_redis_plasma(redis_server, **env)
    sub = start_sub("job", "--url", first.url, "--count", "2")
    second = None
    try:
        wait_subscribed(first)
        assert run("pub", "job:1", "1", "--url", first.url).returncode == 0
        first.stop(signal.SIGKILL)
        second = PlasmaProcess(env=first.env, port=first.port).start()
        wait_subscribed(second)
        assert run("pub", "job:2", "2", "--url", second.url).returncode == 0
        out, err = sub.communicate(timeout=30)
    finally:
        if sub.poll() is None:
            sub.kill()
            sub.wait()
        if second is not None:
            second.stop()
    assert [line.split()[1:] for line in out.splitlines()] == [["job:1", "1"], ["job:2", "2"]]
    assert "gap" in err


def test_failures_exit_1_with_one_line(server: PlasmaProcess, redis_server: RedisServer) -> None:
    nothing = f"http://127.0.0.1:{free_port()}"
    assert "cannot" in one_line_failure(run("sub", "job", "--url", nothing), "sub")
    assert "400" in one_line_failure(run("sub", "bad type", "--url", server.url), "sub")
    assert "not JSON" in one_line_failure(run("pub", "job", "{x", "--url", server.url), "pub")
    assert "cannot" in one_line_failure(run("pub", "job", "1", "--url", nothing), "pub")
    line = one_line_failure(run("pub", "-", "--url", server.url, stdin='{"meta":{}}\n'), "pub")
    assert "line 1" in line
    no_api = start_redis_plasma(redis_server)
    try:
        assert "PLASMA_PUBLISH_API" in one_line_failure(
            run("pub", "job", "1", "--url", no_api.url), "pub"
        )
    finally:
        no_api.stop()


@pytest.mark.parametrize("command", ["sub", "pub", "proto", "serve"])
def test_help_shows_an_example(command: str) -> None:
    result = run(command, "--help")
    assert result.returncode == 0
    assert "example" in result.stdout
    assert f"plasma {command}" in result.stdout


def test_bad_arguments_exit_2() -> None:
    result = run("sub")
    assert result.returncode == 2
    assert "plasma sub" in result.stderr


# --- plasma serve and plain plasma ----------------------------------------------------------


@pytest.mark.parametrize("args", [(), ("serve",)])
def test_plain_plasma_and_serve_start_the_server(args: tuple[str, ...], tmp_path: Path) -> None:
    port = free_port()
    log = tmp_path / "out.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "plasma", *args],
            env=command_env({"PLASMA_HOST": "127.0.0.1", "PLASMA_PORT": str(port)}),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        # Logged once the server listens and, in the same step, handles SIGTERM.
        wait_for(lambda: b"plasma listening" in log.read_bytes(), 15, what="the server")
        assert port_open(port)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0


def test_serve_takes_no_arguments() -> None:
    result = run("serve", "--port", "1")
    assert result.returncode == 2
    assert "--port" in result.stderr
