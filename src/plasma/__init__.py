"""plasma: an event push server. Redis pub/sub events out to SSE and gRPC clients on one port."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

__all__ = ["__version__"]

try:
    __version__ = version("plasma")
except PackageNotFoundError:  # running from a source tree
    __version__ = "0.0.0"
