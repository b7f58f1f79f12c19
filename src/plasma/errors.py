"""Plasma's exceptions, grouped by what the caller does about them.

PlasmaError
├── ConfigError      a setting is wrong: print the message, exit 2
├── StartupError     the server cannot start (port in use, bad TLS files): exit 1
├── SourceError      the broker connection failed: reconnect with back-off
│   └── SourceGaveUp the retry budget is spent and the policy says die: exit 3
├── FeedLost         a worker lost its node's source reader: exit 4, the supervisor restarts it
└── InvalidEvent     a message on a channel is not an event: count, log, skip
"""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "FeedLost",
    "InvalidEvent",
    "PlasmaError",
    "SourceError",
    "SourceGaveUp",
    "StartupError",
]


class PlasmaError(Exception):
    """Base of every error plasma raises on purpose."""


class ConfigError(PlasmaError):
    """A ``PLASMA_*`` variable holds a value plasma cannot use."""

    def __init__(self, name: str, value: str, expected: str) -> None:
        self.name = name
        self.value = value
        self.expected = expected
        super().__init__(f"{name}={value!r} is invalid: expected {expected}")


class StartupError(PlasmaError):
    """The server cannot start; the message says what to change."""


class SourceError(PlasmaError):
    """The source lost (or could not open) its broker connection."""


class SourceGaveUp(SourceError):
    """The source exhausted its retries and is configured to die."""


class FeedLost(PlasmaError):
    """A worker's feed from its node's source reader ended: its history can no longer vouch."""


class InvalidEvent(PlasmaError):
    """A broker message is not a valid event; ``reason`` is a short metric label.

    ``index`` names the event within a batch (the publish API), when there is one."""

    def __init__(self, reason: str, detail: str, index: int | None = None) -> None:
        self.reason = reason
        self.index = index
        super().__init__(detail)
