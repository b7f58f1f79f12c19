"""Loading keys: each kind narrows its algorithms; every bad setting stops start-up by name."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from plasma.auth.errors import Unauthenticated
from plasma.auth.keys import JwksFile, load_keys
from plasma.errors import ConfigError
from tests.auth.keyring import SECRET, Keyring, write_jwks


def _error(**settings: str) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_keys(**settings)
    return info.value


def test_no_key_setting_means_access_control_is_off() -> None:
    assert load_keys() is None


def test_a_secret_verifies_only_the_hmac_algorithms_its_length_fits() -> None:
    assert load_keys(secret=SECRET).find(None).algorithms == {"HS256"}  # type: ignore[union-attr]
    long = load_keys(secret="x" * 64)
    assert long is not None and long.find("any-kid").algorithms == {"HS256", "HS384", "HS512"}


def test_a_short_secret_stops_start_up_without_showing_it() -> None:
    error = _error(secret="short-secret-31-bytes-long-abcd")
    assert error.name == "PLASMA_AUTH_JWT_SECRET"
    assert "short-secret" not in str(error)
    assert "32 bytes" in str(error)


def test_two_key_settings_stop_start_up(tmp_path: Path, keyring: Keyring) -> None:
    pem = keyring.pem_file(tmp_path, keyring.ec)
    error = _error(secret=SECRET, public_key_file=pem)
    assert error.name == "PLASMA_AUTH_JWT_PUBLIC_KEY_FILE"
    assert "PLASMA_AUTH_JWT_SECRET" in str(error)
    assert SECRET not in str(error)
    assert _error(public_key_file=pem, jwks_file=pem).name == "PLASMA_AUTH_JWT_JWKS_FILE"


def test_an_unreadable_key_file_stops_start_up(tmp_path: Path) -> None:
    missing = str(tmp_path / "nope.pem")
    assert _error(public_key_file=missing).name == "PLASMA_AUTH_JWT_PUBLIC_KEY_FILE"
    assert _error(jwks_file=missing).name == "PLASMA_AUTH_JWT_JWKS_FILE"
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a key")
    assert _error(public_key_file=str(garbage)).name == "PLASMA_AUTH_JWT_PUBLIC_KEY_FILE"
    assert _error(jwks_file=str(garbage)).name == "PLASMA_AUTH_JWT_JWKS_FILE"


def test_a_private_key_is_refused_where_a_public_key_belongs(
    tmp_path: Path, keyring: Keyring
) -> None:
    path = tmp_path / "private.pem"
    path.write_bytes(keyring.ec.private_pem)
    error = _error(public_key_file=str(path))
    assert "public key" in error.expected
    jwks = tmp_path / "jwks.json"
    jwk = keyring.ec.jwk("a")
    jwk["d"] = "AAAA"
    jwks.write_text(json.dumps({"keys": [jwk]}))
    assert "private" in _error(jwks_file=str(jwks)).expected


def test_a_weak_rsa_key_is_refused(tmp_path: Path) -> None:
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024).public_key()
    path = tmp_path / "weak.pem"
    path.write_bytes(
        weak.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    assert "2048" in _error(public_key_file=str(path)).expected


@pytest.mark.parametrize(
    ("pair", "algorithms"),
    [
        ("rsa", {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"}),
        ("ec", {"ES256"}),
        ("ed", {"EdDSA"}),
    ],
)
def test_a_public_key_verifies_only_its_own_algorithms(
    tmp_path: Path, keyring: Keyring, pair: str, algorithms: set[str]
) -> None:
    keys = load_keys(public_key_file=keyring.pem_file(tmp_path, getattr(keyring, pair)))
    assert keys is not None and keys.find(None).algorithms == algorithms


def test_an_ec_key_verifies_the_algorithm_of_its_curve(tmp_path: Path) -> None:
    key = ec.generate_private_key(ec.SECP384R1()).public_key()
    path = tmp_path / "p384.pem"
    path.write_bytes(
        key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    keys = load_keys(public_key_file=str(path))
    assert keys is not None and keys.find(None).algorithms == {"ES384"}


def test_the_algorithm_list_narrows_and_is_checked(tmp_path: Path, keyring: Keyring) -> None:
    pem = keyring.pem_file(tmp_path, keyring.rsa)
    keys = load_keys(public_key_file=pem, algorithms="ps256, RS512")
    assert keys is not None and keys.find(None).algorithms == {"PS256", "RS512"}
    for bad in ("none", "HS999", "RS256,none"):
        error = _error(public_key_file=pem, algorithms=bad)
        assert error.name == "PLASMA_AUTH_JWT_ALGORITHMS"
    # An HMAC algorithm for a public key (or the other way round) verifies nothing: refused.
    assert _error(public_key_file=pem, algorithms="HS256").name == "PLASMA_AUTH_JWT_ALGORITHMS"
    assert _error(secret=SECRET, algorithms="RS256").name == "PLASMA_AUTH_JWT_ALGORITHMS"
    assert _error(secret=SECRET, algorithms="HS512").name == "PLASMA_AUTH_JWT_ALGORITHMS"
    assert _error(algorithms="RS256").name == "PLASMA_AUTH_JWT_ALGORITHMS"  # and no key


def test_a_jwks_file_is_checked_at_start(tmp_path: Path, keyring: Keyring) -> None:
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps({"keys": [{"kty": "oct", "k": "c2VjcmV0", "kid": "h"}]}))
    assert "PLASMA_AUTH_JWT_SECRET" in _error(jwks_file=str(path)).expected
    path.write_text(json.dumps({"keys": [keyring.ec.jwk("a"), keyring.ed.jwk("a")]}))
    assert "unique" in _error(jwks_file=str(path)).expected
    path.write_text("{")
    assert _error(jwks_file=str(path)).expected == "a JSON document"
    path.write_text(json.dumps({"keys": []}))
    assert _error(jwks_file=str(path)).name == "PLASMA_AUTH_JWT_JWKS_FILE"


def test_a_jwks_key_is_found_by_kid(tmp_path: Path, keyring: Keyring) -> None:
    keys = JwksFile(write_jwks(tmp_path / "jwks.json", {"a": keyring.ec, "b": keyring.ed}), None)
    assert keys.find("a").algorithms == {"ES256"}
    assert keys.find("b").algorithms == {"EdDSA"}
    with pytest.raises(Unauthenticated) as info:
        keys.find("c")
    assert info.value.reason == "unknown_key"
    with pytest.raises(Unauthenticated):
        keys.find(None)  # two keys: a token without kid names none of them


def test_a_rewritten_jwks_file_is_picked_up_and_a_broken_one_ignored(
    tmp_path: Path, keyring: Keyring
) -> None:
    path = tmp_path / "jwks.json"
    keys = JwksFile(write_jwks(path, {"a": keyring.ec}), None)
    write_jwks(path, {"b": keyring.ed, "c": keyring.rsa})
    keys.refresh()
    assert keys.generation == 1
    assert keys.find("b").algorithms == {"EdDSA"}
    with pytest.raises(Unauthenticated):
        keys.find("a")
    path.write_text('{"keys": [')  # a writer caught mid-write
    keys.refresh()
    assert keys.generation == 1
    assert keys.find("c").kind == "RSA public key"
