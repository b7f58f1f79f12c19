"""Real brokers beyond one plain Redis: nats-server (with JetStream), Redis over TLS.

Each runs the real binary on a free loopback port, like ``tests.support.RedisServer``:
``NatsServer`` runs Debian's ``nats-server``; ``tls_redis`` starts ``redis-server`` with
``--tls-port`` and a certificate from ``trustme``.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import trustme

from tests.support import RedisServer, free_port, port_open, wait_for

__all__ = ["NatsServer", "TLSFiles", "tls_files"]


class NatsServer:
    """A real ``nats-server`` on a free loopback port; ``jetstream`` stores in a temp dir."""

    def __init__(
        self,
        port: int | None = None,
        *,
        jetstream: bool = False,
        user: str = "",
        password: str = "",
        store: str | None = None,
    ) -> None:
        binary = shutil.which("nats-server")
        if binary is None:
            raise RuntimeError(
                "nats-server is not installed: run ./scripts/test, which installs it "
                "(Debian package nats-server)"
            )
        self.binary = binary
        self.port = port or free_port()
        self.jetstream = jetstream
        self.user = user
        self.password = password
        self.store = store or tempfile.mkdtemp(prefix="plasma-nats-")
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> NatsServer:
        args = [self.binary, "-a", "127.0.0.1", "-p", str(self.port)]
        if self.jetstream:
            args += ["-js", "-sd", self.store]
        if self.user:
            args += ["--user", self.user, "--pass", self.password]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(lambda: port_open(self.port), 10, what=f"nats-server on {self.port}")
        return self

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def kill(self) -> None:
        self.stop(signal.SIGKILL)


class TLSFiles:
    """A test CA and a server certificate for 127.0.0.1, written as PEM files."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="plasma-tls-"))
        ca = trustme.CA()
        cert = ca.issue_cert("127.0.0.1", "localhost")
        self.ca = self.dir / "ca.pem"
        self.cert = self.dir / "cert.pem"
        self.key = self.dir / "key.pem"
        ca.cert_pem.write_to_path(str(self.ca))
        cert.cert_chain_pems[0].write_to_path(str(self.cert))
        cert.private_key_pem.write_to_path(str(self.key))


def tls_files() -> TLSFiles:
    return TLSFiles()


class TLSRedisServer(RedisServer):
    """``redis-server`` serving TLS only (``--port 0 --tls-port``), ACL users optional."""

    def __init__(self, files: TLSFiles, *, users: tuple[str, ...] = (), **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.files = files
        self.users = users
        """ACL rules, e.g. ``"plasma on >secret ~* &* +@all"``."""

    def start(self) -> TLSRedisServer:
        args = [
            self.binary,
            "--port",
            "0",
            "--tls-port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--tls-cert-file",
            str(self.files.cert),
            "--tls-key-file",
            str(self.files.key),
            "--tls-ca-cert-file",
            str(self.files.ca),
            "--tls-auth-clients",
            "no",
        ]
        if self.password:
            args += ["--requirepass", self.password]
        for rule in self.users:
            args += ["--user", *rule.split()]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(lambda: port_open(self.port), 10, what=f"redis-server (TLS) on {self.port}")
        return self

    def client(self, **kwargs: Any) -> Any:
        import redis

        kwargs.setdefault("password", self.password or None)
        return redis.Redis(
            host="127.0.0.1",
            port=self.port,
            ssl=True,
            ssl_ca_certs=str(self.files.ca),
            **kwargs,
        )
