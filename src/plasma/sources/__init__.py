"""Sources: where events come from. Each turns broker messages into hub events.

Only the configured source's module is imported: a process reading Redis never loads the NATS
client (nor the other way round), and a worker fed by its supervisor loads neither; each broker
client costs a worker 20-30 MB of RSS, times the worker count.
"""

from __future__ import annotations

from plasma.config import SourceConfig
from plasma.metrics import Metrics
from plasma.sources.base import Source

__all__ = ["Source", "create_source"]


def create_source(config: SourceConfig, metrics: Metrics) -> Source:
    """The source ``config.type`` names."""
    if config.type == "redis":
        from plasma.sources.redis import RedisSource

        return RedisSource(config.redis, metrics)
    if config.type == "redis-stream":
        from plasma.sources.redis_stream import RedisStreamSource

        return RedisStreamSource(config.redis, metrics)
    if config.type == "nats":
        from plasma.sources.nats import NatsSource

        return NatsSource(config.nats, metrics)
    if config.type == "nats-jetstream":
        from plasma.sources.nats_jetstream import NatsJetStreamSource

        return NatsJetStreamSource(config.nats, metrics)
    from plasma.sources.mock import MockSource

    return MockSource(config.mock_interval, metrics)
