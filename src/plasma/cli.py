"""The ``plasma`` command: read the environment, set up logs, run the server."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from plasma import __version__
from plasma.config import Config, settings_help
from plasma.errors import ConfigError, StartupError
from plasma.logging import configure_logging, silence_broken_pipe
from plasma.process import run_server
from plasma.workers import run_workers

__all__ = ["main"]

USAGE = """\
usage: plasma [--help] [--version]

Event push server: events published on Redis pub/sub channels (or the built-in mock
source) are pushed to Server-Sent Events and gRPC clients, all on one port.
Configure it with environment variables:
"""


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help", "help") for a in args):
        return _say(USAGE + "\n" + settings_help())
    if any(a in ("-V", "--version", "version") for a in args):
        return _say(f"plasma {__version__}")
    if args:
        print(
            f"plasma: unknown argument {args[0]!r}; settings are environment variables, "
            "see plasma --help",
            file=sys.stderr,
        )
        return 2
    try:
        config = Config.from_env(os.environ)
    except ConfigError as exc:
        print(f"plasma: {exc}", file=sys.stderr)
        return 2
    try:
        configure_logging(config.error_log, config.access_log)
    except StartupError as exc:
        print(f"plasma: {exc}", file=sys.stderr)
        return 2
    if config.workers != 1:
        return run_workers(config)
    return run_server(config)


def _say(text: str) -> int:
    """Print to stdout; a reader that went away (``plasma --help | head``) ends it quietly."""
    try:
        print(text, flush=True)
    except BrokenPipeError:
        silence_broken_pipe(sys.stdout)
    return 0
