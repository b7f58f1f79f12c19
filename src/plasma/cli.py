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
       plasma serve                       start the server (the same as no command)
       plasma sub TYPE... [options]       print events as they arrive (plasma sub --help)
       plasma pub TYPE DATA [options]     publish an event (plasma pub --help)
       plasma proto [--v2]                print the gRPC interface (.proto)

Event push server: events published on Redis pub/sub channels (or the built-in mock
source) are pushed to Server-Sent Events and gRPC clients, all on one port.
Configure it with environment variables:
"""

_COMMANDS = ("sub", "pub", "proto")


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] in _COMMANDS:
        from plasma import commands

        if args[0] == "sub":
            return commands.sub_main(args[1:], os.environ)
        if args[0] == "pub":
            return commands.pub_main(args[1:], os.environ)
        return commands.proto_main(args[1:])
    if args and args[0] == "serve":
        args = args[1:]
        if any(a in ("-h", "--help") for a in args):
            from plasma.commands import SERVE_HELP

            print(SERVE_HELP + "\n" + settings_help())
            return 0
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
