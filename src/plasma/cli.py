"""The ``plasma`` command: read the environment, set up logs, run the server."""

from __future__ import annotations

import asyncio
import logging
import os
import resource
import sys
from collections.abc import Sequence

from plasma import __version__
from plasma.config import Config, settings_help
from plasma.errors import ConfigError, SourceGaveUp, StartupError
from plasma.logging import configure_logging
from plasma.workers import EXIT_SOURCE_GAVE_UP, EXIT_STARTUP, run_workers

__all__ = ["main"]

log = logging.getLogger("plasma.cli")

USAGE = """\
usage: plasma [--help] [--version]

Event push server: events published on Redis pub/sub channels (or the built-in mock
source) are pushed to Server-Sent Events and gRPC clients, all on one port.
Configure it with environment variables:
"""


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help", "help") for a in args):
        print(USAGE + "\n" + settings_help())
        return 0
    if any(a in ("-V", "--version", "version") for a in args):
        print(f"plasma {__version__}")
        return 0
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


def raise_open_file_limit() -> None:
    """Lift the soft limit on open files to the hard one, as Go does: one fd per client."""
    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if hard == resource.RLIM_INFINITY:
            hard = 1 << 20
        if soft != resource.RLIM_INFINITY and soft < hard:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ValueError, OSError):
        pass


def run_server(config: Config, *, worker_id: int | None = None, peers_dir: str = "") -> int:
    """Run one server process in this process; return the exit status."""
    from plasma.server import serve

    raise_open_file_limit()
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on every supported OS
        loop_factory = None
    else:
        loop_factory = uvloop.new_event_loop
    try:
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            runner.run(serve(config, worker_id=worker_id, peers_dir=peers_dir))
    except StartupError as exc:
        log.critical(str(exc))
        print(f"plasma: {exc}", file=sys.stderr)
        return EXIT_STARTUP
    except SourceGaveUp as exc:
        log.critical("giving up: %s", exc)
        return EXIT_SOURCE_GAVE_UP
    except KeyboardInterrupt:
        return 0
    return 0
