"""What the transports ask: may this request subscribe to, or publish, these event types?

``Authorizer`` is built once at start-up from the settings; with no key configured it is
disabled and every check allows, so plasma behaves as it does without access control. Each
refusal is counted by reason (``failures``, which ``/metrics`` reports).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import orjson
from aiohttp import web

from plasma.auth.credentials import QUERY_PARAMETER, request_token
from plasma.auth.errors import AuthError, Forbidden, Unauthenticated
from plasma.auth.policy import Identity, TypeSet

if TYPE_CHECKING:
    from plasma.auth.tokens import TokenVerifier

__all__ = ["SUBJECT_KEY", "Authorizer", "refusal_response"]

SUBJECT_KEY = "plasma.auth.subject"
"""Where ``check_publish`` leaves the token's ``sub`` on the request, for the access log."""


def refusal_response(
    error: AuthError, *, text: bool = False, headers: dict[str, str] | None = None
) -> web.Response:
    """The HTTP answer to a refusal: 401/403, ``WWW-Authenticate``, and a one-line reason.

    JSON (``{"error": ...}``) like the publish answers, or ``text`` like SSE's other refusals.
    """
    all_headers = {"WWW-Authenticate": error.www_authenticate, **(headers or {})}
    if text:
        return web.Response(status=error.status, text=f"{error}\n", headers=all_headers)
    return web.Response(
        status=error.status,
        body=orjson.dumps({"error": str(error)}),
        content_type="application/json",
        headers=all_headers,
    )


class Authorizer:
    """Checks subscriptions and publications against the token a request presents.

    ``Authorizer(None)`` is the disabled one. ``public_types`` may be read with no token;
    ``cookie`` names the cookie SSE reads a token from.
    """

    def __init__(
        self,
        verifier: TokenVerifier | None,
        *,
        public_types: TypeSet | None = None,
        cookie: str = "",
        failures: dict[str, int] | None = None,
    ) -> None:
        self.verifier = verifier
        self.public_types = public_types or TypeSet()
        self.cookie = cookie
        self.failures = failures if failures is not None else {}
        """Refusals by reason (one of ``REASONS``); the server passes ``Metrics``' counter."""

    @property
    def enabled(self) -> bool:
        return self.verifier is not None

    def refused(self, error: AuthError) -> AuthError:
        """Count a refusal by its reason (once per answer); return it, to raise or answer."""
        self.failures[error.reason] = self.failures.get(error.reason, 0) + 1
        return error

    def authenticate(self, token: str | None) -> Identity | None:
        """The identity of a presented token, ``None`` for no token; raise ``Unauthenticated``."""
        if token is None or self.verifier is None:
            return None
        return self.verifier.verify(token)

    def check_subscribe(
        self, token: str | None, types: Sequence[str], *, count: bool = True
    ) -> Identity | None:
        """Allow a subscription to all of ``types`` or raise ``AuthError`` (nothing subscribed).

        A presented token must be valid even when every type is public: a client that sends a
        broken token has a bug worth hearing about. ``count=False`` when another check will
        answer (and count) the same request.
        """
        if self.verifier is None:
            return None
        try:
            return self._check_subscribe(token, types)
        except AuthError as exc:
            raise (self.refused(exc) if count else exc) from None

    def _check_subscribe(self, token: str | None, types: Sequence[str]) -> Identity | None:
        identity = self.authenticate(token)
        public = self.public_types
        for t in types:
            if public.allows(t):
                continue
            if identity is None:
                raise Unauthenticated(
                    "missing", f"a token is required for event type {t!r}", had_token=False
                )
            if not identity.grant.subscribe.allows(t):
                raise Forbidden(f"the token does not allow subscribing to {t!r}")
        return identity

    def check_publish_token(self, token: str | None, types: Sequence[str]) -> Identity | None:
        """Allow publishing ``types`` with ``token`` or raise ``AuthError``."""
        if self.verifier is None:
            return None
        try:
            identity = self.authenticate(token)
            if identity is None:
                raise Unauthenticated("missing", "publishing requires a token", had_token=False)
            refused = identity.grant.publish.first_refused(types)
            if refused is not None:
                raise Forbidden(f"the token does not allow publishing {refused!r}")
        except AuthError as exc:
            raise self.refused(exc) from None
        return identity

    def check_publish(self, request: web.BaseRequest, types: Sequence[str]) -> web.Response | None:
        """``None`` when ``request`` may publish every one of ``types``; else the 401/403 answer.

        The token comes from ``Authorization: Bearer`` or the ``access_token`` query parameter,
        never from a cookie (see ``plasma.auth.credentials``). The token's ``sub`` is left on
        the request under ``SUBJECT_KEY`` for the access log. With access control off, ``None``.
        """
        if self.verifier is None:
            return None
        try:
            token = request_token(
                authorization=request.headers.get("Authorization"),
                query_tokens=request.query.getall(QUERY_PARAMETER, []),
            )
        except Unauthenticated as exc:
            return refusal_response(self.refused(exc))
        try:
            identity = self.check_publish_token(token, types)
        except AuthError as exc:
            return refusal_response(exc)
        if identity is not None and identity.subject is not None:
            request[SUBJECT_KEY] = identity.subject
        return None
