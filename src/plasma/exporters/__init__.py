"""Exporters read metric snapshots and hand them on: Prometheus exposition, log and syslog."""

from __future__ import annotations

from plasma.exporters.prometheus import render_exposition, wants_exposition
from plasma.exporters.sender import MetricsSender

__all__ = ["MetricsSender", "render_exposition", "wants_exposition"]
