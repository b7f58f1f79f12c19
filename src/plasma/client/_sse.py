"""An incremental parser of ``text/event-stream`` bodies, as browsers read them.

It follows the event-stream interpretation of the WHATWG HTML standard (section 9.2.6): lines end
with CRLF, LF or CR (a CR at the end of one chunk and an LF at the start of the next are one line
end); a leading BOM is dropped; ``data`` lines are joined with ``\\n``; ``id`` persists across
frames and is ignored when it holds a NUL; ``retry`` counts only when it is all ASCII digits; a
blank line dispatches the frame, and a frame with no ``data`` is not dispatched. Bytes are split
into lines before they are decoded, so a UTF-8 sequence cut across two chunks decodes whole.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["MAX_LINE_BYTES", "SSEFrame", "SSEParser", "StreamTooLong"]

MAX_LINE_BYTES = 64 << 20
"""Longest line the parser buffers: a server sending more is broken or hostile."""

_LINE_END = re.compile(rb"\r\n|\r|\n")
_BOM = b"\xef\xbb\xbf"


class StreamTooLong(ValueError):
    """A line grew past ``MAX_LINE_BYTES`` without a line end."""


@dataclass(frozen=True, slots=True)
class SSEFrame:
    """One dispatched frame: ``event`` is ``""`` for the default ``message``."""

    event: str
    data: str
    id: str


class SSEParser:
    """Feed it the body in chunks of any size; it returns the frames each chunk completes."""

    __slots__ = (
        "_after_cr",
        "_buffer",
        "_data",
        "_event",
        "_max_line",
        "_started",
        "last_id",
        "retry",
    )

    def __init__(self, max_line: int = MAX_LINE_BYTES) -> None:
        self._buffer = b""
        self._after_cr = False
        self._started = False
        self._data: list[str] = []
        self._event = ""
        self._max_line = max_line
        self.last_id = ""
        """The last event ID buffer: the newest ``id`` field seen, carried into every frame."""
        self.retry: int | None = None
        """The newest valid ``retry`` field, in milliseconds."""

    def feed(self, chunk: bytes) -> list[SSEFrame]:
        if not chunk:
            return []
        if self._after_cr and chunk[:1] == b"\n":
            chunk = chunk[1:]
        self._after_cr = False
        buffer = self._buffer + chunk if self._buffer else chunk
        frames: list[SSEFrame] = []
        start = 0
        for match in _LINE_END.finditer(buffer):
            line = buffer[start : match.start()]
            start = match.end()
            if match.group() == b"\r" and start == len(buffer):
                self._after_cr = True  # an LF may open the next chunk: same line end
            frame = self._line(line)
            if frame is not None:
                frames.append(frame)
        self._buffer = buffer[start:]
        if len(self._buffer) > self._max_line:
            raise StreamTooLong(f"a stream line is longer than {self._max_line} bytes")
        return frames

    def _line(self, raw: bytes) -> SSEFrame | None:
        if not self._started:
            self._started = True
            if raw.startswith(_BOM):
                raw = raw[3:]
        if not raw:
            return self._dispatch()
        line = raw.decode("utf-8", "replace")
        if line[0] == ":":
            return None
        name, colon, value = line.partition(":")
        if colon and value[:1] == " ":
            value = value[1:]
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        elif name == "id":
            if "\0" not in value:
                self.last_id = value
        elif name == "retry" and value.isascii() and value.isdigit():
            self.retry = int(value)
        return None

    def _dispatch(self) -> SSEFrame | None:
        if not self._data:
            self._event = ""
            return None
        frame = SSEFrame(self._event, "\n".join(self._data), self.last_id)
        self._data = []
        self._event = ""
        return frame
