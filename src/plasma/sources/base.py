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

    async def publish_many(self, raws: list[bytes], channel: str | None = None) -> list[str | None]:
        """Publish valid events through the broker, all or none (the publish API, ``/debug``).

        ``channel`` is one of the configured channels (default: the first). Returns each
        event's id where it is known now (a stream entry id), else ``None``; raises
        ``SourceError`` when the broker is unreachable, having published nothing.
        """

    async def aclose(self) -> None:
        """Release connections; idempotent."""
