"""The Grafana dashboard only queries series, and labels, that a live plasma really exports."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from plasma.exporters.prometheus import render_exposition
from plasma.metrics import Metrics
from tests.support import PlasmaProcess, http

pytestmark = pytest.mark.integration

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "plasma-dashboard.json"
# Labels Prometheus itself attaches to every scraped series.
TARGET_LABELS = {"instance", "job"}
_SERIES = re.compile(r"\b((?:plasma|process|python)_[a-zA-Z0-9_]*)\b")
_SELECTOR = re.compile(r"\b([a-zA-Z_:][a-zA-Z0-9_:]*)\{([^}]*)\}")
_GROUPING = re.compile(r"\b(?:by|without)\s*\(([^)]*)\)")


def queries(dashboard: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """Every PromQL expression: panel targets and templating variable queries."""
    for panel in dashboard["panels"]:
        for panel_ in [panel, *panel.get("panels", [])]:
            for target in panel_.get("targets", []):
                yield panel_["title"], target["expr"]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]
            yield (
                f"variable {variable['name']}",
                query["query"] if isinstance(query, dict) else query,
            )


def exported(url: str) -> dict[str, set[str]]:
    """Every series name the server exports (with suffixes), and the label names of each."""
    result = http(url + "/metrics", headers={"Accept": "text/plain;version=0.0.4"})
    assert result.status == 200
    return series_of(result.body.decode())


def labelled_example() -> dict[str, set[str]]:
    """Series of a snapshot where every labelled family has a sample (a fresh server has none)."""
    metrics = Metrics()
    metrics.connection_opened("sse")
    metrics.connection_closed("sse", "client")
    metrics.event_skipped("json")
    metrics.clients_dropped["slow"] += 1
    body, _ = render_exposition(metrics.snapshot(), "text/plain;version=0.0.4")
    return series_of(body.decode())


def series_of(text: str) -> dict[str, set[str]]:
    series: dict[str, set[str]] = {}
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count")}
    for family in text_string_to_metric_families(text):
        labels = {name for s in family.samples for name in s.labels}
        for suffix in suffixes.get(family.type, ("",)):
            series[family.name + suffix] = set(labels) | ({"le"} if suffix == "_bucket" else set())
        for sample in family.samples:
            series.setdefault(sample.name, set()).update(sample.labels)
    return series


def test_dashboard_queries_name_only_exported_series(plasma: Callable[..., PlasmaProcess]) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    server = plasma(PLASMA_SUBSCRIBER_MOCK_INTERVAL="1h")
    series = exported(server.url)
    for name, labels in labelled_example().items():
        if name in series:  # names come from the live server only; labels may come from here
            series[name] |= labels
    all_queries = list(queries(dashboard))
    assert len(all_queries) >= 15
    used: set[str] = set()
    for where, expr in all_queries:
        without_strings = re.sub(r'"[^"]*"', '""', expr)
        names = set(_SERIES.findall(without_strings))
        assert names, f"{where}: {expr!r} names no plasma series"
        for name in names:
            assert name in series, f"{where}: {name} is not exported (query {expr!r})"
        used |= names
        known_labels = set().union(*(series[n] for n in names)) | TARGET_LABELS
        for name, matchers in _SELECTOR.findall(without_strings):
            for label in re.findall(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)", matchers):
                assert label in series[name] | TARGET_LABELS, f"{where}: {name} has no {label}"
        for grouping in _GROUPING.findall(without_strings):
            for label in filter(None, (x.strip() for x in grouping.split(","))):
                assert label in known_labels, f"{where}: no series in {expr!r} has {label}"
    # The series all appear on the dashboard.
    for required in (
        "plasma_connections",
        "plasma_connections_opened_total",
        "plasma_connections_closed_total",
        "plasma_events_received_total",
        "plasma_events_skipped_total",
        "plasma_events_delivered_total",
        "plasma_events_dropped_total",
        "plasma_event_fanout_seconds_bucket",
        "plasma_event_write_latency_seconds_bucket",
        "plasma_source_up",
        "plasma_source_reconnects_total",
        "plasma_bytes_written_total",
        "process_resident_memory_bytes",
        "process_cpu_seconds_total",
    ):
        assert required in used, f"the dashboard does not show {required}"


def test_dashboard_is_a_well_formed_grafana_dashboard() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    assert dashboard["uid"] and dashboard["title"]
    for panel in dashboard["panels"]:
        assert panel["targets"], panel["title"]
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24, panel["title"]
        for target in panel["targets"]:
            assert target["expr"].count("(") == target["expr"].count(")"), target["expr"]
