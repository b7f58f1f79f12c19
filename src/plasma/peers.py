"""Worker processes share their metrics through snapshot files in one directory.

Each worker writes its snapshot about once a second (atomically: write, then rename), and
reads the others' when asked for ``/metrics`` or ``/hc``. Files older than a few seconds
belong to workers that died and are ignored until their replacement writes again. The
node's source reader (``plasma.reader``, in the supervisor) writes one too, as ``reader``.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import orjson

__all__ = ["Peers"]

_STALE_AFTER = 5.0


class Peers:
    """This worker's view of its siblings' latest metrics snapshots."""

    def __init__(self, directory: str, worker_id: int | str) -> None:
        self.directory = Path(directory)
        self.worker_id = worker_id
        self._own = self.directory / f"worker-{worker_id}.json"

    def write(self, snapshot: dict[str, Any]) -> None:
        """Publish this worker's snapshot; never raises (metrics must not stop the server)."""
        tmp = self._own.with_suffix(f".{os.getpid()}.tmp")
        try:
            tmp.write_bytes(orjson.dumps(snapshot, default=str))
            os.replace(tmp, self._own)
        except OSError:
            pass

    def others(self) -> list[dict[str, Any]]:
        """The fresh snapshots of every other worker."""
        out: list[dict[str, Any]] = []
        now = time.time()
        try:
            paths = list(self.directory.glob("worker-*.json"))
        except OSError:
            return out
        for path in paths:
            if path == self._own:
                continue
            try:
                if now - path.stat().st_mtime > _STALE_AFTER:
                    continue
                out.append(orjson.loads(path.read_bytes()))
            except (OSError, orjson.JSONDecodeError):
                continue
        return out
