"""The access-control settings: off by default, every mistake named, no secret ever shown."""

from __future__ import annotations

from pathlib import Path

import pytest

from plasma.config import Config, settings_help
from plasma.errors import ConfigError
from tests.auth.keyring import SECRET, Keyring, write_jwks


def error(**env: str) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        Config.from_env(env)
    return info.value


def test_off_by_default() -> None:
    assert not Config.from_env({}).auth.enabled
    assert Config.from_env({}).auth.cookie == "plasmaAuthorization"
    assert Config.from_env({}).auth.jwt_leeway == 5.0


def test_each_key_setting_turns_it_on(tmp_path: Path, keyring: Keyring) -> None:
    pem = keyring.pem_file(tmp_path, keyring.ed)
    jwks = write_jwks(tmp_path / "jwks.json", {"a": keyring.ec})
    for env in (
        {"PLASMA_AUTH_JWT_SECRET": SECRET},
        {"PLASMA_AUTH_JWT_PUBLIC_KEY_FILE": pem},
        {"PLASMA_AUTH_JWT_JWKS_FILE": jwks},
    ):
        assert Config.from_env(env).auth.enabled


def test_secrets_never_appear_in_repr_or_errors() -> None:
    config = Config.from_env(
        {
            "PLASMA_AUTH_JWT_SECRET": SECRET,
            "PLASMA_METRICS_TOKEN": "metrics-token-0123456789",
            "PLASMA_DEBUG_TOKEN": "debug-token-0123456789",
        }
    )
    text = repr(config)
    for secret in (SECRET, "metrics-token-0123456789", "debug-token-0123456789"):
        assert secret not in text
    assert "PLASMA_AUTH_JWT_SECRET" in settings_help()
    short = error(PLASMA_AUTH_JWT_SECRET="tiny-secret")
    assert short.name == "PLASMA_AUTH_JWT_SECRET" and "tiny-secret" not in str(short)
    token = error(PLASMA_METRICS_TOKEN="tiny-token")
    assert token.name == "PLASMA_METRICS_TOKEN" and "tiny-token" not in str(token)
    assert error(PLASMA_DEBUG_TOKEN="short").name == "PLASMA_DEBUG_TOKEN"


def test_start_up_errors_name_the_variable(tmp_path: Path, keyring: Keyring) -> None:
    pem = keyring.pem_file(tmp_path, keyring.rsa)
    missing = str(tmp_path / "missing.pem")
    cases = {
        "PLASMA_AUTH_JWT_PUBLIC_KEY_FILE": {"PLASMA_AUTH_JWT_PUBLIC_KEY_FILE": missing},
        "PLASMA_AUTH_JWT_JWKS_FILE": {"PLASMA_AUTH_JWT_JWKS_FILE": pem},  # PEM is not JWKS
        "PLASMA_AUTH_JWT_ALGORITHMS": {
            "PLASMA_AUTH_JWT_PUBLIC_KEY_FILE": pem,
            "PLASMA_AUTH_JWT_ALGORITHMS": "HS256",
        },
        "PLASMA_AUTH_JWT_LEEWAY": {"PLASMA_AUTH_JWT_SECRET": SECRET, "PLASMA_AUTH_JWT_LEEWAY": "x"},
        "PLASMA_AUTH_COOKIE": {"PLASMA_AUTH_COOKIE": "bad cookie;"},
    }
    for name, env in cases.items():
        assert error(**env).name == name
    two = error(PLASMA_AUTH_JWT_SECRET=SECRET, PLASMA_AUTH_JWT_PUBLIC_KEY_FILE=pem)
    assert two.name == "PLASMA_AUTH_JWT_PUBLIC_KEY_FILE" and SECRET not in str(two)


@pytest.mark.parametrize(
    "name",
    [
        "PLASMA_AUTH_JWT_ALGORITHMS",
        "PLASMA_AUTH_JWT_AUDIENCE",
        "PLASMA_AUTH_JWT_ISSUER",
        "PLASMA_AUTH_PUBLIC_TYPES",
    ],
)
def test_an_auth_setting_without_a_key_is_refused(name: str) -> None:
    """Set alone, it would suggest access control is on while every type stays open."""
    assert error(**{name: "RS256"}).name == name
