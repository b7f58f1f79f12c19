"""What verifies a token's signature: an HMAC secret, a PEM public key, or a JWKS file.

Each key carries the algorithms it may verify, derived from what the key *is*: an HMAC
secret verifies only ``HS*`` (and only those its length is fit for), an RSA key ``RS*``/``PS*``,
an EC key the one ``ES*`` of its curve, an Ed25519/Ed448 key ``EdDSA``. A token whose header
names any other algorithm is refused before any signature check, so a public key can never be
used as an HMAC secret (algorithm confusion), and ``none`` is never accepted.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Protocol

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa

from plasma.auth.errors import Unauthenticated
from plasma.errors import ConfigError

__all__ = [
    "ALGORITHMS",
    "JwksFile",
    "KeySource",
    "StaticKey",
    "VerificationKey",
    "load_keys",
    "parse_algorithms",
]

log = logging.getLogger("plasma.auth")

SECRET = "PLASMA_AUTH_JWT_SECRET"
PUBLIC_KEY_FILE = "PLASMA_AUTH_JWT_PUBLIC_KEY_FILE"
JWKS_FILE = "PLASMA_AUTH_JWT_JWKS_FILE"
ALGORITHMS_SETTING = "PLASMA_AUTH_JWT_ALGORITHMS"

MIN_SECRET_BYTES = 32
MIN_RSA_BITS = 2048

# An HMAC secret must be at least as long as the hash (RFC 7518, section 3.2).
_HMAC = {"HS256": 32, "HS384": 48, "HS512": 64}
_RSA = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512")
_EC = {"secp256r1": "ES256", "secp384r1": "ES384", "secp521r1": "ES512", "secp256k1": "ES256K"}
ALGORITHMS = (*_HMAC, *_RSA, *_EC.values(), "EdDSA")
"""Every algorithm plasma can verify; ``none`` is not one of them."""


@dataclass(frozen=True, slots=True)
class VerificationKey:
    """One key and the algorithms it may verify; ``kind`` names it in messages."""

    key: Any
    algorithms: frozenset[str]
    kind: str


class KeySource(Protocol):
    """Where the verifier finds a token's key."""

    generation: int
    """Changes whenever the keys change: verified tokens cached before then are dropped."""

    def refresh(self) -> None:
        """Pick up changed keys (a rewritten JWKS file); cheap when nothing changed."""

    def find(self, kid: str | None) -> VerificationKey:
        """The key for a token's ``kid``; raise ``Unauthenticated`` when there is none."""


def parse_algorithms(text: str) -> frozenset[str] | None:
    """``"RS256, ES256"`` -> those names; empty text -> ``None`` (no narrowing)."""
    names = [part.strip() for part in text.split(",") if part.strip()]
    if not names:
        return None
    by_lower = {a.lower(): a for a in ALGORITHMS}
    out = set()
    for name in names:
        if name.lower() not in by_lower:
            raise ConfigError(
                ALGORITHMS_SETTING, text, "a comma-separated list of " + ", ".join(ALGORITHMS)
            )
        out.add(by_lower[name.lower()])
    return frozenset(out)


def _narrow(
    possible: Iterable[str], narrowed: frozenset[str] | None, kind: str, setting: str
) -> frozenset[str]:
    possible = frozenset(possible)
    allowed = possible if narrowed is None else possible & narrowed
    if not allowed:
        raise ConfigError(
            ALGORITHMS_SETTING,
            ",".join(sorted(narrowed or ())),
            f"an algorithm the {kind} in {setting} can verify: " + ", ".join(sorted(possible)),
        )
    return allowed


def _public_key_algorithms(key: Any) -> tuple[str, tuple[str, ...]]:
    """What a public key is, and every algorithm that key type can verify."""
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < MIN_RSA_BITS:
            raise ValueError(f"an RSA key of at least {MIN_RSA_BITS} bits")
        return "RSA public key", _RSA
    if isinstance(key, ec.EllipticCurvePublicKey):
        alg = _EC.get(key.curve.name)
        if alg is None:
            raise ValueError("an EC key on P-256, P-384, P-521 or secp256k1")
        return f"EC public key ({key.curve.name})", (alg,)
    if isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
        return "Ed25519/Ed448 public key", ("EdDSA",)
    raise ValueError("an RSA, EC or Ed25519 public key")


class StaticKey:
    """One key for every token (``kid`` is not consulted): a secret or a PEM file."""

    generation = 0

    def __init__(self, key: VerificationKey) -> None:
        self.key = key

    def refresh(self) -> None:
        pass

    def find(self, kid: str | None) -> VerificationKey:
        return self.key

    @classmethod
    def secret(cls, secret: str, narrowed: frozenset[str] | None) -> StaticKey:
        raw = secret.encode()
        if len(raw) < MIN_SECRET_BYTES:
            raise ConfigError(
                SECRET,
                f"<hidden, {len(raw)} bytes>",
                f"a secret of at least {MIN_SECRET_BYTES} bytes",
            )
        fit = [alg for alg, need in _HMAC.items() if len(raw) >= need]
        allowed = _narrow(fit, narrowed, f"{len(raw)}-byte secret", SECRET)
        return cls(VerificationKey(raw, allowed, "HMAC secret"))

    @classmethod
    def pem_file(cls, path: str, narrowed: frozenset[str] | None) -> StaticKey:
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError as exc:
            raise ConfigError(PUBLIC_KEY_FILE, path, f"a readable file ({exc.strerror})") from None
        if b"PRIVATE KEY" in data:
            raise ConfigError(PUBLIC_KEY_FILE, path, "a public key, not a private key")
        try:
            key = serialization.load_pem_public_key(data)
            kind, possible = _public_key_algorithms(key)
        except ValueError as exc:
            expected = str(exc) if str(exc).startswith("an ") else "a PEM public key"
            raise ConfigError(PUBLIC_KEY_FILE, path, expected) from None
        except Exception:  # cryptography's unsupported-key errors are not all ValueError
            raise ConfigError(PUBLIC_KEY_FILE, path, "a PEM public key") from None
        return cls(VerificationKey(key, _narrow(possible, narrowed, kind, PUBLIC_KEY_FILE), kind))


def _read_jwks(path: str, narrowed: frozenset[str] | None) -> dict[str | None, VerificationKey]:
    """Parse a JWKS document into keys by ``kid``; raise ``ValueError`` saying what is wrong."""
    with open(path, "rb") as f:
        document = json.loads(f.read())
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise ValueError('a JWKS document: {"keys": [...]}')
    keys: dict[str | None, VerificationKey] = {}
    for i, entry in enumerate(document["keys"]):
        if not isinstance(entry, dict):
            raise ValueError(f"keys[{i}] to be an object")
        if entry.get("use", "sig") != "sig":
            continue
        if entry.get("kty") == "oct":
            raise ValueError(f"keys[{i}] to be a public key: an HMAC secret goes in {SECRET}")
        if "d" in entry:
            raise ValueError(f"keys[{i}] to be a public key: it holds private key material")
        try:
            key = jwt.PyJWK(entry).key
        except (jwt.PyJWTError, ValueError, TypeError, KeyError):
            raise ValueError(f"keys[{i}] to be a valid RSA, EC or OKP public key") from None
        try:
            kind, possible = _public_key_algorithms(key)
        except ValueError as exc:
            raise ValueError(f"keys[{i}] to be {exc}") from None
        if "alg" in entry:
            possible = tuple(a for a in possible if a == entry["alg"])
        allowed = frozenset(possible) if narrowed is None else frozenset(possible) & narrowed
        if not allowed:
            continue  # a key for algorithms this server does not accept verifies nothing
        kid = entry.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise ValueError(f"keys[{i}].kid to be a string")
        if kid in keys:
            raise ValueError(f"unique kids ({kid!r} appears twice)")
        keys[kid] = VerificationKey(key, allowed, kind)
    if not keys:
        raise ValueError("at least one public signing key this server's algorithms can verify")
    return keys


def _stamp(path: str) -> tuple[int, int, int]:
    st = os.stat(path)
    return st.st_mtime_ns, st.st_size, st.st_ino


class JwksFile:
    """Keys from a JWKS file, chosen by ``kid``; re-read whenever the file changes.

    Rotation is a rewrite (or an atomic rename) of the file: the next token checks the file's
    mtime, size and inode (one ``stat``) and picks the new keys up. A rewrite that does not
    parse keeps the keys in force and logs a warning: a half-written file never locks
    everyone out.
    """

    def __init__(self, path: str, narrowed: frozenset[str] | None) -> None:
        self.path = path
        self.generation = 0
        self._narrowed = narrowed
        try:
            self._stamp = _stamp(path)
            self._keys = _read_jwks(path, narrowed)
        except OSError as exc:
            raise ConfigError(JWKS_FILE, path, f"a readable file ({exc.strerror})") from None
        except ValueError as exc:  # json.JSONDecodeError is a ValueError
            expected = str(exc) if not isinstance(exc, json.JSONDecodeError) else "a JSON document"
            raise ConfigError(JWKS_FILE, path, expected) from None

    def refresh(self) -> None:
        try:
            stamp = _stamp(self.path)
        except OSError:
            return  # mid-rename, or removed: keep the keys in force
        if stamp == self._stamp:
            return
        self._stamp = stamp
        try:
            self._keys = _read_jwks(self.path, self._narrowed)
        except (OSError, ValueError) as exc:
            log.warning(
                "the JWKS file changed but cannot be used; keeping the previous keys",
                extra={"path": self.path, "error": str(exc)[:200]},
            )
            return
        self.generation += 1
        log.info("reloaded the JWKS file", extra={"path": self.path, "keys": len(self._keys)})

    def find(self, kid: str | None) -> VerificationKey:
        key = self._keys.get(kid)
        if key is None and kid is None and len(self._keys) == 1:
            key = next(iter(self._keys.values()))
        if key is None:
            raise Unauthenticated("unknown_key", "no key matches the token's kid")
        return key


def load_keys(
    *, secret: str = "", public_key_file: str = "", jwks_file: str = "", algorithms: str = ""
) -> KeySource | None:
    """The configured key source, or ``None`` when no key is set (access control off)."""
    given = [
        name
        for name, value in (
            (SECRET, secret),
            (PUBLIC_KEY_FILE, public_key_file),
            (JWKS_FILE, jwks_file),
        )
        if value
    ]
    narrowed = parse_algorithms(algorithms)
    if len(given) > 1:
        value = public_key_file if given[1] == PUBLIC_KEY_FILE else jwks_file
        raise ConfigError(
            given[1], value, f"no second key setting ({given[0]} is set; set only one)"
        )
    if not given:
        if narrowed is not None:
            raise ConfigError(
                ALGORITHMS_SETTING, algorithms, f"to be unset unless a key ({SECRET}, ...) is set"
            )
        return None
    if secret:
        return StaticKey.secret(secret, narrowed)
    if public_key_file:
        return StaticKey.pem_file(public_key_file, narrowed)
    return JwksFile(jwks_file, narrowed)
