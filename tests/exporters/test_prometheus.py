"""``GET /metrics`` as Prometheus scrapes it: negotiation, and counters under real traffic."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support import (
    PROMETHEUS_ACCEPT,
    PlasmaProcess,
    RedisServer,
    SSEStream,
    async_wait_for,
    http,
    scrape,
    value,
    wait_for,
)

pytestmark = pytest.mark.integration


def test_scrape_negotiates_openmetrics_text_and_json(plasma: Callable[..., PlasmaProcess]) -> None:
    server = plasma(PLASMA_SUBSCRIBER_MOCK_INTERVAL="1h")
    result = http(server.url + "/metrics", headers={"Accept": PROMETHEUS_ACCEPT})
    assert result.headers["Content-Type"].startswith("application/openmetrics-text; version=1.0.0")
    assert result.body.endswith(b"# EOF\n")
    families = {f.name: f for f in text_string_to_metric_families(result.body.decode())}
    for name, kind in {
        "plasma_connections": "gauge",
        "plasma_connections_opened": "counter",
        "plasma_connections_closed": "counter",
        "plasma_events_received": "counter",
        "plasma_events_skipped": "counter",
        "plasma_events_delivered": "counter",
        "plasma_events_dropped": "counter",
        "plasma_event_fanout_seconds": "histogram",
        "plasma_event_write_latency_seconds": "histogram",
        "plasma_source_up": "gauge",
        "plasma_source_reconnects": "counter",
        "plasma_source_queue_full": "counter",
        "plasma_source_queue_bytes": "gauge",
        "plasma_history_events": "gauge",
        "plasma_history_bytes": "gauge",
        "plasma_client_buffered_bytes": "gauge",
        "plasma_bytes_written": "counter",
        "process_resident_memory_bytes": "gauge",
        "process_cpu_seconds": "counter",
        "process_open_fds": "gauge",
    }.items():
        assert families[name].type == kind, name

    text = http(server.url + "/metrics", headers={"Accept": "text/plain;version=0.0.4"})
    assert text.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    assert b"plasma_connections{" in text.body and b"# EOF" not in text.body
    forced = http(server.url + "/metrics?format=prometheus")
    assert forced.headers["Content-Type"].startswith("text/plain")

    for accept in ("", "*/*", "application/json", "text/html,*/*;q=0.8"):
        default = http(server.url + "/metrics", headers={"Accept": accept} if accept else None)
        assert default.headers["Content-Type"].startswith("application/json"), accept
        assert default.json()["connections"] == 0
    assert value(scrape(server.url), "plasma_source_up") == 1


async def test_counters_move_with_sse_traffic(
    redis_plasma: Callable[..., PlasmaProcess], redis_server: RedisServer
) -> None:
    server = redis_plasma()
    before = scrape(server.url)
    assert value(before, "plasma_connections", transport="sse") == 0
    assert value(before, "plasma_events_received_total") == 0
    streams = [
        await SSEStream.open(server.url + "/", "program"),
        await SSEStream.open(server.url + "/", "program:1,other"),
    ]
    try:
        for stream in streams:
            await stream.wait_retry()
        during = scrape(server.url)
        assert value(during, "plasma_connections", transport="sse") == 2
        assert value(during, "plasma_connections_opened_total", transport="sse") == 2
        redis_server.publish("events", {"meta": {"type": "program:1:views"}, "data": 1})
        redis_server.publish("events", {"meta": {"type": "other"}, "data": 2})
        redis_server.publish("events", b"this is not json")
        assert (await streams[0].next_event()).json()["data"] == 1
        assert [(await streams[1].next_event()).json()["data"] for _ in range(2)] == [1, 2]
        after = await async_wait_for(
            lambda: (
                (s := scrape(server.url)) and value(s, "plasma_events_received_total") == 3 and s
            ),
            what="3 events received",
        )
        assert value(after, "plasma_events_delivered_total") == 3
        skipped = {
            labels: v
            for (name, labels), v in after.items()
            if name == "plasma_events_skipped_total"
        }
        assert sum(skipped.values()) == 1, skipped
        assert value(after, "plasma_bytes_written_total") > value(
            during, "plasma_bytes_written_total"
        )
        assert value(after, "plasma_source_up") == 1
    finally:
        await streams[0].close()
    closed = await async_wait_for(
        lambda: (
            (s := scrape(server.url)) and value(s, "plasma_connections", transport="sse") == 1 and s
        ),
        what="one stream closed",
    )
    closed_total = sum(
        v for (name, labels), v in closed.items() if name == "plasma_connections_closed_total"
    )
    assert closed_total == 1
    await streams[1].close()


def test_source_down_and_reconnect_are_exported(
    redis_plasma: Callable[..., PlasmaProcess], redis_server: RedisServer
) -> None:
    server = redis_plasma()
    assert value(scrape(server.url), "plasma_source_up") == 1
    port = redis_server.port
    redis_server.stop()
    wait_for(lambda: value(scrape(server.url), "plasma_source_up") == 0, what="source down")
    again = RedisServer(port=port).start()
    try:
        samples = wait_for(
            lambda: (s := scrape(server.url)) and value(s, "plasma_source_up") == 1 and s,
            what="source up again",
        )
        assert value(samples, "plasma_source_reconnects_total") >= 1
    finally:
        again.stop()
