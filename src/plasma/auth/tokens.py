"""Verifying a JWT once: signature, algorithm, ``exp``/``nbf``/``aud``/``iss``, the plasma claim.

A connection presents its token once; a page that reconnects presents the same token again,
so verified tokens are cached by their raw text until they expire (bounded, and dropped when
the keys change). A refusal is always ``Unauthenticated`` with a reason label and a one-line
message that never quotes the token; nothing else escapes ``verify``, whatever the bytes.
"""

from __future__ import annotations

import base64
import json
import re
import time
from collections.abc import Callable
from typing import Any

import jwt

from plasma.auth.errors import Unauthenticated
from plasma.auth.keys import KeySource
from plasma.auth.policy import Identity, grant_from_claims

__all__ = ["MAX_TOKEN_LENGTH", "TokenVerifier"]

MAX_TOKEN_LENGTH = 16384
"""Longer than any real token; longer input is refused before it is decoded."""

CACHE_SIZE = 4096

# PyJWT's errors, most specific first: the first match names the reason.
_REASONS: tuple[tuple[type[Exception], str, str], ...] = (
    (jwt.ExpiredSignatureError, "expired", "token expired"),
    (jwt.ImmatureSignatureError, "not_yet_valid", "token not yet valid (nbf)"),
    (jwt.InvalidAudienceError, "audience", "token audience (aud) does not match"),
    (jwt.InvalidIssuerError, "issuer", "token issuer (iss) does not match"),
    (jwt.InvalidSignatureError, "signature", "token signature does not verify"),
    (jwt.InvalidAlgorithmError, "algorithm", "token algorithm is not accepted"),
    (jwt.MissingRequiredClaimError, "claims", "token lacks a required claim"),
    (jwt.InvalidKeyError, "signature", "token signature does not verify"),
)


_SEGMENT = re.compile(r"[A-Za-z0-9_-]+")


def _header(raw: str) -> dict[str, Any]:
    """The token's header, read only to choose the key and algorithm.

    ``jwt.decode`` reads and checks it again, whole, with that one algorithm: this read never
    decides validity, it only avoids PyJWT parsing every token twice (its per-character
    checks are most of the cost of an HS256 verification).
    """
    segment = raw.partition(".")[0]
    if not _SEGMENT.fullmatch(segment) or len(segment) % 4 == 1:
        raise Unauthenticated("malformed", "token header is malformed")
    try:
        header = json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))
    except ValueError:  # binascii.Error, JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise Unauthenticated("malformed", "token header is malformed") from None
    if not isinstance(header, dict):
        raise Unauthenticated("malformed", "token header is malformed")
    return header


def _refusal(exc: Exception) -> Unauthenticated:
    for kind, reason, message in _REASONS:
        if isinstance(exc, kind):
            if kind is jwt.MissingRequiredClaimError:
                claim = getattr(exc, "claim", "")
                reason = {"aud": "audience", "iss": "issuer"}.get(claim, reason)
                message = f"token lacks the {claim} claim"
            return Unauthenticated(reason, message)
    return Unauthenticated("malformed", "token is malformed")


class TokenVerifier:
    """``TokenVerifier(keys, audience="push", leeway=5).verify(raw)`` -> ``Identity``."""

    def __init__(
        self,
        keys: KeySource,
        *,
        audience: str = "",
        issuer: str = "",
        leeway: float = 5.0,
        cache_size: int = CACHE_SIZE,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.keys = keys
        self.leeway = leeway
        self._audience = audience or None
        self._issuer = issuer or None
        self._require = [c for c, v in (("aud", audience), ("iss", issuer)) if v]
        self._cache: dict[str, Identity] = {}
        self._cache_size = cache_size
        self._generation = keys.generation
        self._clock = clock

    @property
    def cached(self) -> int:
        """Verified tokens held in the cache (bounded by ``cache_size``)."""
        return len(self._cache)

    def verify(self, raw: str) -> Identity:
        """The token's identity; raise ``Unauthenticated`` for anything short of valid."""
        self.keys.refresh()
        if self.keys.generation != self._generation:
            self._generation = self.keys.generation
            self._cache.clear()  # a key may be gone: re-verify everything
        cached = self._cache.get(raw)
        if cached is not None:
            if cached.expires_at is None or self._clock() < cached.expires_at:
                return cached
            del self._cache[raw]
        identity = self._verify(raw)
        if len(self._cache) >= self._cache_size:
            self._evict()
        self._cache[raw] = identity
        return identity

    def _evict(self) -> None:
        now = self._clock()
        expired = [
            k for k, v in self._cache.items() if v.expires_at is not None and v.expires_at <= now
        ]
        for key in expired:
            del self._cache[key]
        if len(self._cache) >= self._cache_size:  # all live: drop the oldest quarter
            for key in list(self._cache)[: max(1, self._cache_size // 4)]:
                del self._cache[key]

    def _verify(self, raw: str) -> Identity:
        if len(raw) > MAX_TOKEN_LENGTH:
            raise Unauthenticated("too_long", f"token longer than {MAX_TOKEN_LENGTH} characters")
        if raw.count(".") != 2 or not raw.isascii():
            raise Unauthenticated("malformed", "token is not a JWS compact serialization")
        header = _header(raw)
        alg = header.get("alg")
        kid = header.get("kid")
        if not isinstance(alg, str) or (kid is not None and not isinstance(kid, str)):
            raise Unauthenticated("malformed", "token header is malformed")
        key = self.keys.find(kid)
        if alg not in key.algorithms:
            raise Unauthenticated(
                "algorithm", f"token algorithm is not accepted for this {key.kind}"
            )
        try:
            claims: dict[str, Any] = jwt.decode(
                raw,
                key.key,
                algorithms=[alg],
                audience=self._audience,
                issuer=self._issuer,
                leeway=self.leeway,
                options={"require": self._require},
            )
        except (jwt.PyJWTError, ValueError, TypeError) as exc:
            # ValueError/TypeError: PyJWT on some shapes of hostile input (e.g. a huge exp).
            raise _refusal(exc) from None
        grant = grant_from_claims(claims)
        sub = claims.get("sub")
        return Identity(
            subject=sub if isinstance(sub, str) else None,
            expires_at=self._expires_at(claims.get("exp")),
            grant=grant,
        )

    def _expires_at(self, exp: Any) -> float | None:
        """Until when the token is accepted: ``exp`` plus the leeway, as ``decode`` judged it."""
        if exp is None:
            return None
        try:
            return float(exp) + self.leeway
        except (OverflowError, ValueError, TypeError):  # PyJWT took it as an int: far future
            return None
