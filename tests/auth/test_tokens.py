"""Verifying tokens: every algorithm family, rotation, and every hostile token the issue lists."""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path
from typing import Any

import jwt
import pytest
from hypothesis import given
from hypothesis import strategies as st

from plasma.auth.errors import Unauthenticated
from plasma.auth.keys import load_keys
from plasma.auth.policy import Identity
from plasma.auth.tokens import TokenVerifier
from tests.auth.keyring import SECRET, Keyring, mint, write_jwks


def verifier(**settings: Any) -> TokenVerifier:
    options = {k: settings.pop(k) for k in ("audience", "issuer", "leeway") if k in settings}
    keys = load_keys(**settings)
    assert keys is not None
    return TokenVerifier(keys, **options)


def refusal(v: TokenVerifier, token: str) -> Unauthenticated:
    with pytest.raises(Unauthenticated) as info:
        v.verify(token)
    if len(token) > 8:
        assert token[:40] not in str(info.value)  # never echoes the token
    return info.value


def verdict(v: TokenVerifier, token: str) -> Identity | Unauthenticated:
    """What ``verify`` made of ``token``; any other exception fails the test."""
    try:
        return v.verify(token)
    except Unauthenticated as exc:
        return exc


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def test_hs256(keyring: Keyring) -> None:
    identity = verifier(secret=SECRET).verify(mint(SECRET, "HS256"))
    assert identity.subject == "42"
    assert identity.grant.subscribe.allows("user:42:notifications")
    assert not identity.grant.publish


@pytest.mark.parametrize("pair", ["rsa", "ec", "ed"])
def test_public_key_algorithms(tmp_path: Path, keyring: Keyring, pair: str) -> None:
    key = getattr(keyring, pair)
    v = verifier(public_key_file=keyring.pem_file(tmp_path, key))
    claims = {"sub": "u", "plasma": {"subscribe": ["news"], "publish": ["news:x"]}}
    identity = v.verify(key.mint(claims))
    assert identity.grant.publish.allows("news:x:1")
    assert not identity.grant.publish.allows("news")


def test_ps256_with_an_rsa_key(tmp_path: Path, keyring: Keyring) -> None:
    v = verifier(public_key_file=keyring.pem_file(tmp_path, keyring.rsa))
    assert v.verify(mint(keyring.rsa.private, "PS256")).subject == "42"


def test_a_jwks_with_two_keys_rotated_mid_test(tmp_path: Path, keyring: Keyring) -> None:
    path = tmp_path / "jwks.json"
    v = verifier(jwks_file=write_jwks(path, {"old": keyring.ec, "new": keyring.ed}))
    old = keyring.ec.mint(kid="old")
    new = keyring.ed.mint(kid="new")
    newer = keyring.rsa.mint(kid="newer")
    assert v.verify(old).subject == v.verify(new).subject == "42"
    assert refusal(v, newer).reason == "unknown_key"
    # Rotate: "old" retires, "newer" arrives. No restart, no call to reload.
    write_jwks(path, {"new": keyring.ed, "newer": keyring.rsa})
    assert v.verify(newer).subject == "42"
    assert v.verify(new).subject == "42"
    assert refusal(v, old).reason == "unknown_key"  # verified (and cached) before: still refused


def test_a_kid_signed_by_another_key_is_refused(tmp_path: Path, keyring: Keyring) -> None:
    v = verifier(jwks_file=write_jwks(tmp_path / "jwks.json", {"a": keyring.ec}))
    assert refusal(v, keyring.ec2.mint(kid="a")).reason == "signature"
    assert refusal(v, keyring.ec.mint(kid="b")).reason == "unknown_key"


# --- hostile tokens -------------------------------------------------------------------------


def test_alg_none_is_never_accepted(tmp_path: Path, keyring: Keyring) -> None:
    claims = b64(json.dumps({"sub": "x", "plasma": {"subscribe": ["*"]}}).encode())
    for alg in ("none", "None", "NONE"):
        token = f"{b64(json.dumps({'alg': alg, 'typ': 'JWT'}).encode())}.{claims}."
        assert refusal(verifier(secret=SECRET), token).reason == "algorithm"
        v = verifier(public_key_file=keyring.pem_file(tmp_path, keyring.rsa))
        assert refusal(v, token).reason == "algorithm"


def test_algorithm_confusion_hs256_signed_with_the_public_key(
    tmp_path: Path, keyring: Keyring
) -> None:
    pem = keyring.rsa.public_pem
    header = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    payload = b64(json.dumps({"sub": "evil", "plasma": {"subscribe": ["*"]}}).encode())
    import hashlib
    import hmac

    signature = hmac.new(pem, f"{header}.{payload}".encode(), hashlib.sha256).digest()
    token = f"{header}.{payload}.{b64(signature)}"
    v = verifier(public_key_file=keyring.pem_file(tmp_path, keyring.rsa))
    assert refusal(v, token).reason == "algorithm"
    jwks = verifier(jwks_file=write_jwks(tmp_path / "jwks.json", {"k": keyring.rsa}))
    kid_token = f"{b64(json.dumps({'alg': 'HS256', 'kid': 'k'}).encode())}.{payload}."
    assert refusal(jwks, kid_token).reason == "algorithm"


def test_a_token_of_another_algorithm_family_is_refused(tmp_path: Path, keyring: Keyring) -> None:
    v = verifier(public_key_file=keyring.pem_file(tmp_path, keyring.ec))
    assert refusal(v, keyring.rsa.mint()).reason == "algorithm"
    assert refusal(verifier(secret=SECRET), keyring.ec.mint()).reason == "algorithm"


def test_a_token_signed_with_another_secret_is_refused() -> None:
    assert refusal(verifier(secret=SECRET), mint("o" * 40, "HS256")).reason == "signature"


def test_expired_and_not_yet_valid(keyring: Keyring) -> None:
    v = verifier(secret=SECRET, leeway=5)
    now = int(time.time())
    assert refusal(v, mint(SECRET, "HS256", {"exp": now - 60})).reason == "expired"
    assert refusal(v, mint(SECRET, "HS256", {"nbf": now + 60})).reason == "not_yet_valid"
    # Within the leeway: accepted, and valid until exp plus the leeway.
    identity = v.verify(mint(SECRET, "HS256", {"exp": now - 2}))
    assert identity.expires_at == now - 2 + 5
    assert v.verify(mint(SECRET, "HS256", {"nbf": now + 2})).subject is None
    strict = verifier(secret=SECRET, leeway=0)
    assert refusal(strict, mint(SECRET, "HS256", {"exp": now - 2})).reason == "expired"


def test_a_cached_token_is_refused_once_it_expires() -> None:
    v = verifier(secret=SECRET, leeway=0)
    exp = int(time.time()) + 1
    token = mint(SECRET, "HS256", {"exp": exp})
    assert v.verify(token).expires_at == exp
    while time.time() < exp + 0.01:
        time.sleep(0.05)
    assert refusal(v, token).reason == "expired"


def test_the_cache_is_bounded() -> None:
    keys = load_keys(secret=SECRET)
    assert keys is not None
    v = TokenVerifier(keys, cache_size=8)
    for i in range(50):
        v.verify(mint(SECRET, "HS256", {"sub": str(i)}))
    assert v.cached <= 8


def test_audience_and_issuer_must_match() -> None:
    v = verifier(secret=SECRET, audience="push", issuer="https://id.example")
    good = {"aud": "push", "iss": "https://id.example"}
    assert v.verify(mint(SECRET, "HS256", good)).subject is None
    assert v.verify(mint(SECRET, "HS256", {**good, "aud": ["other", "push"]})).subject is None
    assert refusal(v, mint(SECRET, "HS256", {**good, "aud": "other"})).reason == "audience"
    assert refusal(v, mint(SECRET, "HS256", {**good, "iss": "evil"})).reason == "issuer"
    assert refusal(v, mint(SECRET, "HS256", {"iss": "https://id.example"})).reason == "audience"
    assert refusal(v, mint(SECRET, "HS256", {"aud": "push"})).reason == "issuer"


@pytest.mark.parametrize(
    "make",
    [
        lambda t: t[: len(t) // 2],  # truncated
        lambda t: t[:-3],  # truncated signature
        lambda t: t + "." + t,
        lambda t: "x" * 100_000,  # 100 KB long
        lambda t: t.split(".")[0] + "." + "A" * 100_000 + "." + t.split(".")[2],
        lambda t: "",
        lambda t: "..",
        lambda t: "a.b.c",
        lambda t: "é.é.é",
        lambda t: t.replace(".", ". ", 1),
    ],
)
def test_malformed_tokens_are_refused_cleanly(make: Any) -> None:
    v = verifier(secret=SECRET)
    reason = refusal(v, make(mint(SECRET, "HS256"))).reason
    assert reason in ("malformed", "too_long", "signature")


def test_a_payload_that_is_not_json_is_refused() -> None:
    import hashlib
    import hmac

    header = b64(b'{"alg":"HS256","typ":"JWT"}')
    for payload in (b"not json", b"[1, 2]", b'"a string"', b"\xff\xfe"):
        signing_input = f"{header}.{b64(payload)}"
        sig = hmac.new(SECRET.encode(), signing_input.encode(), hashlib.sha256).digest()
        assert refusal(verifier(secret=SECRET), f"{signing_input}.{b64(sig)}").reason == "malformed"


@pytest.mark.parametrize(
    "claim",
    [
        "user:42",
        ["user:42"],
        {"subscribe": "user:42"},
        {"subscribe": [42]},
        {"publish": {"user": 1}},
        {"subscribe": [None]},
        7,
    ],
)
def test_a_plasma_claim_of_the_wrong_shape_is_refused(claim: Any) -> None:
    token = mint(SECRET, "HS256", {"plasma": claim})
    assert refusal(verifier(secret=SECRET), token).reason == "claims"


def test_a_token_without_the_plasma_claim_grants_nothing() -> None:
    identity = verifier(secret=SECRET).verify(mint(SECRET, "HS256", {"sub": "x"}))
    assert not identity.grant.subscribe and not identity.grant.publish


def test_odd_but_signed_claims_are_refused_not_raised() -> None:
    v = verifier(secret=SECRET)
    for claims in ({"exp": "soon"}, {"exp": 10**400}, {"nbf": []}, {"sub": 42}, {"iat": "x"}):
        try:
            token = mint(SECRET, "HS256", claims)  # type: ignore[arg-type]
        except (OverflowError, TypeError, ValueError):
            continue  # PyJWT will not even encode it
        assert isinstance(verdict(v, token), Identity | Unauthenticated)


def test_header_fields_of_the_wrong_type_are_refused() -> None:
    payload = b64(b'{"sub":"x"}')
    for header in ({"alg": 256}, {"alg": "HS256", "kid": 5}, {"alg": ["HS256"]}, {}):
        token = f"{b64(json.dumps(header).encode())}.{payload}.c2ln"
        assert refusal(verifier(secret=SECRET), token).reason in ("malformed", "algorithm")


# --- fuzz -----------------------------------------------------------------------------------


_HS = verifier(secret=SECRET)
_jwt_segment = st.one_of(
    st.binary(max_size=64).map(b64),
    st.dictionaries(
        st.sampled_from(["alg", "kid", "typ", "exp", "nbf", "plasma", "sub", "aud", "crit"]),
        st.one_of(
            st.none(),
            st.integers(),
            st.floats(),
            st.text(max_size=8),
            st.sampled_from(["HS256", "none"]),
        ),
    ).map(lambda d: b64(json.dumps(d).encode())),
    st.text(max_size=20),
)


@given(st.binary(max_size=2048))
def test_random_bytes_never_crash_the_parser(data: bytes) -> None:
    assert isinstance(verdict(_HS, data.decode("utf-8", "surrogateescape")), Unauthenticated)


@given(_jwt_segment, _jwt_segment, _jwt_segment)
def test_random_token_shaped_input_never_crashes_the_parser(h: str, p: str, s: str) -> None:
    assert isinstance(verdict(_HS, f"{h}.{p}.{s}"), Identity | Unauthenticated)


@given(
    st.dictionaries(
        st.text(max_size=6),
        st.recursive(
            st.none() | st.integers() | st.text(max_size=6),
            lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=4), c, max_size=3),
            max_leaves=8,
        ),
        max_size=6,
    )
)
def test_any_signed_payload_is_either_an_identity_or_a_refusal(payload: dict[str, Any]) -> None:
    try:
        token = jwt.encode(payload, SECRET, algorithm="HS256")
    except (TypeError, ValueError):
        return
    assert isinstance(verdict(_HS, token), Identity | Unauthenticated)
