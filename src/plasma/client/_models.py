"""What a subscriber yields: events, and gaps where events were lost."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

import orjson

__all__ = ["GAP_TYPE", "Event", "Gap", "loads"]

GAP_TYPE = "plasma:gap"
"""The reserved type plasma gives its in-band gap signal."""


@dataclass(frozen=True, slots=True)
class Event:
    """One event: its id (for resuming), its type and its ``data``, decoded from JSON."""

    id: str
    type: str
    data: Any


@dataclass(frozen=True, slots=True)
class Gap:
    """Events were lost between ``last_event_id`` and ``resume_from``.

    ``last_event_id`` is the id the subscriber asked to resume after (``None`` when it had none);
    ``resume_from`` is where the server picked up (``None`` when unknown). Reload whatever state
    those events would have changed.
    """

    last_event_id: str | None
    resume_from: str | None
    reason: str


# orjson reads integers of 20 digits or more as floats, dropping digits; the stdlib keeps them.
_LONG_NUMBER = re.compile(rb"\d{20,}")


def loads(text: bytes | str) -> Any:
    """Decode JSON exactly: orjson, or the stdlib for integers orjson would round."""
    raw = text.encode() if isinstance(text, str) else text
    if _LONG_NUMBER.search(raw):
        return json.loads(raw)
    return orjson.loads(raw)
