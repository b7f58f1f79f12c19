"""What a client may ask for: a list of event types, checked the same way for SSE and gRPC."""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["InvalidSubscription", "parse_types", "split_types"]


class InvalidSubscription(ValueError):
    """The requested type list cannot be served; the message is safe to show the client."""


def split_types(text: str) -> list[str]:
    """``"a, b,,c"`` -> ``["a", "b", "c"]``: the comma-separated form of SSE's query parameter."""
    return [part.strip() for part in text.split(",")]


def parse_types(types: Iterable[str], *, max_types: int, max_length: int) -> tuple[str, ...]:
    """Validate requested types; drop blanks and repeats; raise ``InvalidSubscription``.

    The bounds are ``PLASMA_MAX_TYPES`` and ``PLASMA_MAX_TYPE_LENGTH`` (``LimitsConfig``).
    """
    out: dict[str, None] = {}
    for t in types:
        t = t.strip()
        if not t:
            continue
        if len(t) > max_length:
            raise InvalidSubscription(f"event type longer than {max_length} characters")
        if not t.isprintable() or " " in t:
            raise InvalidSubscription("event type contains spaces or control characters")
        out[t] = None
        if len(out) > max_types:
            raise InvalidSubscription(f"more than {max_types} event types")
    if not out:
        raise InvalidSubscription("no event type requested")
    return tuple(out)
