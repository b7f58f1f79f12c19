"""The one error access control raises: a refusal the transports turn into 401/403 or a status."""

from __future__ import annotations

from plasma.errors import PlasmaError

__all__ = ["REASONS", "AuthError", "Forbidden", "Unauthenticated"]

REASONS = (
    "missing",
    "malformed",
    "too_long",
    "algorithm",
    "unknown_key",
    "signature",
    "expired",
    "not_yet_valid",
    "audience",
    "issuer",
    "claims",
    "forbidden",
)
"""Every ``reason`` label a refusal carries: the ``/metrics`` counters are keyed by these."""


class AuthError(PlasmaError):
    """A request is refused. The message is one line, safe to send back: it never holds a token.

    ``status`` is the HTTP answer (401 or 403), ``reason`` a short metric label from
    ``REASONS``, ``had_token`` whether a token was presented (401 without one carries no
    ``error`` in ``WWW-Authenticate``, as RFC 6750 asks).
    """

    status = 401

    def __init__(self, reason: str, message: str, *, had_token: bool = True) -> None:
        self.reason = reason
        self.had_token = had_token
        super().__init__(message)

    @property
    def www_authenticate(self) -> str:
        """The ``WWW-Authenticate`` value of the answer (RFC 6750, section 3)."""
        if self.status == 403:
            return 'Bearer error="insufficient_scope"'
        if not self.had_token:
            return "Bearer"
        return 'Bearer error="invalid_token"'


class Unauthenticated(AuthError):
    """No usable token: missing, malformed, badly signed, expired, not yet valid (401)."""

    status = 401


class Forbidden(AuthError):
    """A valid token that does not cover what was asked (403)."""

    status = 403

    def __init__(self, message: str) -> None:
        super().__init__("forbidden", message)
