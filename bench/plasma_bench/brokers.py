"""Brokers for the ``--source`` runs: the processes (one Redis, a 3-master Redis Cluster,
nats-server with or without JetStream), the plasma settings for each, and a publisher per source.

Every broker runs on free loopback ports and is stopped by the pid it was started with.
Publishers write pipelined: RESP frames (``PUBLISH``, ``SPUBLISH`` to the master owning the
channel's slot, ``XADD``) on raw connections, one per channel, replies counted by a reader task;
NATS through nats-py (core ``publish`` + ``flush``, JetStream ``publish_async`` + its acks).
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

from plasma_bench.procstat import cpu_seconds
from plasma_bench.publish import wait_acknowledged
from plasma_bench.servers import NO_PUBSUB_CUT, Managed, RedisServer, free_port, wait_port
from plasma_bench.wire import event_json

__all__ = ["SOURCES", "Broker", "BrokerPublisher", "start_broker"]

SOURCES = ("redis", "redis-stream", "redis-cluster", "nats", "nats-jetstream")
NATS_SUBJECT = "bench"
"""Subject prefix: plasma subscribes to ``bench.>``; channel ``i`` is ``bench.<i>``."""
JETSTREAM_STREAM = "BENCH"


def _binary(name: str, *fallbacks: str) -> str:
    found = shutil.which(name)
    if found:
        return found
    for path in fallbacks:
        if Path(path).exists():
            return path
    raise RuntimeError(f"{name} is not installed (Debian package {name})")


class _Proc(Managed):
    """One broker process we started (stopped by its pid)."""

    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__()

    def run(self, args: list[str], port: int) -> _Proc:
        log = open(self.dir / "broker.log", "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        wait_port("127.0.0.1", port, 10, self.proc)
        return self


class Broker:
    """The broker of one source: started here, read by plasma, written by a publisher."""

    source = "redis"

    def __init__(self) -> None:
        self.procs: list[Managed] = []

    def start(self) -> Broker:
        raise NotImplementedError

    def stop(self) -> None:
        for p in self.procs:
            p.stop()
        self.procs = []

    def pids(self) -> list[int]:
        return [p.pid for p in self.procs if p.proc is not None]

    def cpu(self) -> float:
        return cpu_seconds(self.pids())

    def channels(self, n: int) -> list[str]:
        """``n`` channel names for this broker (spread over the shards of a cluster)."""
        return [f"bench{i}" if i else "bench" for i in range(n)]

    def plasma_env(self, channels: list[str]) -> dict[str, str]:
        raise NotImplementedError

    def publisher(self, channels: list[str], event_type: str, size: int, epoch_ns: int) -> Any:
        raise NotImplementedError


class RedisBroker(Broker):
    """One ``redis-server``: the ``redis`` (pub/sub) and ``redis-stream`` sources."""

    def __init__(self, source: str) -> None:
        super().__init__()
        self.source = source
        self.server = RedisServer()

    def start(self) -> RedisBroker:
        self.server.start()
        self.procs = [self.server]
        return self

    def plasma_env(self, channels: list[str]) -> dict[str, str]:
        return {
            "PLASMA_SUBSCRIBER_TYPE": self.source,
            "PLASMA_SUBSCRIBER_REDIS_ADDR": f"127.0.0.1:{self.server.port}",
            "PLASMA_SUBSCRIBER_REDIS_CHANNELS": ",".join(channels),
        }

    def publisher(
        self, channels: list[str], event_type: str, size: int, epoch_ns: int
    ) -> BrokerPublisher:
        verb = b"XADD" if self.source == "redis-stream" else b"PUBLISH"
        nodes = [("127.0.0.1", self.server.port)] * len(channels)
        return RespPublisher(verb, channels, nodes, event_type, size, epoch_ns)


class RedisClusterBroker(Broker):
    """Three ``redis-server --cluster-enabled yes`` masters made one cluster by ``redis-cli``.

    Channels carry a hash tag chosen so that channel ``i`` lives on master ``i % 3``: one
    channel is one shard's work, several channels spread over the shards."""

    source = "redis-cluster"
    MASTERS = 3

    def __init__(self) -> None:
        super().__init__()
        self.ports = [free_port() for _ in range(self.MASTERS)]
        self._slot_owner: list[int] = []

    def start(self) -> RedisClusterBroker:
        server = _binary("redis-server")
        for port in self.ports:
            node = _Proc("redis-cluster")
            args = [server, "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
            args += ["--appendonly", "no", "--dir", str(node.dir), "--maxclients", "1000"]
            args += ["--cluster-enabled", "yes", "--cluster-port", str(free_port())]
            args += ["--cluster-config-file", "nodes.conf", "--cluster-node-timeout", "2000"]
            args += NO_PUBSUB_CUT
            self.procs.append(node.run(args, port))
        subprocess.run(
            [
                _binary("redis-cli"),
                "--cluster",
                "create",
                *(f"127.0.0.1:{p}" for p in self.ports),
                "--cluster-replicas",
                "0",
                "--cluster-yes",
            ],
            check=True,
            capture_output=True,
            timeout=60,
        )
        deadline = time.monotonic() + 30
        while not self._ready():
            if time.monotonic() > deadline:
                raise RuntimeError("redis cluster: cluster_state is not ok after 30 s")
            time.sleep(0.2)
        return self

    def _cli(self, port: int, *args: str) -> str:
        return subprocess.run(
            [_binary("redis-cli"), "-h", "127.0.0.1", "-p", str(port), *args],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout

    def _ready(self) -> bool:
        if not all("cluster_state:ok" in self._cli(p, "CLUSTER", "INFO") for p in self.ports):
            return False
        owner = [0] * 16384
        for line in self._cli(self.ports[0], "CLUSTER", "NODES").splitlines():
            f = line.split()
            if len(f) < 9 or "master" not in f[2]:
                continue
            port = int(f[1].split("@")[0].rsplit(":", 1)[1])
            for spec in f[8:]:
                lo, _, hi = spec.partition("-")
                for slot in range(int(lo), int(hi or lo) + 1):
                    owner[slot] = port
        if 0 in owner:
            return False
        self._slot_owner = owner
        return True

    def node_of(self, channel: str) -> int:
        slot = int(self._cli(self.ports[0], "CLUSTER", "KEYSLOT", channel).strip())
        return self._slot_owner[slot]

    def channels(self, n: int) -> list[str]:
        """``bench{t}`` names whose tag ``t`` puts channel ``i`` on master ``i % 3``."""
        out: list[str] = []
        tag = 0
        while len(out) < n:
            want = self.ports[len(out) % len(self.ports)]
            name = f"bench{{{tag}}}"
            tag += 1
            if self.node_of(name) == want:
                out.append(name)
        return out

    def plasma_env(self, channels: list[str]) -> dict[str, str]:
        return {
            "PLASMA_SUBSCRIBER_TYPE": "redis",
            "PLASMA_SUBSCRIBER_REDIS_CLUSTER": "true",
            "PLASMA_SUBSCRIBER_REDIS_ADDR": ",".join(f"127.0.0.1:{p}" for p in self.ports),
            "PLASMA_SUBSCRIBER_REDIS_CHANNELS": ",".join(channels),
        }

    def publisher(
        self, channels: list[str], event_type: str, size: int, epoch_ns: int
    ) -> BrokerPublisher:
        nodes = [("127.0.0.1", self.node_of(c)) for c in channels]
        return RespPublisher(b"SPUBLISH", channels, nodes, event_type, size, epoch_ns)


class NatsBroker(Broker):
    """Debian's ``nats-server`` (``-js`` for JetStream, stored in a temp dir)."""

    def __init__(self, jetstream: bool) -> None:
        super().__init__()
        self.jetstream = jetstream
        self.source = "nats-jetstream" if jetstream else "nats"
        self.port = free_port()

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> NatsBroker:
        proc = _Proc("nats")
        args = [_binary("nats-server", "/usr/sbin/nats-server"), "-a", "127.0.0.1"]
        args += ["-p", str(self.port)]
        if self.jetstream:
            args += ["-js", "-sd", str(proc.dir)]
        # Like Redis's pub/sub cut: a reader 10 s or 64 MB behind loses what was queued for it
        # (a slow consumer). Lifted, so a flood measures plasma's rate, not the cut.
        conf = proc.dir / "nats.conf"
        conf.write_text('write_deadline: "120s"\nmax_pending: 1073741824\n')
        args += ["-c", str(conf)]
        self.procs = [proc.run(args, self.port)]
        return self

    def channels(self, n: int) -> list[str]:
        return [f"{NATS_SUBJECT}.{i}" for i in range(n)]

    def plasma_env(self, channels: list[str]) -> dict[str, str]:
        return {
            "PLASMA_SUBSCRIBER_TYPE": self.source,
            "PLASMA_SUBSCRIBER_NATS_URL": self.url,
            "PLASMA_SUBSCRIBER_NATS_SUBJECTS": f"{NATS_SUBJECT}.>",
            "PLASMA_SUBSCRIBER_NATS_STREAM": JETSTREAM_STREAM,
        }

    def publisher(
        self, channels: list[str], event_type: str, size: int, epoch_ns: int
    ) -> BrokerPublisher:
        return NatsPublisher(self.url, self.jetstream, channels, event_type, size, epoch_ns)


def start_broker(source: str) -> Broker:
    """Start the broker processes of ``source`` (one of ``SOURCES``)."""
    broker: Broker
    if source in ("redis", "redis-stream"):
        broker = RedisBroker(source)
    elif source == "redis-cluster":
        broker = RedisClusterBroker()
    elif source in ("nats", "nats-jetstream"):
        broker = NatsBroker(source == "nats-jetstream")
    else:
        raise ValueError(f"unknown source {source!r}; use {', '.join(SOURCES)}")
    try:
        return broker.start()
    except BaseException:
        broker.stop()
        raise


# --- publishers ------------------------------------------------------------------------------


class BrokerPublisher:
    """Pipelined publishing to one or more channels; the runner's ``Publisher`` methods too.

    ``send`` writes a batch without waiting; ``wait_replies`` waits until the broker has
    acknowledged everything sent (a pipeline's round trip)."""

    def __init__(self, channels: list[str], event_type: str, size: int, epoch_ns: int) -> None:
        self.channels = channels
        self.event_type = event_type
        self.size = size
        self.epoch_ns = epoch_ns
        self.sent = 0
        self.replies = 0
        self.errors = 0
        self.error_samples: list[str] = []
        self._changed = asyncio.Event()

    async def connect(self) -> None:
        raise NotImplementedError

    async def ensure_connected(self) -> None:
        return None

    async def send(self, events: list[bytes], channel: int = 0) -> None:
        raise NotImplementedError

    async def drain(self) -> None:
        return None

    async def close(self) -> None:
        raise NotImplementedError

    def _reply(self, ok: bool, why: bytes = b"") -> None:
        self.replies += 1
        if not ok:
            self.errors += 1
            if len(self.error_samples) < 5:
                self.error_samples.append(why.decode(errors="replace")[:200])
        self._changed.set()

    async def wait_replies(self, timeout: float) -> bool:
        return await wait_acknowledged(self, timeout)

    # The runner's Publisher interface (burst, fixed rate, warm-up), on channel 0.

    def event(self, seq: int) -> bytes:
        return event_json(self.event_type, seq, time.time_ns() - self.epoch_ns, self.size)

    async def apublish(self, seq: int) -> None:
        await self.send([self.event(seq)])

    async def apublish_burst(self, first: int, count: int) -> int:
        events = [self.event(s) for s in range(first, first + count)]
        t0 = time.time_ns()
        await self.send(events)
        return t0


class RespPublisher(BrokerPublisher):
    """``<verb> channel event`` (``XADD stream * event <json>`` for streams) over raw RESP;
    one connection per channel, to the node that serves it."""

    def __init__(
        self,
        verb: bytes,
        channels: list[str],
        nodes: list[tuple[str, int]],
        event_type: str,
        size: int,
        epoch_ns: int,
    ) -> None:
        super().__init__(channels, event_type, size, epoch_ns)
        self.verb = verb
        self.nodes = nodes
        self._writers: list[asyncio.StreamWriter] = []
        self._tasks: list[asyncio.Task[None]] = []
        if verb == b"XADD":
            self._heads = [
                b"*5\r\n$4\r\nXADD\r\n$%d\r\n%b\r\n$1\r\n*\r\n$5\r\nevent\r\n"
                % (len(c), c.encode())
                for c in channels
            ]
        else:
            self._heads = [
                b"*3\r\n$%d\r\n%b\r\n$%d\r\n%b\r\n" % (len(verb), verb, len(c), c.encode())
                for c in channels
            ]

    async def connect(self) -> None:
        loop = asyncio.get_running_loop()
        for host, port in self.nodes:
            reader, writer = await asyncio.open_connection(host, port, limit=1 << 20)
            self._writers.append(writer)
            self._tasks.append(loop.create_task(self._read_replies(reader)))

    async def ensure_connected(self) -> None:
        for task in self._tasks:
            if task.done():
                raise RuntimeError(f"the broker closed the publisher's connection: {task!r}")

    async def send(self, events: list[bytes], channel: int = 0) -> None:
        head = self._heads[channel]
        self._writers[channel].write(
            b"".join(b"%b$%d\r\n%b\r\n" % (head, len(e), e) for e in events)
        )
        self.sent += len(events)

    async def drain(self) -> None:
        for w in self._writers:
            await w.drain()

    async def _read_replies(self, reader: asyncio.StreamReader) -> None:
        while True:
            line = await reader.readline()
            if not line:
                return
            kind = line[:1]
            if kind == b"$":
                n = int(line[1:])
                if n >= 0:
                    await reader.readexactly(n + 2)
                self._reply(True)
            elif kind == b"-":
                self._reply(False, line)
            else:
                self._reply(True)

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, OSError):
                await task
        for w in self._writers:
            w.close()
            with contextlib.suppress(OSError):
                await w.wait_closed()
        self._writers, self._tasks = [], []


class NatsPublisher(BrokerPublisher):
    """nats-py: core ``publish`` (a batch is acknowledged by ``flush``'s PING/PONG), or for
    JetStream the same ``publish`` with a reply subject, which is what a JetStream publish is:
    the stream's ack (``{"stream":…,"seq":…}``) comes back there and is counted, without
    nats-py's per-message ack future. Channel ``i`` is subject ``i``."""

    def __init__(
        self,
        url: str,
        jetstream: bool,
        channels: list[str],
        event_type: str,
        size: int,
        epoch_ns: int,
    ) -> None:
        super().__init__(channels, event_type, size, epoch_ns)
        self.url = url
        self.jetstream = jetstream
        self._nc: Any = None
        self._inbox = ""

    async def connect(self) -> None:
        import nats

        self._nc = await nats.connect(self.url, pending_size=64 << 20)
        if self.jetstream:
            # The stream plasma would create, made first so no publish finds no stream.
            with contextlib.suppress(Exception):
                await self._nc.jetstream().add_stream(
                    name=JETSTREAM_STREAM, subjects=[f"{NATS_SUBJECT}.>"]
                )
            self._inbox = self._nc.new_inbox()
            await self._nc.subscribe(
                self._inbox, cb=self._on_ack, pending_msgs_limit=0, pending_bytes_limit=0
            )

    async def _on_ack(self, msg: Any) -> None:
        ok = msg.data.startswith(b'{"stream"') and b'"error"' not in msg.data
        self._reply(ok, msg.data or repr(msg.headers).encode())

    async def send(self, events: list[bytes], channel: int = 0) -> None:
        subject = self.channels[channel]
        publish = self._nc.publish
        if self.jetstream:
            for e in events:
                await publish(subject, e, reply=self._inbox)
        else:
            for e in events:
                await publish(subject, e)
        self.sent += len(events)

    async def wait_replies(self, timeout: float) -> bool:
        if self.jetstream:
            await self._nc.flush(timeout)
            return await super().wait_replies(timeout)
        try:
            await self._nc.flush(timeout)
        except TimeoutError:
            return False
        self.replies = self.sent
        return True

    async def close(self) -> None:
        if self._nc is not None:
            with contextlib.suppress(Exception):
                await self._nc.close()
            self._nc = None
