"""Process figures from /proc: CPU seconds (utime + stime) and RSS of a process tree."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["cpu_seconds", "machine_busy_seconds", "process_tree", "rss_bytes"]

_TICK = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name is in parentheses and may contain spaces: split after the last ')'.
    return text[text.rindex(")") + 2 :].split()


def process_tree(root: int) -> list[int]:
    """``root`` and all its live descendants."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        fields = _stat_fields(int(entry))
        if fields is not None:
            children.setdefault(int(fields[1]), []).append(int(entry))
    out = []
    todo = [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, ()))
    return out


def cpu_seconds(pids: list[int]) -> float:
    """utime + stime of each process (all its threads), summed, in seconds."""
    total = 0
    for pid in pids:
        fields = _stat_fields(pid)
        if fields is not None:
            # fields[0] is the state (field 3); utime and stime are fields 14 and 15.
            total += int(fields[11]) + int(fields[12])
    return total / _TICK


def rss_bytes(pids: list[int]) -> int:
    """VmRSS of each process, summed, in bytes."""
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
                    break
        except OSError:
            continue
    return total


def machine_busy_seconds() -> dict[str, float]:
    """All CPUs since boot (/proc/stat), in seconds: process time (user+nice+system), interrupt
    time (irq+softirq: loopback TCP is processed there and is charged to no process), steal."""
    try:
        first = Path("/proc/stat").read_text().split("\n", 1)[0].split()
    except OSError:
        return {"tasks": 0.0, "irq": 0.0, "steal": 0.0}
    v = [int(x) for x in first[1:]] + [0] * 10
    return {
        "tasks": (v[0] + v[1] + v[2]) / _TICK,
        "irq": (v[5] + v[6]) / _TICK,
        "steal": v[7] / _TICK,
    }
