"""One server process: raise the open-file limit, pick the event loop, map failures to exit codes.

Both the command line (one process) and every worker process of the supervisor run a server
through ``run_server``, so neither imports the other.
"""

from __future__ import annotations

import asyncio
import logging
import resource
from collections.abc import Callable

from plasma.config import Config
from plasma.errors import FeedLost, SourceGaveUp, StartupError

__all__ = [
    "EXIT_FEED_LOST",
    "EXIT_SOURCE_GAVE_UP",
    "EXIT_STARTUP",
    "event_loop_factory",
    "raise_open_file_limit",
    "run_server",
]

log = logging.getLogger("plasma.process")

EXIT_STARTUP = 1
"""The server cannot start (port in use, unreadable TLS files)."""
EXIT_SOURCE_GAVE_UP = 3
"""The source spent its retries and ``PLASMA_SUBSCRIBER_REDIS_OVER_MAX_RETRY_BEHAVIOR=die``."""
EXIT_FEED_LOST = 4
"""A worker lost its node's source reader (``plasma.feed``); the supervisor starts another."""


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


def event_loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's loop where it is installed (every supported OS), else asyncio's default."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on every supported OS
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def run_server(
    config: Config, *, worker_id: int | None = None, peers_dir: str = "", feed_path: str = ""
) -> int:
    """Run one server process in this process; return the exit status."""
    from plasma.server import serve

    raise_open_file_limit()
    try:
        with asyncio.Runner(loop_factory=event_loop_factory()) as runner:
            runner.run(serve(config, worker_id=worker_id, peers_dir=peers_dir, feed_path=feed_path))
    except StartupError as exc:
        log.critical(str(exc))  # once, on the error log: the message names the setting to change
        return EXIT_STARTUP
    except SourceGaveUp as exc:
        log.critical("giving up: %s", exc)
        return EXIT_SOURCE_GAVE_UP
    except FeedLost as exc:
        log.error("stopping this worker: %s", exc)
        return EXIT_FEED_LOST
    except KeyboardInterrupt:
        return 0
    return 0
