"""What an SSE stream is on the wire: which requests ask for one, its head, and its frames.

Both ways a stream is served (the lean protocol in ``connection.py`` and the aiohttp handler in
``handler.py``) take their decisions and bytes from here, so they cannot drift apart.
"""

from __future__ import annotations

import email.utils
import re
import time
from urllib.parse import parse_qsl

from plasma.events import Event
from plasma.subscription import InvalidSubscription

__all__ = [
    "HEARTBEAT",
    "LAST_CHUNK",
    "StreamHead",
    "chunk",
    "encode_sse",
    "encode_sse_chunked",
    "is_sse_request",
    "query_values",
    "wants_sse",
]

HEARTBEAT = b":heartbeat\n\n"
LAST_CHUNK = b"0\r\n\r\n"
"""Ends a chunked HTTP/1.1 response."""

_BAD_PERCENT = re.compile(r"%(?![0-9A-Fa-f]{2})")


def wants_sse(accept: str) -> bool:
    """Whether an ``Accept`` header names ``text/event-stream`` (parameters and lists allowed)."""
    accept = accept.lower()
    if "text/event-stream" not in accept:
        return False
    return any(part.split(";", 1)[0].strip() == "text/event-stream" for part in accept.split(","))


def is_sse_request(method: str, accept: str) -> bool:
    """Whether a request asks for an event stream: a ``GET`` on any path accepting one."""
    return method == "GET" and wants_sse(accept)


def query_values(query_string: str, name: str) -> list[str]:
    """Every value of ``name`` in a raw query string, strictly decoded.

    Malformed percent-encoding or bytes that are not UTF-8 raise ``InvalidSubscription``
    instead of being guessed at (a lenient decoder would subscribe to a mangled type).
    """
    if _BAD_PERCENT.search(query_string):
        raise InvalidSubscription("malformed percent-encoding in the query string")
    try:
        pairs = parse_qsl(query_string, keep_blank_values=True, errors="strict")
    except UnicodeDecodeError:
        raise InvalidSubscription("query string is not UTF-8") from None
    return [value for key, value in pairs if key == name]


def chunk(frame: bytes) -> bytes:
    """``frame`` as one HTTP/1.1 chunk."""
    return b"%x\r\n%b\r\n" % (len(frame), frame)


def _frame_head(event: Event) -> bytes:
    head = b"id: " + event.id.encode() + b"\ndata: "
    if event.name:  # a signal (gap): named, so plain onmessage handlers never see it
        return b"event: " + event.name.encode() + b"\n" + head
    return head


def encode_sse(event: Event) -> bytes:
    """The SSE frame of an event: its hub id and the whole event as compact JSON."""
    return b"".join((_frame_head(event), event.body, b"\n\n"))


def encode_sse_chunked(event: Event) -> bytes:
    """The SSE frame wrapped as one HTTP/1.1 chunk (what every HTTP/1.1 client gets).

    Built in one join: the event's body is copied once, and no unchunked frame is kept.
    """
    head = _frame_head(event)
    body = event.body
    size = len(head) + len(body) + 2
    return b"".join((b"%x\r\n" % size, head, body, b"\n\n\r\n"))


class StreamHead:
    """The response headers and first frame every stream starts with, and its last frame.

    The first frame is ``retry:``: sent at once, so a client knows it is subscribed before the
    first event. The same frame ends a stream the server closes, so the client comes back.
    """

    def __init__(self, *, retry_ms: int, origin: str, credentials: bool = False) -> None:
        self.headers: dict[str, str] = {
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-cache",
            "Connection": "keep-alive",
            "X-Accel-Buffering": "no",
        }
        if origin:
            self.headers["Access-Control-Allow-Origin"] = origin
        if credentials:
            self.headers["Access-Control-Allow-Credentials"] = "true"
        self.retry = b"retry: %d\n\n" % retry_ms
        self._retry_frames = (self.retry, chunk(self.retry))
        self._date = ("", 0)

    def retry_frame(self, chunked: bool) -> bytes:
        """The ``retry:`` frame, chunked or not: the first and (server-ended) last frame."""
        return self._retry_frames[chunked]

    def encode(self, http10: bool) -> bytes:
        """Status line, ``Date``, headers and the first frame, for a stream written directly."""
        now = int(time.time())
        if self._date[1] != now:
            self._date = (email.utils.formatdate(now, usegmt=True), now)
        lines = [f"HTTP/1.{0 if http10 else 1} 200 OK", f"Date: {self._date[0]}"]
        lines += [f"{k}: {v}" for k, v in self.headers.items()]
        if not http10:
            lines.append("Transfer-Encoding: chunked")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        return head + self.retry_frame(not http10)
