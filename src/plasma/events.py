"""Events: what a publisher puts on a channel, parsed once and encoded once per transport.

A publisher sends ``{"meta": {"type": "program:1234:views"}, "data": <any JSON>}``. ``parse_event``
validates it and keeps one byte string: ``body``, the whole event as compact JSON (what SSE's
``data:`` line carries). ``data``, the JSON text of ``data`` (what a gRPC ``Payload`` carries), is
the tail of ``body`` and is sliced out only when asked for. Transports turn an event into wire
bytes with an *encoder*; a live fan-out makes each encoder's frame once and shares it, and
replays (a batch of resumes) share it through the event's cache, which the hub then drops
(``forget_frames``): a frame lives only as long as some client still has it queued, and
history holds one copy of each event.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import orjson

from plasma.config import setting_default
from plasma.errors import InvalidEvent

__all__ = [
    "EVENT_OVERHEAD",
    "MAX_EVENT_BYTES",
    "CheckedBatch",
    "Encoder",
    "Event",
    "batch_is_exact",
    "parse_batch",
    "parse_event",
    "type_prefixes",
]

MAX_EVENT_BYTES: int = setting_default("PLASMA_MAX_EVENT_SIZE")
"""Default upper bound of one incoming message; larger ones are skipped."""

EVENT_OVERHEAD = 400
"""Bytes an event costs besides its body: the object, its id and its history index entry
(measured with tracemalloc on 64-bit CPython; docs/benchmarks.md, "Memory per event")."""

Encoder = Callable[["Event"], bytes]


class Event:
    """One event: its type, id (set by the hub), and its JSON text (``body``)."""

    __slots__ = ("_data_at", "_encoded", "body", "id", "name", "received", "type")

    def __init__(
        self, type: str, data: bytes, body: bytes | None = None, *, name: str = ""
    ) -> None:
        self.type = type
        if body is None:
            body = _body(type, data)
        self.body = body
        """The whole event as compact JSON; it ends with ``data`` and a closing brace."""
        self._data_at = len(body) - len(data) - 1
        self.id = ""
        self.name = name
        """SSE ``event:`` name; empty for ordinary events (``message``), set for signals."""
        self.received = time.monotonic()
        self._encoded: dict[Encoder, bytes] | None = None

    @property
    def data(self) -> bytes:
        """The JSON text of ``data`` (a copy sliced out of ``body``)."""
        return self.body[self._data_at : -1]

    def data_text(self) -> str:
        """The JSON text of ``data`` as a string, decoded straight from ``body``."""
        return str(memoryview(self.body)[self._data_at : -1], "utf-8", "replace")

    @property
    def held_bytes(self) -> int:
        """What keeping this event costs: its body plus ``EVENT_OVERHEAD``."""
        return len(self.body) + EVENT_OVERHEAD

    def encode(self, encoder: Encoder) -> bytes:
        """Return ``encoder(self)``, computed once per event and encoder until ``forget_frames``."""
        cache = self._encoded
        if cache is None:
            out = encoder(self)
            self._encoded = {encoder: out}
            return out
        cached = cache.get(encoder)
        if cached is None:
            cached = cache[encoder] = encoder(self)
        return cached

    def forget_frames(self) -> None:
        """Drop the cached encodings: the clients that queued them hold their own references."""
        self._encoded = None

    def __repr__(self) -> str:
        return f"Event(type={self.type!r}, id={self.id!r}, data={self.data[:60]!r})"


# Types repeat: the start of the body of each recent type, so an event costs one concatenation.
_BODY_HEADS: dict[str, bytes] = {}
_BODY_HEADS_MAX = 4096


def _body(type: str, data: bytes) -> bytes:
    head = _BODY_HEADS.get(type)
    if head is None:
        if len(_BODY_HEADS) >= _BODY_HEADS_MAX:
            _BODY_HEADS.clear()
        head = _BODY_HEADS[type] = b'{"meta":{"type":' + orjson.dumps(type) + b'},"data":'
    return head + data + b"}"


# orjson reads integers outside [-2**63, 2**64) as floats, dropping digits: a message holding
# such a number takes the stdlib path (~8x slower), which keeps it exact. A nanosecond
# timestamp (19 digits) still fits, so publishers that send time.time_ns() stay on orjson.
# Long digit runs are found on a copy with every digit as b"1" and every other byte as b"0":
# ``bytes.translate`` and ``bytes.find`` run at memory speed (~5 ms for 1 MB), where a regular
# expression scanning for ``\d{19,}`` took ~100 ms per MB and capped large events at ~10 MB/s.
_DIGIT_MARKS = bytes(0x31 if 0x30 <= b <= 0x39 else 0x30 for b in range(256))
_LONG_RUN = b"1" * 19
_INT_RANGE = range(-(2**63), 2**64)


def _orjson_is_exact(raw: bytes) -> bool:
    """Whether every long digit run in ``raw`` is an integer orjson reads exactly."""
    marks = raw.translate(_DIGIT_MARKS)
    start = marks.find(_LONG_RUN)
    while start != -1:
        end = marks.find(b"0", start)
        if end == -1:
            end = len(marks)
        if end - start > 20:  # 21 digits or more: beyond 2**64 (and int() may refuse it)
            return False
        if start and raw[start - 1] == 0x2D:  # a minus sign
            start -= 1
        if int(raw[start:end]) not in _INT_RANGE:
            return False
        start = marks.find(_LONG_RUN, end)
    return True


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _loads(raw: bytes) -> tuple[Any, bool]:
    """Parse JSON with orjson, or with the stdlib when it may hold integers over 64 bits."""
    if _orjson_is_exact(raw):
        try:
            return orjson.loads(raw), True
        except orjson.JSONDecodeError as exc:
            raise InvalidEvent("invalid_json", f"not JSON: {exc}") from None
    try:
        return json.loads(raw, parse_constant=_no_constant), False
    except (ValueError, RecursionError) as exc:
        raise InvalidEvent("invalid_json", f"not JSON: {exc}") from None


def parse_event(
    raw: bytes | str, max_bytes: int = MAX_EVENT_BYTES, *, exact: bool = False
) -> Event:
    """Parse one broker message; raise ``InvalidEvent`` with a short reason if it is not one.

    ``exact``: ``batch_is_exact`` already found that orjson reads ``raw`` exactly.
    """
    if isinstance(raw, str):
        raw = raw.encode("utf-8", "surrogatepass")
    if len(raw) > max_bytes:
        raise InvalidEvent("too_large", f"message of {len(raw)} bytes exceeds {max_bytes}")
    if exact:
        try:
            return _event_from(orjson.loads(raw), True)
        except orjson.JSONDecodeError as exc:
            raise InvalidEvent("invalid_json", f"not JSON: {exc}") from None
    obj, fast = _loads(raw)
    return _event_from(obj, fast)


def batch_is_exact(raws: Sequence[bytes | str]) -> bool:
    """Whether orjson reads every message of a batch exactly: one scan of them all joined
    (by a byte that ends any digit run) instead of one per message."""
    try:
        joined = b"\n".join(raws)  # type: ignore[arg-type]  # str messages: TypeError
    except TypeError:
        return False
    return _orjson_is_exact(joined)


def _event_from(obj: Any, fast: bool) -> Event:
    """The event a parsed message holds; ``fast``: it was read by orjson (exactly)."""
    if not isinstance(obj, dict):
        raise InvalidEvent("not_object", f"message is a JSON {type(obj).__name__}, not an object")
    meta = obj.get("meta")
    if not isinstance(meta, dict):
        raise InvalidEvent("no_type", "message has no meta object")
    event_type = meta.get("type")
    if not isinstance(event_type, str):
        raise InvalidEvent("no_type", "meta.type is missing or not a string")
    if not event_type:
        raise InvalidEvent("no_type", "meta.type is empty")
    value = obj.get("data")
    if fast:
        try:
            data = orjson.dumps(value)
        except TypeError:  # orjson writes at most 254 levels deep; it reads up to 1024
            raise InvalidEvent("too_deep", "data is nested too deeply to forward") from None
    else:
        try:
            # allow_nan=False: 1e400 parses as inf, which has no JSON text; lone surrogates
            # (``"\\ud800"``) cannot be encoded as UTF-8. Both are rejected, never forwarded.
            data = json.dumps(
                value, separators=(",", ":"), ensure_ascii=False, allow_nan=False
            ).encode()
            event_type.encode()
        except ValueError as exc:
            raise InvalidEvent("invalid_json", f"not representable as JSON: {exc}") from None
        except RecursionError:
            raise InvalidEvent("too_deep", "data is nested too deeply to forward") from None
    # Types repeat: one shared string per type instead of one per event held.
    return Event(sys.intern(event_type), data)


class CheckedBatch(NamedTuple):
    """A publish API batch, checked: each event's type and the bytes to publish for it."""

    types: list[str]
    bodies: list[bytes]


def parse_batch(raw: bytes, max_bytes: int = MAX_EVENT_BYTES) -> CheckedBatch:
    """Parse a JSON array of events (a publish API batch): each by ``parse_event``'s rules.

    The body is parsed once; the first invalid element raises ``InvalidEvent`` with its
    ``index``. Each valid element is published as orjson writes it back (one call, no
    ``Event``): every process that reads it applies ``parse_event`` again, so only what that
    accepts is let through. Its size is checked the way a reader checks a message:
    over ``max_bytes`` is ``too_large``. A body whose integers orjson cannot read exactly,
    or an element it cannot write, takes ``parse_event``'s own path (``_event_from``).
    """
    items, fast = _loads(raw)
    if not isinstance(items, list):
        raise InvalidEvent("not_array", "a batch is a JSON array of events")
    dumps = orjson.dumps
    if fast:
        # Every element an event, in C-level loops; any exception or doubt: the loop below
        # finds the first invalid element and says why. An element that is not an object, or
        # whose ``meta`` is not one, fails the subscript (``TypeError``); a missing key, the
        # lookup (``KeyError``); too deep for orjson to write, its dumps (``TypeError``).
        try:
            types = [item["meta"]["type"] for item in items]
            bodies = [dumps(item) for item in items]
        except (TypeError, KeyError):
            pass
        else:
            if (
                set(map(type, types)) <= {str}
                and "" not in types
                and max(map(len, bodies), default=0) <= max_bytes
            ):
                return CheckedBatch(types, bodies)
    types = []
    bodies = []
    event_type: Any
    for index, item in enumerate(items):
        body = None
        if fast and type(item) is dict:
            meta = item.get("meta")
            if type(meta) is dict:
                event_type = meta.get("type")
                if type(event_type) is str and event_type:
                    try:
                        body = dumps(item)
                    except TypeError:  # too deep to write: _event_from says exactly why
                        body = None
        if body is None:
            try:
                event = _event_from(item, fast)
            except InvalidEvent as exc:
                raise InvalidEvent(exc.reason, f"event {index}: {exc}", index) from None
            event_type, body = event.type, event.body
        if len(body) > max_bytes:
            raise InvalidEvent(
                "too_large", f"event {index}: {len(body)} bytes exceeds {max_bytes}", index
            )
        types.append(event_type)
        bodies.append(body)
    return CheckedBatch(types, bodies)


def type_prefixes(event_type: str) -> list[str]:
    """``"a:b:c"`` -> ``["a", "a:b", "a:b:c"]``: every type a subscriber may have asked for."""
    out = []
    i = event_type.find(":")
    while i != -1:
        out.append(event_type[:i])
        i = event_type.find(":", i + 1)
    out.append(event_type)
    return out
