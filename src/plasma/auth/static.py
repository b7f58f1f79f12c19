"""A fixed bearer token guarding one endpoint: ``/metrics`` or ``/debug``'s page."""

from __future__ import annotations

import hmac

from aiohttp import web

from plasma.auth.credentials import QUERY_PARAMETER, bearer_token
from plasma.auth.errors import Unauthenticated
from plasma.errors import ConfigError

__all__ = ["MIN_STATIC_TOKEN", "StaticToken"]

MIN_STATIC_TOKEN = 16
"""Shorter tokens could be guessed over the network."""


class StaticToken:
    """A fixed bearer token guarding one endpoint (``/metrics``, ``/debug``'s page).

    Compared in constant time; accepted from ``Authorization: Bearer`` or ``access_token``
    (a browser opening ``/debug`` cannot set a header).
    """

    def __init__(self, value: str, setting: str) -> None:
        if len(value.encode()) < MIN_STATIC_TOKEN:
            raise ConfigError(
                setting,
                f"<hidden, {len(value.encode())} bytes>",
                f"at least {MIN_STATIC_TOKEN} bytes",
            )
        self._value = value.encode()

    def __repr__(self) -> str:
        return "StaticToken(<hidden>)"

    def allows(self, request: web.BaseRequest) -> bool:
        try:
            presented = bearer_token(request.headers.get("Authorization"))
        except Unauthenticated:
            return False
        if presented is None:
            values = request.query.getall(QUERY_PARAMETER, [])
            presented = values[0] if len(values) == 1 else None
        if presented is None:
            return False
        return hmac.compare_digest(presented.encode(), self._value)

    @staticmethod
    def refusal(request: web.BaseRequest) -> Unauthenticated:
        """Why ``request`` is refused: no token (plain ``Bearer``) or a wrong one."""
        if "Authorization" in request.headers or QUERY_PARAMETER in request.query:
            return Unauthenticated("signature", "the token does not match")
        return Unauthenticated("missing", "this endpoint requires its token", had_token=False)
