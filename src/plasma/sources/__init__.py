"""Sources: where events come from. Each turns broker messages into hub events."""

from __future__ import annotations

from plasma.config import SourceConfig
from plasma.metrics import Metrics
from plasma.sources.base import Source
from plasma.sources.mock import MockSource
from plasma.sources.nats import NatsSource
from plasma.sources.nats_jetstream import NatsJetStreamSource
from plasma.sources.redis import RedisSource
from plasma.sources.redis_stream import RedisStreamSource

__all__ = [
    "MockSource",
    "NatsJetStreamSource",
    "NatsSource",
    "RedisSource",
    "RedisStreamSource",
    "Source",
    "create_source",
]


def create_source(config: SourceConfig, metrics: Metrics) -> Source:
    """The source ``config.type`` names."""
    if config.type == "redis":
        return RedisSource(config.redis, metrics)
    if config.type == "redis-stream":
        return RedisStreamSource(config.redis, metrics)
    if config.type == "nats":
        return NatsSource(config.nats, metrics)
    if config.type == "nats-jetstream":
        return NatsJetStreamSource(config.nats, metrics)
    return MockSource(config.mock_interval, metrics)
