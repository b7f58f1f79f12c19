"""The memory budget of queued client bytes: ``PLASMA_MAX_BUFFERED_BYTES`` over all clients.

Each client is bounded on its own by ``PLASMA_CLIENT_BUFFER``; this bounds their sum. The sum is
kept at flush time, never per delivery: after a flush writes to a client, the transport reports
what that client still holds (its socket's write buffer, plus gRPC messages waiting for a
flow-control window) if it holds anything or held something before. A client that drains
without a new flush keeps its last count, so the sum can only be too high; past the limit it is
first recounted from every live client (``watch``), and only then are the clients with the
largest backlog (the slowest) cut until the sum is under the limit again. Per flush that is two
integer operations; the recount walks every live client, only when the sum is over.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Protocol

from plasma.metrics import Metrics

__all__ = ["Buffered", "ClientBuffers"]

log = logging.getLogger("plasma.buffers")


class Buffered(Protocol):
    """A client (an SSE stream, a gRPC connection) as the budget sees it."""

    counted: int
    """Bytes last reported for it; written only by ``ClientBuffers``."""

    def buffered_bytes(self) -> int:
        """What it holds right now, queued for the client."""

    def cut(self, reason: str) -> None:
        """End it now, dropping what it holds; it reports its end as ``reason``."""


class ClientBuffers:
    """The sum of bytes queued for every client, and who to cut when it passes ``limit``."""

    def __init__(self, limit: int, metrics: Metrics) -> None:
        self.limit = limit
        self.total = 0
        self._groups: list[Callable[[], Iterable[Buffered]]] = []
        metrics.gauge("client_buffered_bytes", lambda: self.total)

    def watch(self, clients: Callable[[], Iterable[Buffered]]) -> None:
        """Recount and cut among ``clients()`` (a transport's live clients) when over."""
        self._groups.append(clients)

    def update(self, client: Buffered, size: int) -> None:
        """``client`` holds ``size`` bytes now (called at flush when either count is not 0)."""
        self.total += size - client.counted
        client.counted = size
        if self.total > self.limit:
            self.shed()

    def release(self, client: Buffered) -> None:
        """``client`` is gone: it holds nothing any more. Idempotent."""
        self.total -= client.counted
        client.counted = 0

    def shed(self) -> None:
        """Recount every live client; if still over the limit, cut the largest backlogs."""
        holders = []
        for group in self._groups:
            for client in list(group()):
                size = client.buffered_bytes()
                self.total += size - client.counted
                client.counted = size
                if size:
                    holders.append(client)
        if self.total <= self.limit:
            return
        before = self.total
        cut = 0
        for client in sorted(holders, key=lambda c: c.counted, reverse=True):
            if self.total <= self.limit:
                break
            self.release(client)
            client.cut("memory")
            cut += 1
        log.warning(
            "queued client bytes passed PLASMA_MAX_BUFFERED_BYTES; cut the slowest clients",
            extra={"limit": self.limit, "queued": before, "cut": cut, "left": self.total},
        )
