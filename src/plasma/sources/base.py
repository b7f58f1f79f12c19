"""The seam between brokers and the hub."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from plasma.hub import Hub

__all__ = ["Source"]


class Source(Protocol):
    """Feeds events from a broker into the hub."""

    name: str

    async def run(self, hub: Hub) -> None:
        """Feed the hub until cancelled; reconnect on its own; raise ``SourceGaveUp`` to stop."""

    async def healthy(self) -> bool:
        """Whether the broker answers right now; returns within about a second, never raises."""

    async def publish(self, raw: bytes) -> None:
        """Publish one raw event through the broker (the /debug page); may raise ``SourceError``."""

    async def aclose(self) -> None:
        """Release connections; idempotent."""
