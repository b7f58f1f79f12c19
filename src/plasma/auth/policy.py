"""Which event types a token may read or publish, by the same colon-prefix rule as subscriptions.

A grant entry ``user:42`` allows ``user:42`` and every type below it (``user:42:notifications``)
but not ``user:420``, and not ``user``: a subscription to ``user`` would deliver every user's
events, so asking for a type *above* what the token holds is refused. ``*`` allows every type.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from plasma.auth.errors import Unauthenticated
from plasma.events import type_prefixes

__all__ = ["CLAIM", "Grant", "Identity", "TypeSet", "grant_from_claims"]

CLAIM = "plasma"
"""The private claim holding ``{"subscribe": [...], "publish": [...]}``."""


@dataclass(frozen=True, slots=True)
class TypeSet:
    """A set of type prefixes; ``TypeSet.of(["user:42", "news"])``, ``TypeSet.of(["*"])``."""

    prefixes: frozenset[str] = frozenset()
    every: bool = False

    @classmethod
    def of(cls, entries: Iterable[str]) -> TypeSet:
        cleaned = {e.strip() for e in entries} - {""}
        return cls(frozenset(cleaned - {"*"}), "*" in cleaned)

    def allows(self, event_type: str) -> bool:
        """Whether ``event_type`` is an entry or lies below one (``a:b`` below ``a``)."""
        if self.every:
            return True
        prefixes = self.prefixes
        if not prefixes:
            return False
        return any(p in prefixes for p in type_prefixes(event_type))

    def first_refused(self, types: Iterable[str]) -> str | None:
        """The first of ``types`` this set does not allow, or ``None`` when it allows them all."""
        for t in types:
            if not self.allows(t):
                return t
        return None

    def __bool__(self) -> bool:
        return self.every or bool(self.prefixes)


@dataclass(frozen=True, slots=True)
class Grant:
    """What one token allows: types it may subscribe to and types it may publish."""

    subscribe: TypeSet = field(default_factory=TypeSet)
    publish: TypeSet = field(default_factory=TypeSet)


@dataclass(frozen=True, slots=True)
class Identity:
    """A verified token: who (``sub``), until when (wall clock, leeway included), and what."""

    subject: str | None
    expires_at: float | None
    grant: Grant


def _entries(value: Any, key: str) -> TypeSet:
    if value is None:
        return TypeSet()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise Unauthenticated(
            "claims", f"the token's {CLAIM}.{key} claim must be a list of strings"
        )
    return TypeSet.of(value)


def grant_from_claims(claims: Mapping[str, Any]) -> Grant:
    """Read the ``plasma`` claim; a token without one is valid and grants nothing.

    A claim of the wrong shape refuses the token (401): silently reading it as "nothing"
    would hide an issuer's bug behind 403s that name the wrong cause.
    """
    value = claims.get(CLAIM)
    if value is None:
        return Grant()
    if not isinstance(value, dict):
        raise Unauthenticated("claims", f"the token's {CLAIM} claim must be an object")
    return Grant(
        _entries(value.get("subscribe"), "subscribe"), _entries(value.get("publish"), "publish")
    )
