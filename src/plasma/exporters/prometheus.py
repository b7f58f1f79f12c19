"""The Prometheus / OpenMetrics exposition of a metrics snapshot, and when to answer with it.

``GET /metrics`` answers JSON unless the scrape's ``Accept`` header asks for
``application/openmetrics-text`` or ``text/plain`` (as Prometheus does). The exposition is
built from a snapshot (plain data, possibly merged across worker processes) by a collector
that prometheus-client's own encoders render; the hot path never touches prometheus-client.
Every series is low-cardinality: labels are transports and close, skip and refusal reasons, and
the event types of the 20 most-subscribed types only.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

__all__ = ["FORMATS", "SnapshotCollector", "render_exposition", "wants_exposition"]

_EXPOSITION_TYPES = ("application/openmetrics-text", "text/plain")
_JSON_TYPES = ("application/json",)
_OPENMETRICS = "application/openmetrics-text;version=1.0.0"
_TEXT_0_0_4 = "text/plain;version=0.0.4"
_FORMATS = {"prometheus": True, "openmetrics": True, "json": False}
FORMATS = tuple(_FORMATS)
"""The values ``?format=`` takes."""


def wants_exposition(accept: str, format_param: str = "") -> bool:
    """Whether to answer the exposition rather than JSON.

    ``?format=prometheus|openmetrics|json`` decides when given. Otherwise the exposition
    wins when the ``Accept`` header names an OpenMetrics or ``text/plain`` type with a q
    above zero, unless it names ``application/json`` at least as high; wildcards mean JSON.
    """
    if format_param:
        return _FORMATS.get(format_param.strip().lower(), False)
    exposition_q = json_q = 0.0
    for part in accept.split(","):
        fields = part.split(";")
        media = fields[0].strip().lower()
        q = 1.0
        for param in fields[1:]:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    q = float(value.strip())
                except ValueError:
                    q = 0.0
        if media in _EXPOSITION_TYPES:
            exposition_q = max(exposition_q, q)
        elif media in _JSON_TYPES:
            json_q = max(json_q, q)
    return exposition_q > 0 and exposition_q > json_q


def render_exposition(
    snapshot: dict[str, Any], accept: str, format_param: str = ""
) -> tuple[bytes, str]:
    """The body and Content-Type: OpenMetrics when asked for, else the 0.0.4 text format."""
    fmt = format_param.strip().lower()
    if fmt == "openmetrics":
        accept = _OPENMETRICS
    elif fmt == "prometheus" or not any(t in accept for t in _EXPOSITION_TYPES):
        accept = _TEXT_0_0_4
    encoder, content_type = choose_encoder(accept)
    return encoder(SnapshotCollector(snapshot)), content_type


_PROCESS_HELP = {
    "process_virtual_memory_bytes": ("gauge", "Virtual memory size in bytes."),
    "process_resident_memory_bytes": ("gauge", "Resident memory size in bytes."),
    "process_start_time_seconds": (
        "gauge",
        "Start time of the process since unix epoch in seconds.",
    ),
    "process_cpu_seconds_total": ("counter", "Total user and system CPU time spent in seconds."),
    "process_open_fds": ("gauge", "Number of open file descriptors."),
    "process_max_fds": ("gauge", "Maximum number of open file descriptors."),
}


class SnapshotCollector(Collector):
    """Turns one snapshot (see ``Metrics.snapshot``) into metric families."""

    def __init__(self, snapshot: dict[str, Any]) -> None:
        self._s = snapshot

    def collect(self) -> Iterator[Metric]:
        s = self._s
        yield _gauge("plasma_info", "Plasma build information.", {"version": s.get("version")}, 1)
        yield _gauge(
            "plasma_workers",
            "Worker processes whose figures are included.",
            {},
            s.get("workers", 1),
        )
        yield _by_label(
            GaugeMetricFamily,
            "plasma_connections",
            "Open client connections.",
            "transport",
            s.get("connections_by_transport", {}),
        )
        yield _by_label(
            CounterMetricFamily,
            "plasma_connections_opened",
            "Client connections opened.",
            "transport",
            s.get("connections_opened", {}),
        )
        closed = CounterMetricFamily(
            "plasma_connections_closed",
            "Client connections closed, by transport and reason.",
            labels=("transport", "reason"),
        )
        for transport, reasons in sorted(s.get("connections_closed", {}).items()):
            for reason, n in sorted(reasons.items()):
                closed.add_metric((transport, reason), n)
        yield closed
        yield _counter(
            "plasma_events_received", "Messages received from the source.", s, "events_received"
        )
        yield _by_label(
            CounterMetricFamily,
            "plasma_events_skipped",
            "Messages skipped as invalid, by reason.",
            "reason",
            s.get("events_skipped_by_reason", {}),
        )
        yield _counter(
            "plasma_events_delivered",
            "Events queued for a subscriber (one per subscriber).",
            s,
            "events_delivered",
        )
        yield _counter(
            "plasma_events_dropped",
            "Events queued for a subscriber but never written.",
            s,
            "events_dropped",
        )
        yield _counter(
            "plasma_events_published_debug",
            "Events published through the /debug page.",
            s,
            "events_published_debug",
        )
        yield _counter(
            "plasma_events_published_api",
            "Events published through the publish API (POST PLASMA_PUBLISH_PATH).",
            s,
            "events_published_api",
        )
        yield _by_label(
            CounterMetricFamily,
            "plasma_publish_rejected",
            "Publish API requests refused (nothing published), by HTTP status.",
            "status",
            s.get("publish_rejected_by_status", {}),
        )
        yield _by_label(
            CounterMetricFamily,
            "plasma_clients_dropped",
            "Clients cut off by the server, by reason.",
            "reason",
            s.get("clients_dropped_by_reason", {}),
        )
        yield _by_label(
            CounterMetricFamily,
            "plasma_auth_failures",
            "Requests refused by access control (401/403, gRPC UNAUTHENTICATED/PERMISSION_DENIED), "
            "by reason.",
            "reason",
            s.get("auth_failures_by_reason", {}),
        )
        yield _counter(
            "plasma_bytes_written", "Bytes written to client sockets.", s, "bytes_written"
        )
        yield _gauge(
            "plasma_source_up",
            "1 when the event source is connected (every worker's).",
            {},
            s.get("source_up", 0),
        )
        yield _counter(
            "plasma_source_reconnects", "Reconnects of the event source.", s, "source_reconnects"
        )
        yield _counter(
            "plasma_source_gaps",
            "Times the source announced lost events (a pub/sub subscription was re-made).",
            s,
            "source_gaps",
        )
        yield _counter(
            "plasma_gaps_sent", "Gap events sent to clients (events they lost).", s, "gaps_sent"
        )
        yield _counter(
            "plasma_source_queue_full",
            "Times reading from the source paused because the ingest queue was full.",
            s,
            "source_queue_full",
        )
        yield _gauge(
            "plasma_source_queue_bytes",
            "Bytes read from the source and not yet published.",
            {},
            s.get("source_queue_bytes", 0),
        )
        yield _gauge(
            "plasma_history_events", "Events kept for resume.", {}, s.get("history_events", 0)
        )
        yield _gauge(
            "plasma_history_bytes",
            "Bytes of the events kept for resume (PLASMA_HISTORY_MAX_BYTES bounds it).",
            {},
            s.get("history_bytes", 0),
        )
        yield _gauge(
            "plasma_client_buffered_bytes",
            "Bytes queued for clients, all together (PLASMA_MAX_BUFFERED_BYTES bounds it).",
            {},
            s.get("client_buffered_bytes", 0),
        )
        yield _by_label(
            GaugeMetricFamily,
            "plasma_type_subscribers",
            "Subscribers of the most-subscribed event types (the top 20 only).",
            "type",
            s.get("subscribed_types", {}),
        )
        yield _histogram(
            "plasma_event_fanout_seconds",
            "Time to fan one event out to its subscribers.",
            s.get("event_fanout_seconds"),
        )
        yield _histogram(
            "plasma_event_write_latency_seconds",
            "Time from an event's arrival to its write to a client socket.",
            s.get("event_write_latency_seconds"),
        )
        yield from _runtime(s)


def _gauge(name: str, doc: str, labels: dict[str, Any], value: float) -> Metric:
    family = GaugeMetricFamily(name, doc, labels=tuple(labels))
    family.add_metric(tuple(str(v) for v in labels.values()), value or 0)
    return family


def _counter(name: str, doc: str, s: dict[str, Any], key: str) -> Metric:
    return CounterMetricFamily(name, doc, value=s.get(key) or 0)


def _by_label(kind: type, name: str, doc: str, label: str, values: dict[str, float]) -> Metric:
    family: Metric = kind(name, doc, labels=(label,))
    for key, value in sorted(values.items()):
        family.add_metric((key,), value)  # type: ignore[attr-defined]
    return family


def _histogram(name: str, doc: str, data: dict[str, Any] | None) -> Metric:
    if not data:
        return HistogramMetricFamily(name, doc, labels=())
    buckets = []
    cumulative = 0
    for bound, count in zip([*data["bounds"], float("inf")], data["counts"], strict=True):
        cumulative += count
        buckets.append((floatToGoString(bound), cumulative))  # type: ignore[no-untyped-call]
    return HistogramMetricFamily(name, doc, buckets=buckets, sum_value=data["sum"])


def _runtime(s: dict[str, Any]) -> Iterator[Metric]:
    for name, value in sorted((s.get("process") or {}).items()):
        if value is None:  # e.g. a limit that differs between workers
            continue
        kind, doc = _PROCESS_HELP.get(name, ("gauge", name))
        if kind == "counter":
            yield CounterMetricFamily(name.removesuffix("_total"), doc, value=value)
        else:
            yield GaugeMetricFamily(name, doc, value=value)
    yield _gauge(
        "python_info",
        "Python platform information.",
        {"version": s.get("python_version"), "implementation": s.get("python_implementation")},
        1,
    )
    gc = CounterMetricFamily(
        "python_gc_collections", "Garbage collections, by generation.", labels=("generation",)
    )
    for generation, n in enumerate(s.get("gc_generations") or ()):
        gc.add_metric((str(generation),), n)
    yield gc
