"""Structured logs: one JSON object per line, for the error log and the access log.

The error log is the ``plasma`` logger tree; the access log is ``plasma.access`` and does not
propagate, so each can go to its own target (``stdout``, ``stderr`` or a file) at its own level.
Fields passed with ``extra={...}`` become top-level keys of the JSON line.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from typing import IO, Any

import orjson

from plasma.auth.credentials import RedactTokens
from plasma.config import LogConfig
from plasma.errors import StartupError

__all__ = [
    "ACCESS_LOGGER",
    "JSONFormatter",
    "LogThrottle",
    "configure_logging",
    "open_log_stream",
    "silence_broken_pipe",
]

ACCESS_LOGGER = "plasma.access"

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warn": logging.WARNING,
    "error": logging.ERROR,
    "fatal": logging.CRITICAL,
    "panic": logging.CRITICAL,
}

# Attributes every LogRecord has; anything else on a record came from ``extra``.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


class JSONFormatter(logging.Formatter):
    """Formats a record as ``{"time":..., "level":..., "logger":..., "msg":..., **extra}``."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower().replace("warning", "warn"),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                out[key] = value
        if record.exc_info and record.exc_info[0] is not None:
            out["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(out, default=str).decode()


def open_log_stream(out: str, variable: str) -> IO[str]:
    """``stdout``, ``stderr`` or a file opened for appending; a bad path is a ``StartupError``."""
    if out in ("", "stdout"):
        return sys.stdout
    if out == "stderr":
        return sys.stderr
    try:
        return open(out, "a", buffering=1, encoding="utf-8")
    except OSError as exc:
        raise StartupError(f"{variable}={out!r}: cannot open log file: {exc.strerror}") from exc


def silence_broken_pipe(stream: IO[str]) -> None:
    """Point a stream whose reader went away (``plasma --help | head``) at ``/dev/null``.

    Python ignores SIGPIPE, so every later write, and the flush at exit, would raise again and
    print a traceback; a closed stdout ends quietly instead.
    """
    try:
        fd = stream.fileno()
    except (AttributeError, OSError, ValueError):
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, fd)
    finally:
        os.close(devnull)


class _StreamHandler(logging.StreamHandler[IO[str]]):
    """A log target whose reader went away is silenced, not reported on every line."""

    def handleError(self, record: logging.LogRecord) -> None:
        if isinstance(sys.exc_info()[1], BrokenPipeError):
            silence_broken_pipe(self.stream)
            return
        super().handleError(record)


def _handler(config: LogConfig, variable: str) -> logging.Handler:
    handler = _StreamHandler(open_log_stream(config.out, variable))
    handler.setFormatter(JSONFormatter())
    handler.addFilter(RedactTokens())  # no token in any line, whoever logs it
    handler.setLevel(_LEVELS[config.level])
    return handler


def configure_logging(error_log: LogConfig, access_log: LogConfig) -> None:
    """Route the ``plasma`` loggers to their configured targets, replacing earlier handlers."""
    root = logging.getLogger("plasma")
    root.handlers[:] = [_handler(error_log, "PLASMA_ERROR_LOG_OUT")]
    root.setLevel(_LEVELS[error_log.level])
    root.propagate = False
    access = logging.getLogger(ACCESS_LOGGER)
    access.handlers[:] = [_handler(access_log, "PLASMA_ACCESS_LOG_OUT")]
    access.setLevel(_LEVELS[access_log.level])
    access.propagate = False
    for noisy in ("aiohttp", "asyncio", "hpack", "h2"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    # nats-py logs every lost connection with a traceback; the NATS sources log it once, plainly.
    logging.getLogger("nats").setLevel(logging.CRITICAL)
    lib = logging.getLogger()
    if not lib.handlers:
        lib.addHandler(_handler(error_log, "PLASMA_ERROR_LOG_OUT"))
        lib.setLevel(logging.ERROR)


class LogThrottle:
    """One warning per ``interval`` for a repeated condition; the rest are debug lines.

    For what a hostile peer can repeat at will (malformed requests, junk on a channel): the
    first occurrence is visible, a flood is not, and the warning says how many it stood for.
    """

    def __init__(self, interval: float = 60.0) -> None:
        self.interval = interval
        self._last = -interval
        self._suppressed = 0

    def level(self) -> tuple[int, int]:
        """The level for this occurrence, and how many were demoted since the last warning."""
        now = time.monotonic()
        if now - self._last >= self.interval:
            suppressed, self._suppressed, self._last = self._suppressed, 0, now
            return logging.WARNING, suppressed
        self._suppressed += 1
        return logging.DEBUG, 0
