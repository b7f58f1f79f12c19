"""The seam between ``Subscriber`` and a transport: one open stream, read item by item."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from plasma.client._models import GAP_TYPE, Event, Gap, loads

__all__ = ["Connection", "Lost", "gap_from", "item_from"]


class Lost(Exception):
    """The stream broke or the server is unavailable for now: reconnect after a delay."""

    def __init__(self, reason: str, retry_after: float | None = None) -> None:
        self.retry_after = retry_after
        super().__init__(reason)


class Connection(Protocol):
    """One subscription stream: what every transport offers ``Subscriber``."""

    retry_hint: float | None
    """Seconds the server asked clients to wait before reconnecting (SSE ``retry:``), if any."""

    async def next(self) -> Event | Gap | None:
        """The next event or gap; ``None`` when the stream ended; raises ``Lost`` when it broke."""

    async def resubscribe(self, types: Sequence[str]) -> None:
        """Replace the subscription on this stream; raises ``ClientError`` when unsupported."""

    async def aclose(self) -> None:
        """Close the stream; idempotent, never raises."""


def gap_from(data: Any, fallback_id: str) -> Gap:
    """The ``Gap`` for plasma's gap signal, whose data is ``{lastEventId, resumeFrom}``."""
    last = data.get("lastEventId") if isinstance(data, dict) else None
    resume = data.get("resumeFrom") if isinstance(data, dict) else None
    return Gap(
        last if isinstance(last, str) else None,
        resume if isinstance(resume, str) else (fallback_id or None),
        "the server could not replay the events after last_event_id",
    )


def item_from(event_id: str, event_type: str, data: Any) -> Event | Gap:
    if event_type == GAP_TYPE:
        return gap_from(data, event_id)
    return Event(event_id, event_type, data)


def envelope(body: str) -> tuple[str, Any]:
    """``(type, data)`` of an SSE ``data:`` line holding a whole event; raises ``Lost``."""
    try:
        obj = loads(body)
        event_type = obj["meta"]["type"]
    except (ValueError, TypeError, KeyError) as exc:
        raise Lost(f"the server sent a frame that is not an event: {exc}") from None
    if not isinstance(event_type, str):
        raise Lost("the server sent an event whose meta.type is not a string")
    return event_type, obj.get("data")
