"""``--tls``: one self-signed certificate for every server under test, and the clients' context.

The certificate is an ECDSA P-256 key (the cheapest handshake OpenSSL offers a server) for
``localhost`` and ``127.0.0.1``, made with ``cryptography`` when it is importable, else with the
``openssl`` command. plasma loads it through ``PLASMA_TLS_CERT_FILE``/``PLASMA_TLS_KEY_FILE``,
nginx (Nchan) through ``ssl_certificate``; the subscribers trust exactly that certificate.
"""

from __future__ import annotations

import datetime
import shutil
import ssl
import subprocess
from dataclasses import dataclass
from pathlib import Path

__all__ = ["TLSFiles", "client_context", "make_certificate"]

SERVER_NAME = "localhost"


@dataclass(frozen=True)
class TLSFiles:
    """PEM files of the bench's certificate and key."""

    cert: Path
    key: Path


def make_certificate(directory: Path) -> TLSFiles:
    """Write ``cert.pem`` and ``key.pem`` (self-signed, one day) into ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    files = TLSFiles(directory / "cert.pem", directory / "key.pem")
    try:
        _with_cryptography(files)
    except ImportError:
        _with_openssl(files)
    files.key.chmod(0o600)
    return files


def _with_cryptography(files: TLSFiles) -> None:
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, SERVER_NAME)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName(SERVER_NAME), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    files.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    files.key.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )


def _with_openssl(files: TLSFiles) -> None:
    openssl = shutil.which("openssl")
    if openssl is None:
        raise RuntimeError("--tls needs the cryptography package or the openssl command")
    subprocess.run(
        [
            *(openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"),
            *("-nodes", "-days", "1", "-subj", f"/CN={SERVER_NAME}"),
            *("-addext", f"subjectAltName=DNS:{SERVER_NAME},IP:127.0.0.1"),
            *("-keyout", str(files.key), "-out", str(files.cert)),
        ],
        check=True,
        capture_output=True,
    )


def client_context(cert: str, alpn: list[str]) -> ssl.SSLContext:
    """A client context that trusts only the bench's certificate and offers ``alpn``."""
    context = ssl.create_default_context(cafile=cert)
    context.set_alpn_protocols(alpn)
    return context
