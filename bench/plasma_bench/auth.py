"""``--auth HS256|ES256``: plasma with access control on, every subscriber presenting a token.

The server gets a secret (``PLASMA_AUTH_JWT_SECRET``) or an EC P-256 public key file
(``PLASMA_AUTH_JWT_PUBLIC_KEY_FILE``); each client process mints one token per connection
(a distinct ``sub`` each, so the server's verified-token cache never helps: the worst case,
every connection a different user) and sends it as ``Authorization: Bearer``, or as the
``authorization`` metadata of a gRPC call.
"""

from __future__ import annotations

import secrets
import time
from pathlib import Path
from typing import Any

__all__ = ["AUTH_ALGORITHMS", "TokenMinter", "server_auth"]

AUTH_ALGORITHMS = ("HS256", "ES256")


def server_auth(alg: str, out: Path) -> tuple[dict[str, str], dict[str, str]]:
    """(the server's environment, what the clients need to mint tokens) for ``alg``."""
    if alg == "HS256":
        secret = secrets.token_urlsafe(48)
        return {"PLASMA_AUTH_JWT_SECRET": secret}, {"alg": alg, "key": secret}
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    private = ec.generate_private_key(ec.SECP256R1())
    out.mkdir(parents=True, exist_ok=True)
    public = out / "bench-es256.pem"
    public.write_bytes(
        private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    pem = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    return {"PLASMA_AUTH_JWT_PUBLIC_KEY_FILE": str(public)}, {"alg": alg, "key": pem}


class TokenMinter:
    """Mints one token per connection in a client process (the key is parsed once)."""

    def __init__(self, auth: dict[str, str], types: list[str]) -> None:
        import jwt

        self._jwt = jwt
        self.alg = auth["alg"]
        self.key: Any = auth["key"]
        if self.alg != "HS256":
            from cryptography.hazmat.primitives import serialization

            self.key = serialization.load_pem_private_key(auth["key"].encode(), None)
        self.types = types
        self.count = 0

    def mint(self) -> str:
        self.count += 1
        claims = {
            "sub": f"bench-{secrets.token_hex(4)}-{self.count}",
            "exp": int(time.time()) + 3600,
            "plasma": {"subscribe": self.types},
        }
        return str(self._jwt.encode(claims, self.key, algorithm=self.alg))
