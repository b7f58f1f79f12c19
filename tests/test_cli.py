"""The ``plasma`` command itself: arguments, version, and a port that is already taken."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Callable

import pytest

from plasma import __version__
from tests.support import PlasmaProcess

pytestmark = pytest.mark.integration


def run_plasma(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "plasma", *args], capture_output=True, text=True, timeout=30
    )


def test_version() -> None:
    result = run_plasma("--version")
    assert result.returncode == 0
    assert __version__ in result.stdout


def test_unknown_argument_exits_2() -> None:
    result = run_plasma("--bogus")
    assert result.returncode == 2
    assert "--bogus" in result.stderr
    assert "plasma --help" in result.stderr


def test_help_mentions_environment_settings() -> None:
    result = run_plasma("-h")
    assert result.returncode == 0
    assert "usage: plasma" in result.stdout
    assert "PLASMA_PORT" in result.stdout


def test_port_in_use_is_a_clear_error(plasma: Callable[..., PlasmaProcess]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        server = plasma(wait=False, PLASMA_PORT=str(port))
        assert server.proc is not None
        rc = server.proc.wait(15)
    assert rc != 0
    err = server.output()  # the error log (stdout by default)
    assert "PLASMA_PORT" in err
    assert str(port) in err
    assert "already in use" in err
    assert "Traceback" not in server.output()
