"""The exporters' formats in-process: exposition negotiation and series, Go log and syslog lines."""

from __future__ import annotations

import datetime
import os
import re

import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from plasma.exporters.golog import (
    LDATE,
    LLONGFILE,
    LMICROSECONDS,
    LMSGPREFIX,
    LSHORTFILE,
    LTIME,
    LUTC,
    format_go_log_line,
)
from plasma.exporters.prometheus import render_exposition, wants_exposition
from plasma.exporters.sender import metrics_line
from plasma.exporters.syslog import format_syslog_message
from plasma.metrics import Metrics, merge_snapshots
from tests.support import PROMETHEUS_ACCEPT


def _families(text: str) -> dict[str, object]:
    return {f.name: f for f in text_string_to_metric_families(text)}


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
    }


# --- content negotiation and exposition ---------------------------------------------------------


@pytest.mark.parametrize(
    ("accept", "fmt", "expected"),
    [
        (PROMETHEUS_ACCEPT, "", True),
        ("text/plain;version=0.0.4", "", True),
        ("application/openmetrics-text; version=1.0.0", "", True),
        ("", "", False),
        ("*/*", "", False),
        ("application/json", "", False),
        ("text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8", "", False),
        ("application/json, text/plain;q=0.5", "", False),
        ("text/plain;q=0", "", False),
        ("*/*", "prometheus", True),
        ("*/*", "openmetrics", True),
        (PROMETHEUS_ACCEPT, "json", False),
    ],
)
def test_exposition_is_chosen_only_when_asked_for(accept: str, fmt: str, expected: bool) -> None:
    assert wants_exposition(accept, fmt) is expected


def test_exposition_of_a_merged_snapshot_parses_and_sums() -> None:
    a, b = Metrics(), Metrics()
    a.connection_opened("sse")
    b.connection_opened("sse")
    b.events_received = 7
    b.clients_dropped["slow"] += 1
    a.observe_latency(0.003)
    merged = merge_snapshots([a.snapshot(), b.snapshot()])
    body, content_type = render_exposition(merged, "text/plain;version=0.0.4")
    assert content_type.startswith("text/plain; version=0.0.4")
    samples = _samples(body.decode())
    assert samples[("plasma_connections", (("transport", "sse"),))] == 2
    assert samples[("plasma_connections", (("transport", "grpc"),))] == 0
    assert samples[("plasma_events_received_total", ())] == 7
    assert samples[("plasma_clients_dropped_total", (("reason", "slow"),))] == 1
    assert samples[("plasma_workers", ())] == 2
    assert samples[("plasma_event_write_latency_seconds_bucket", (("le", "0.005"),))] == 1
    assert samples[("plasma_event_write_latency_seconds_bucket", (("le", "0.0025"),))] == 0
    assert samples[("plasma_event_write_latency_seconds_bucket", (("le", "+Inf"),))] == 1
    assert samples[("process_resident_memory_bytes", ())] > 0
    body, content_type = render_exposition(merged, PROMETHEUS_ACCEPT)
    assert content_type.startswith("application/openmetrics-text; version=1.0.0")
    assert body.endswith(b"# EOF\n")
    families = _families(body.decode())
    assert families["plasma_event_fanout_seconds"].type == "histogram"
    assert families["plasma_events_delivered"].type == "counter"


def test_exposition_has_no_label_per_event_type_or_client() -> None:
    m = Metrics()
    for _ in range(50):
        m.connection_opened("sse")
        m.connection_closed("sse", "client")
        m.events_received += 1
    body, _ = render_exposition(m.snapshot(), "text/plain")
    allowed = {"transport", "reason", "le", "generation", "version", "implementation"}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            assert set(sample.labels) <= allowed, sample


# --- the sender's line formats ------------------------------------------------------------------

# 2009-01-23 01:23:23.123123 UTC, Go's documentation example.
_T = datetime.datetime(2009, 1, 23, 1, 23, 23, 123123, tzinfo=datetime.UTC).timestamp()
_CALLER = ("/src/plasma/exporters/sender.py", 42)


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (0, "metrics: msg\n"),
        (LDATE | LUTC, "metrics: 2009/01/23 msg\n"),
        (LTIME | LUTC, "metrics: 01:23:23 msg\n"),
        (LMICROSECONDS | LUTC, "metrics: 01:23:23.123123 msg\n"),
        (LDATE | LTIME | LMICROSECONDS | LUTC, "metrics: 2009/01/23 01:23:23.123123 msg\n"),
        (LDATE | LUTC | LMSGPREFIX, "2009/01/23 metrics: msg\n"),
        (LSHORTFILE, "metrics: sender.py:42: msg\n"),
        (LLONGFILE, "metrics: /src/plasma/exporters/sender.py:42: msg\n"),
        (LLONGFILE | LSHORTFILE, "metrics: sender.py:42: msg\n"),
        (LTIME | LUTC | LSHORTFILE | LMSGPREFIX, "01:23:23 sender.py:42: metrics: msg\n"),
    ],
)
def test_go_log_header_matches_go(flags: int, expected: str) -> None:
    line = format_go_log_line("metrics: ", flags, "msg", now=_T, caller=_CALLER)
    assert line == expected


def test_go_log_time_is_local_without_lutc() -> None:
    line = format_go_log_line("", LDATE | LTIME, "x", now=_T)
    local = datetime.datetime.fromtimestamp(_T)
    assert line == local.strftime("%Y/%m/%d %H:%M:%S") + " x\n"


def test_syslog_messages_are_framed_as_go_frames_them() -> None:
    pid = os.getpid()
    remote = format_syslog_message(
        3 * 8 + 6, "plasma", "hello", local=False, now=_T, hostname="box"
    ).decode()
    match = re.fullmatch(rf"<30>(\S+) box plasma\[{pid}\]: hello\n", remote)
    assert match is not None, remote
    stamp = datetime.datetime.fromisoformat(match.group(1).replace("Z", "+00:00"))
    assert stamp.timestamp() == int(_T)
    local = format_syslog_message(0, "plasma", "hello\n", local=True, now=_T).decode()
    assert re.fullmatch(rf"<0>Jan [ 2]\d \d\d:\d\d:\d\d plasma\[{pid}\]: hello\n", local), local


def test_metrics_line_is_one_compact_json_object() -> None:
    m = Metrics()
    m.events_delivered = 3
    m.observe_fanout(0.5)
    line = metrics_line(m.snapshot())
    assert "\n" not in line
    data = orjson.loads(line)
    assert data["events_delivered"] == 3
    assert data["connections"] == 0
    assert data["event_fanout_seconds"] == {"count": 1, "sum": 0.5}
    assert "processes" not in data
