"""The client's exceptions, grouped by what the caller can do about them.

ClientError
├── SubscribeError   the server refused the subscription (bad type, no access): fix the request
├── ConnectError     the server could not be reached on the first connect: check the URL, retry
├── PublishError     the server or Redis refused or failed a publish; ``retry_after`` when
│                    trying again later may work
└── ClosedError      the subscriber was closed (or the server said stop, HTTP 204)
"""

from __future__ import annotations

__all__ = ["ClientError", "ClosedError", "ConnectError", "PublishError", "SubscribeError"]


class ClientError(Exception):
    """Base of every error ``plasma.client`` raises."""


class SubscribeError(ClientError):
    """The server refused the subscription; reconnecting would not help."""

    def __init__(self, message: str, status: int | str | None = None) -> None:
        self.status = status
        """The HTTP status, or the gRPC status name."""
        super().__init__(message)


class ConnectError(ClientError):
    """The first connection failed (refused, timed out, or the server answered 5xx)."""


class PublishError(ClientError):
    """A publish failed; nothing of that call was published unless the message says so."""

    def __init__(
        self, message: str, status: int | None = None, retry_after: float | None = None
    ) -> None:
        self.status = status
        self.retry_after = retry_after
        """Seconds the server asked to wait (``Retry-After``), when it said."""
        super().__init__(message)


class ClosedError(ClientError):
    """The subscriber is closed."""
