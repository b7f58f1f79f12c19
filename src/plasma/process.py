"""One server process: raise the open-file limit, pick the event loop, map failures to exit codes.

At start-up each process says how many connections its file limit lets it hold, and the first
one warns when the kernel caps the listen backlog (``net.core.somaxconn``) below
``PLASMA_LISTEN_BACKLOG``: a reconnect storm beyond the backlog has its SYNs dropped and
retried by the clients' kernels a second (then three) later.

Both the command line (one process) and every worker process of the supervisor run a server
through ``run_server``, so neither imports the other.
"""

from __future__ import annotations

import asyncio
import logging
import resource
from collections.abc import Callable
from pathlib import Path

from plasma.config import Config
from plasma.errors import FeedLost, SourceGaveUp, StartupError
from plasma.transports.listener import FD_RESERVE

__all__ = [
    "EXIT_FEED_LOST",
    "EXIT_SOURCE_GAVE_UP",
    "EXIT_STARTUP",
    "check_listen_backlog",
    "connection_capacity",
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


SOMAXCONN = Path("/proc/sys/net/core/somaxconn")


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


def connection_capacity(max_connections: int) -> tuple[int, int]:
    """(open-file soft limit, connections this process can hold: the limit minus
    ``FD_RESERVE``, at most ``PLASMA_MAX_CONNECTIONS``)."""
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft == resource.RLIM_INFINITY:
        return soft, max_connections
    return soft, max(0, min(max_connections, soft - FD_RESERVE))


def check_listen_backlog(asked: int, somaxconn: Path = SOMAXCONN) -> int | None:
    """Warn when the kernel caps the listen backlog below ``asked``; return the cap, if read."""
    try:
        cap = int(somaxconn.read_text().strip())
    except (OSError, ValueError):
        return None
    if cap < asked:
        log.warning(
            "the kernel caps the listen backlog below PLASMA_LISTEN_BACKLOG: connections that "
            "arrive at once beyond it wait for the clients' SYN retries (1 s, 3 s, ...); raise "
            "it with sysctl -w net.core.somaxconn=N",
            extra={"listen_backlog": asked, "somaxconn": cap},
        )
    return cap


def _announce_capacity(config: Config, worker_id: int | None) -> None:
    limit, capacity = connection_capacity(config.limits.max_connections)
    log.info(
        "open-file limit allows this many connections in this process",
        extra={"worker": worker_id, "nofile": limit, "connections": capacity},
    )
    if not worker_id:  # the single process, or the first worker: once per server
        check_listen_backlog(config.listen_backlog)


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
    _announce_capacity(config, worker_id)
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
