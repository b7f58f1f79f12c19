"""Key material shared by the access-control tests (generated once: RSA keys are slow to make)."""

from __future__ import annotations

import pytest

from tests.auth.keyring import Keyring


@pytest.fixture(scope="session")
def keyring() -> Keyring:
    return Keyring()
