"""Building the ``Authorizer`` (and the endpoint tokens) from the settings, once at start-up."""

from __future__ import annotations

from typing import TYPE_CHECKING

from plasma.auth.authorizer import Authorizer
from plasma.auth.policy import TypeSet
from plasma.auth.static import StaticToken

if TYPE_CHECKING:
    from plasma.auth.tokens import TokenVerifier
    from plasma.config import AuthConfig

__all__ = ["EndpointTokens", "build_authorizer"]


class EndpointTokens:
    """The bearer tokens of ``/metrics`` and ``/debug``'s page; ``None`` where unset (open)."""

    def __init__(self, config: AuthConfig) -> None:
        self.metrics = (
            StaticToken(config.metrics_token, "PLASMA_METRICS_TOKEN")
            if config.metrics_token
            else None
        )
        self.debug = (
            StaticToken(config.debug_token, "PLASMA_DEBUG_TOKEN") if config.debug_token else None
        )


def build_authorizer(config: AuthConfig, failures: dict[str, int] | None = None) -> Authorizer:
    """The authorizer the settings describe (disabled with no key); raise ``ConfigError``.

    PyJWT and cryptography (~20 MB of RSS per process) are imported only when a key is set."""
    verifier = None
    if config.enabled or config.jwt_algorithms:
        verifier = _verifier(config)
    return Authorizer(
        verifier,
        public_types=TypeSet.of(config.public_types),
        cookie=config.cookie,
        failures=failures,
    )


def _verifier(config: AuthConfig) -> TokenVerifier | None:
    from plasma.auth.keys import load_keys
    from plasma.auth.tokens import TokenVerifier

    keys = load_keys(
        secret=config.jwt_secret,
        public_key_file=config.jwt_public_key_file,
        jwks_file=config.jwt_jwks_file,
        algorithms=",".join(config.jwt_algorithms),
    )
    if keys is None:
        return None
    return TokenVerifier(
        keys, audience=config.jwt_audience, issuer=config.jwt_issuer, leeway=config.jwt_leeway
    )
