"""plasma: an event push server. Redis pub/sub events out to SSE and gRPC clients on one port."""

from __future__ import annotations

import tomllib
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

__all__ = ["DISTRIBUTION", "__version__"]

DISTRIBUTION = "plasma-push"
"""The name plasma is installed under (``pip install plasma-push``); it imports as ``plasma``."""


def _read_version() -> str:
    """The installed distribution's version; pyproject.toml's in a checkout never installed.

    pyproject.toml's ``version`` is the one place the version is written: an install copies it
    into the package metadata, which is read back here.
    """
    try:
        return version(DISTRIBUTION)
    except PackageNotFoundError:
        pyproject = Path(__file__).resolve().parents[2] / "pyproject.toml"
        try:
            with pyproject.open("rb") as file:
                return str(tomllib.load(file)["project"]["version"])
        except (OSError, KeyError, tomllib.TOMLDecodeError):
            return "0+unknown"


__version__ = _read_version()
