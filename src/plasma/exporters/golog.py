"""Go ``log`` package line headers, so ``PLASMA_METRICS_LOG_FLAG`` means what it meant in Go.

The header is built as Go's ``log.Logger.formatHeader`` builds it: the prefix first (or just
before the message with ``Lmsgprefix``), then ``2009/01/23 `` for ``Ldate``, ``01:23:23 ``
for ``Ltime`` (``01:23:23.123123 `` with ``Lmicroseconds``), in UTC with ``LUTC``, then
``file:line: `` for ``Llongfile``/``Lshortfile``. The prefix is used verbatim: like Go, no
space is added after it.
"""

from __future__ import annotations

import datetime
import os

__all__ = [
    "LDATE",
    "LLONGFILE",
    "LMICROSECONDS",
    "LMSGPREFIX",
    "LSHORTFILE",
    "LTIME",
    "LUTC",
    "format_go_log_line",
]

LDATE = 1
LTIME = 2
LMICROSECONDS = 4
LLONGFILE = 8
LSHORTFILE = 16
LUTC = 32
LMSGPREFIX = 64


def format_go_log_line(
    prefix: str,
    flags: int,
    message: str,
    *,
    now: float,
    caller: tuple[str, int] = ("???", 0),
) -> str:
    """One log line (ending in a newline) as Go's ``log.New(out, prefix, flags)`` writes it."""
    parts: list[str] = []
    if not flags & LMSGPREFIX:
        parts.append(prefix)
    if flags & (LDATE | LTIME | LMICROSECONDS):
        tz = datetime.UTC if flags & LUTC else None
        t = datetime.datetime.fromtimestamp(now, tz)
        if flags & LDATE:
            parts.append(f"{t.year:04d}/{t.month:02d}/{t.day:02d} ")
        if flags & (LTIME | LMICROSECONDS):
            parts.append(f"{t.hour:02d}:{t.minute:02d}:{t.second:02d}")
            if flags & LMICROSECONDS:
                parts.append(f".{t.microsecond:06d}")
            parts.append(" ")
    if flags & (LSHORTFILE | LLONGFILE):
        path, line = caller
        if flags & LSHORTFILE:
            path = os.path.basename(path)
        parts.append(f"{path}:{line}: ")
    if flags & LMSGPREFIX:
        parts.append(prefix)
    parts.append(message)
    if not message.endswith("\n"):
        parts.append("\n")
    return "".join(parts)
