"""How plasma reaches Redis: one server, a Sentinel-managed master, or a Cluster; TLS and ACL users.

Every Redis client the sources open comes from here, so the deployment shape (``RedisConfig``:
``PLASMA_SUBSCRIBER_REDIS_ADDR`` or a ``rediss://`` URL, ``..._USERNAME``, ``..._TLS``,
``..._SENTINELS``, ``..._CLUSTER``) is decided in one place and the sources only read and
subscribe. redis-py's own retries are off: reconnecting is ``Reconnect``'s job.
"""

from __future__ import annotations

from typing import Any

import redis.asyncio as aioredis
from redis._parsers import BaseParser
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import NoBackoff

from plasma.config import RedisConfig

__all__ = [
    "PATTERN_CHARS",
    "cluster_client",
    "describe",
    "is_pattern",
    "node_client",
    "server_client",
]

PATTERN_CHARS = frozenset("*?[")
"""A channel entry holding one of these is a pattern (``PSUBSCRIBE``)."""


def is_pattern(channel: str) -> bool:
    return not PATTERN_CHARS.isdisjoint(channel)


def describe(config: RedisConfig) -> str:
    """Where the source reads from, for log lines and errors (never a password)."""
    if config.sentinels:
        seeds = ",".join(f"{h}:{p}" for h, p in config.sentinels)
        return f"sentinel master {config.sentinel_master} via {seeds}"
    addrs = ",".join(f"{h}:{p}" for h, p in config.addrs)
    return f"cluster {addrs}" if config.cluster else addrs


def _connection_kwargs(
    config: RedisConfig, timeout: float | None, connect: float
) -> dict[str, Any]:
    kwargs: dict[str, Any] = {
        "username": config.username or None,
        "password": config.password or None,
        "socket_connect_timeout": connect,
        "socket_timeout": timeout,
        "socket_keepalive": True,
        "retry_on_timeout": False,
        # RESP2, which every Redis speaks: redis-py 8 opens with HELLO 3, which a Redis older
        # than 6 refuses, so plasma could not subscribe to it at all.
        "protocol": 2,
    }
    if config.tls:
        kwargs["ssl"] = True
        kwargs["ssl_ca_certs"] = config.tls_ca_file or None
    return kwargs


def server_client(
    config: RedisConfig,
    timeout: float | None,
    connect: float,
    parser_class: type[BaseParser] | None = None,
) -> aioredis.Redis:
    """A client of one server: the configured one, or the master Sentinel names right now.

    With Sentinel, each new connection asks the sentinels for the current master, so after a
    failover the reconnect lands on the new master without a restart. ``parser_class``
    replaces redis-py's reply parser (hiredis when installed) for this client's connections.
    """
    kwargs = _connection_kwargs(config, timeout, connect)
    if parser_class is not None:
        kwargs["parser_class"] = parser_class
    # Reconnects are the source's job (die/alive policy, metrics, gap), not redis-py's.
    kwargs["retry"] = Retry(NoBackoff(), 0)
    if config.sentinels:
        sentinel_kwargs = {
            "socket_connect_timeout": connect,
            "socket_timeout": connect,
            "password": config.sentinel_password or None,
        }
        sentinel = Sentinel(  # type: ignore[no-untyped-call]
            list(config.sentinels), sentinel_kwargs=sentinel_kwargs, **kwargs
        )
        master: aioredis.Redis = sentinel.master_for(config.sentinel_master, db=config.db)
        return master
    host, port = config.addrs[0]
    if parser_class is not None:
        # The parser is a connection setting: the client owns (and closes) this pool.
        if kwargs.pop("ssl", False):
            kwargs["connection_class"] = aioredis.SSLConnection
        pool = aioredis.ConnectionPool(host=host, port=port, db=config.db, **kwargs)
        return aioredis.Redis.from_pool(pool)
    return node_client(config, host, port, timeout, connect)


def node_client(
    config: RedisConfig, host: str, port: int, timeout: float | None, connect: float
) -> aioredis.Redis:
    """A client of the server at ``host:port`` (a cluster node, or the one configured)."""
    kwargs = _connection_kwargs(config, timeout, connect)
    kwargs["retry"] = Retry(NoBackoff(), 0)
    return aioredis.Redis(host=host, port=port, db=config.db, **kwargs)


def cluster_client(config: RedisConfig, timeout: float | None, connect: float) -> RedisCluster:
    """A Redis Cluster client from the seed nodes: it learns the slot map and follows MOVED."""
    kwargs = _connection_kwargs(config, timeout, connect)
    del kwargs["retry_on_timeout"]  # not a cluster option: the cluster client retries MOVED
    return RedisCluster(
        startup_nodes=[ClusterNode(host, port) for host, port in config.addrs],
        require_full_coverage=False,
        **kwargs,
    )
