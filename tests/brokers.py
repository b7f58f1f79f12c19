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

__all__ = [
    "NatsServer",
    "RedisClusterNodes",
    "SentinelSetup",
    "TLSFiles",
    "TLSRedisServer",
    "tls_files",
]


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


class RedisClusterNodes:
    """Six ``redis-server --cluster-enabled yes`` processes made one cluster with ``redis-cli``.

    Three masters and three replicas (``--cluster-replicas 1``): killing a master promotes its
    replica. ``seeds`` is the comma list plasma takes in ``PLASMA_SUBSCRIBER_REDIS_ADDR``.
    """

    def __init__(self, count: int = 6) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="plasma-cluster-"))
        self.ports = [free_port() for _ in range(count)]
        # The cluster bus port, named explicitly: port+10000 would overflow for high ports.
        self.bus_ports = {port: free_port() for port in self.ports}
        self.procs: dict[int, subprocess.Popen[bytes]] = {}

    @property
    def seeds(self) -> str:
        return ",".join(f"127.0.0.1:{port}" for port in self.ports)

    def start_node(self, port: int) -> None:
        node_dir = self.dir / str(port)
        node_dir.mkdir(exist_ok=True)
        args = [
            shutil.which("redis-server") or "redis-server",
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--cluster-enabled",
            "yes",
            "--cluster-port",
            str(self.bus_ports[port]),
            "--cluster-config-file",
            "nodes.conf",
            "--cluster-node-timeout",
            "1000",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(node_dir),
            "--logfile",
            str(node_dir / "redis.log"),
            # A replica syncs at once (not after 5 s): only a synced replica can be promoted.
            "--repl-diskless-sync-delay",
            "0",
        ]
        self.procs[port] = subprocess.Popen(
            args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        wait_for(lambda: port_open(port), 10, what=f"cluster node on {port}")

    def start(self) -> RedisClusterNodes:
        for port in self.ports:
            self.start_node(port)
        subprocess.run(
            [
                shutil.which("redis-cli") or "redis-cli",
                "--cluster",
                "create",
                *(f"127.0.0.1:{port}" for port in self.ports),
                "--cluster-replicas",
                "1",
                "--cluster-yes",
            ],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=60,
        )
        wait_for(self.ok, 30, interval=0.2, what="cluster_state:ok on every node")
        wait_for(self.replicas_synced, 30, interval=0.2, what="every replica in sync")
        return self

    def replicas_synced(self) -> bool:
        """Whether every replica's link to its master is up (so a failover can promote it)."""
        synced = 0
        for port in self.procs:
            with self.node(port) as client:
                info = client.info("replication")
            if info["role"] == "slave":
                if info.get("master_link_status") != "up":
                    return False
                synced += 1
        return synced == len(self.procs) // 2

    def node(self, port: int) -> Any:
        import redis

        return redis.Redis(host="127.0.0.1", port=port, socket_timeout=2)

    def ok(self) -> bool:
        """Whether every running node reports ``cluster_state:ok`` and the same epoch."""
        import redis

        try:
            for port, proc in self.procs.items():
                if proc.poll() is None:
                    with self.node(port) as client:
                        if client.cluster("info").get("cluster_state") != "ok":
                            return False
        except redis.RedisError:
            return False
        return True

    def client(self) -> Any:
        from redis.cluster import ClusterNode, RedisCluster

        return RedisCluster(startup_nodes=[ClusterNode("127.0.0.1", p) for p in self.ports])

    def master_of(self, key: str) -> int:
        """The port of the master that owns ``key``'s slot now."""
        with self.client() as cluster:
            return int(cluster.get_node_from_key(key).port)

    def kill(self, port: int) -> None:
        proc = self.procs.pop(port)
        proc.kill()
        proc.wait()

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.procs.clear()


class SentinelSetup:
    """A master, its replica and one sentinel watching them as ``mymaster`` (quorum 1)."""

    def __init__(self, name: str = "mymaster") -> None:
        self.name = name
        self.master = RedisServer()
        self.replica = RedisServer()
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="plasma-sentinel-"))
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def sentinels(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> SentinelSetup:
        self.master.start()
        self.replica.start()
        with self.replica.client() as client:
            client.replicaof("127.0.0.1", self.master.port)
        conf = self.dir / "sentinel.conf"
        conf.write_text(
            f"port {self.port}\nbind 127.0.0.1\ndir {self.dir}\n"
            f"sentinel monitor {self.name} 127.0.0.1 {self.master.port} 1\n"
            f"sentinel down-after-milliseconds {self.name} 1000\n"
            f"sentinel failover-timeout {self.name} 5000\n"
        )
        self.proc = subprocess.Popen(
            [self.master.binary, str(conf), "--sentinel"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for(lambda: port_open(self.port), 10, what="the sentinel")
        wait_for(lambda: self.replicas() == 1, 20, what="the sentinel to see the replica")
        return self

    def _sentinel(self) -> Any:
        import redis

        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=2)

    def master_port(self) -> int:
        with self._sentinel() as client:
            _, port = client.sentinel_get_master_addr_by_name(self.name)
        return int(port)

    def replicas(self) -> int:
        with self._sentinel() as client:
            return sum(1 for r in client.sentinel_slaves(self.name) if r.get("is_slave"))

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        self.proc = None
        self.master.stop()
        self.replica.stop()
