"""The processes under test: redis-server, plasma, Nchan (nginx); each on a free loopback port.

Every process started here is remembered by its ``Popen`` and stopped by its pid (SIGTERM,
then SIGKILL after a grace period); nothing is ever stopped by name.
"""

from __future__ import annotations

import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from plasma_bench.tls import TLSFiles

__all__ = [
    "NchanServer",
    "PlasmaServer",
    "RedisServer",
    "Target",
    "free_port",
    "wait_port",
]

NO_PUBSUB_CUT = ["--client-output-buffer-limit", "pubsub 0 0 0"]
"""Redis keeps whatever a pub/sub subscriber has not read yet (its default cuts a subscriber
32 MB behind): a flood (``--ingest``, ``--unicast``) then measures how fast plasma drains it,
not Redis's cut. Production keeps a limit; see docs/operations.md."""

BENCH_DIR = Path(__file__).resolve().parent.parent
REPO = BENCH_DIR.parent


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(host: str, port: int, timeout: float, proc: subprocess.Popen[bytes] | None) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with status {proc.returncode} before listening")
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"nothing listens on {host}:{port} after {timeout}s")
        time.sleep(0.05)


def _max_nofile() -> None:
    """preexec: raise the soft open-files limit to the hard one (20,000 connections need it)."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


class Managed:
    """A child process we started: stop it by pid."""

    name = "process"

    def __init__(self) -> None:
        self.proc: subprocess.Popen[bytes] | None = None
        self.dir = Path(tempfile.mkdtemp(prefix=f"plasma-bench-{self.name}-"))

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    keep_logs: Path | None = None
    """If set, the process's log files are copied there (``<name>-<pid>-<file>``) on stop."""

    def stop(self, timeout: float = 10.0) -> None:
        proc = self.proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        if Managed.keep_logs is not None:
            Managed.keep_logs.mkdir(parents=True, exist_ok=True)
            for log in self.dir.glob("*.log"):
                if log.stat().st_size:
                    shutil.copy(log, Managed.keep_logs / f"{self.name}-{proc.pid}-{log.name}")
        self.proc = None
        shutil.rmtree(self.dir, ignore_errors=True)


class RedisServer(Managed):
    name = "redis"

    def __init__(self) -> None:
        super().__init__()
        self.host = "127.0.0.1"
        self.port = free_port()

    def start(self) -> RedisServer:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError(
                "redis-server is not installed (Debian: apt-get install redis-server)"
            )
        args = [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""]
        args += ["--appendonly", "no", "--dir", str(self.dir), "--maxclients", "1000"]
        args += NO_PUBSUB_CUT
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(self.host, self.port, 10, self.proc)
        return self


class Target:
    """What the subscribers and the publisher talk to."""

    kind = "plasma"  # plasma | nchan
    host = "127.0.0.1"
    port = 0
    label = "plasma"
    tls: TLSFiles | None = None
    """With ``--tls``: the certificate the subscribers must see on ``port``."""

    @property
    def publish_port(self) -> int:
        """Where an HTTP publisher (Nchan's ``/pub``) connects: always cleartext."""
        return self.port

    def server_pids(self) -> list[int]:
        return []

    def sse_path(self, event_type: str) -> str:
        return f"/bench?eventType={event_type}"

    def stop(self, timeout: float = 10.0) -> None:
        pass


class ExternalTarget(Target):
    """A server someone else runs (``--target host:port``); its pid is optional."""

    def __init__(self, host: str, port: int, pid: int | None, kind: str = "plasma") -> None:
        self.host, self.port, self._pid, self.kind = host, port, pid, kind
        self.label = f"{kind}@{host}:{port}"

    def server_pids(self) -> list[int]:
        from plasma_bench.procstat import process_tree

        return process_tree(self._pid) if self._pid else []


class PlasmaServer(Target, Managed):
    """``python -m plasma`` with a Redis source, logging to files in its temp dir.

    ``python``: the interpreter to run it with (default: this one); another checkout's
    ``.venv/bin/python`` runs that checkout's plasma, for A/B runs in one bench run.
    ``env`` may name another source (``--source``): its settings override the Redis ones."""

    name = "plasma"

    def __init__(
        self,
        redis_addr: str,
        channel: str,
        env: dict[str, str],
        tls: TLSFiles | None = None,
        python: str | None = None,
    ) -> None:
        Managed.__init__(self)
        self.port = free_port()
        self.redis_addr = redis_addr
        self.channel = channel
        self.extra_env = env
        self.python = python or sys.executable
        self.tls = tls
        self.label = "plasma" + (
            f" (workers={env['PLASMA_WORKERS']})" if "PLASMA_WORKERS" in env else ""
        )

    def start(self) -> PlasmaServer:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PLASMA_")}
        env.update(
            {
                "PLASMA_HOST": "127.0.0.1",
                "PLASMA_PORT": str(self.port),
                "PLASMA_SUBSCRIBER_TYPE": "redis",
                "PLASMA_ERROR_LOG_OUT": str(self.dir / "error.log"),
                "PLASMA_ACCESS_LOG_OUT": str(self.dir / "access.log"),
                "PLASMA_ACCESS_LOG_LEVEL": "error",
                # Large enough that a burst never trips the slow-client cut.
                "PLASMA_CLIENT_BUFFER": str(8 << 20),
            }
        )
        if self.redis_addr:
            env["PLASMA_SUBSCRIBER_REDIS_ADDR"] = self.redis_addr
            env["PLASMA_SUBSCRIBER_REDIS_CHANNELS"] = self.channel
        if self.tls is not None:
            env["PLASMA_TLS_CERT_FILE"] = str(self.tls.cert)
            env["PLASMA_TLS_KEY_FILE"] = str(self.tls.key)
        env.update(self.extra_env)
        self.proc = subprocess.Popen(
            [self.python, "-m", "plasma"],
            env=env,
            # Another interpreter runs its own checkout's plasma: not this tree's directory.
            cwd=str(REPO) if self.python == sys.executable else str(self.dir),
            stdout=open(self.dir / "stdout.log", "wb"),  # noqa: SIM115
            stderr=open(self.dir / "stderr.log", "wb"),  # noqa: SIM115
            preexec_fn=_max_nofile,
        )
        try:
            wait_port(self.host, self.port, 20, self.proc)
        except RuntimeError as exc:
            raise RuntimeError(f"plasma did not start: {exc}\n{self.logs()}") from None
        time.sleep(0.3)  # the Redis subscription is made right after listening
        return self

    def logs(self, limit: int = 4000) -> str:
        out = []
        for name in ("stdout.log", "stderr.log", "error.log"):
            p = self.dir / name
            if p.exists():
                out.append(p.read_text(errors="replace")[-limit:])
        return "\n".join(out)

    def server_pids(self) -> list[int]:
        from plasma_bench.procstat import process_tree

        return process_tree(self.pid) if self.proc is not None else []

    def stop(self, timeout: float = 10.0) -> None:
        Managed.stop(self, timeout)


def nchan_available() -> str | None:
    """Why Nchan cannot run here, or None."""
    if shutil.which("nginx") is None and not Path("/usr/sbin/nginx").exists():
        return "nginx is not installed (Debian: apt-get install nginx libnginx-mod-nchan)"
    if not Path(NchanServer.MODULE).exists():
        return "the nchan module is not installed (Debian: apt-get install libnginx-mod-nchan)"
    return None


class NchanServer(Target, Managed):
    """nginx with the Nchan module, one worker, rendered from ``bench/nchan.conf``."""

    name = "nchan"
    kind = "nchan"
    label = "nchan"
    MODULE = "/usr/lib/nginx/modules/ngx_nchan_module.so"

    def __init__(self, tls: TLSFiles | None = None) -> None:
        Managed.__init__(self)
        self.port = free_port()
        self.tls = tls
        self._publish_port = free_port() if tls is not None else self.port

    @property
    def publish_port(self) -> int:
        return self._publish_port

    def _tls_lines(self) -> str:
        """With ``--tls``: the certificate, and a cleartext listener for the publisher only
        (plasma's publisher, Redis, is cleartext too)."""
        if self.tls is None:
            return ""
        return (
            f"listen 127.0.0.1:{self._publish_port} backlog=4096;\n"
            f"        ssl_certificate {self.tls.cert};\n"
            f"        ssl_certificate_key {self.tls.key};\n"
            "        ssl_protocols TLSv1.2 TLSv1.3;"
        )

    def sse_path(self, event_type: str) -> str:
        return f"/sub?eventType={event_type}"

    def start(self) -> NchanServer:
        _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        text = (BENCH_DIR / "nchan.conf").read_text()
        for key, value in {
            "@PORT@": str(self.port),
            "@PREFIX@": str(self.dir),
            "@NOFILE@": str(hard),
            "@WORKER_CONNECTIONS@": str(max(1024, hard - 32)),
            "@MODULE@": self.MODULE,
            "@SSL@": "ssl " if self.tls is not None else "",
            "@TLS@": self._tls_lines(),
        }.items():
            text = text.replace(key, value)
        (self.dir / "nchan.conf").write_text(text)
        os.chmod(self.dir, 0o755)
        nginx = shutil.which("nginx") or "/usr/sbin/nginx"
        self.proc = subprocess.Popen(
            [nginx, "-p", str(self.dir), "-c", str(self.dir / "nchan.conf")],
            stdout=open(self.dir / "stdout.log", "wb"),  # noqa: SIM115
            stderr=subprocess.STDOUT,
            preexec_fn=_max_nofile,
        )
        try:
            wait_port(self.host, self.port, 10, self.proc)
        except RuntimeError as exc:
            raise RuntimeError(f"nginx did not start: {exc}\n{self.logs()}") from None
        return self

    def logs(self) -> str:
        out = []
        for name in ("stdout.log", "error.log"):
            p = self.dir / name
            if p.exists():
                out.append(p.read_text(errors="replace")[-4000:])
        return "\n".join(out)

    def server_pids(self) -> list[int]:
        from plasma_bench.procstat import process_tree

        return process_tree(self.pid) if self.proc is not None else []

    def stop(self, timeout: float = 10.0) -> None:
        # nginx: SIGTERM is a fast shutdown of master and workers.
        Managed.stop(self, timeout)
