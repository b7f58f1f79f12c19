"""Key material and token minting for the access-control tests: real keys, real PyJWT."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

__all__ = ["SECRET", "KeyPair", "Keyring", "mint", "write_jwks"]

SECRET = "s" * 16 + "-a-32-byte-secret"  # 33 bytes: HS256 only


@dataclass(frozen=True)
class KeyPair:
    """A private key to sign with, its public PEM, and the JWS algorithm it signs."""

    private: Any
    alg: str

    @property
    def public_pem(self) -> bytes:
        return self.private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    @property
    def private_pem(self) -> bytes:
        return self.private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    def jwk(self, kid: str) -> dict[str, Any]:
        algorithm = jwt.get_algorithm_by_name(self.alg)
        jwk: dict[str, Any] = json.loads(algorithm.to_jwk(self.private.public_key()))
        jwk.update(kid=kid, use="sig")
        return jwk

    def mint(self, claims: dict[str, Any] | None = None, **headers: Any) -> str:
        return mint(self.private, self.alg, claims, **headers)


class Keyring:
    """One key pair of each kind the issue names: RS256, ES256, EdDSA (plus a second ES256)."""

    def __init__(self) -> None:
        self.rsa = KeyPair(rsa.generate_private_key(public_exponent=65537, key_size=2048), "RS256")
        self.ec = KeyPair(ec.generate_private_key(ec.SECP256R1()), "ES256")
        self.ec2 = KeyPair(ec.generate_private_key(ec.SECP256R1()), "ES256")
        self.ed = KeyPair(ed25519.Ed25519PrivateKey.generate(), "EdDSA")

    def pem_file(self, tmp: Path, pair: KeyPair, name: str = "key.pem") -> str:
        path = tmp / name
        path.write_bytes(pair.public_pem)
        return str(path)


def mint(key: Any, alg: str, claims: dict[str, Any] | None = None, **headers: Any) -> str:
    """A token with ``claims`` (default: may read ``user:42``, valid for an hour)."""
    if claims is None:
        claims = {"sub": "42", "plasma": {"subscribe": ["user:42"]}}
    claims = {"exp": int(time.time()) + 3600, **claims}
    claims = {k: v for k, v in claims.items() if v is not None}
    return jwt.encode(claims, key, algorithm=alg, headers=headers or None)


def write_jwks(path: Path, keys: dict[str, KeyPair]) -> str:
    """Write a JWKS document with each pair's public key under its kid."""
    path.write_text(json.dumps({"keys": [pair.jwk(kid) for kid, pair in keys.items()]}))
    return str(path)
