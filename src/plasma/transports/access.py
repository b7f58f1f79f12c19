"""Access-log lines: one per HTTP request, and one when each stream (SSE or gRPC) ends."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

from aiohttp import web

from plasma.auth.authorizer import SUBJECT_KEY
from plasma.logging import ACCESS_LOGGER

__all__ = [
    "client_address",
    "log_lines_suppressed",
    "log_request",
    "log_stream_end",
    "remote_address",
]

access_log = logging.getLogger(ACCESS_LOGGER)


def client_address(forwarded: str, peer: str) -> str:
    """The client's address: the first ``X-Forwarded-For`` hop when a proxy set one."""
    return forwarded.split(",", 1)[0].strip() or peer


def remote_address(request: web.BaseRequest) -> str:
    """``client_address`` of a request aiohttp parsed."""
    return client_address(request.headers.get("X-Forwarded-For", ""), request.remote or "")


def log_request(request: web.BaseRequest, status: int, started: float) -> None:
    """One line for a plain (non-stream) HTTP request; with the token's ``sub`` when known."""
    if not access_log.isEnabledFor(logging.INFO):
        return
    extra = {
        "remote": remote_address(request),
        "method": request.method,
        "path": request.path,
        "status": status,
        "duration_ms": round((time.monotonic() - started) * 1000, 3),
        "user_agent": request.headers.get("User-Agent", ""),
    }
    subject = request.get(SUBJECT_KEY)
    if subject is not None:
        extra["subject"] = subject
    access_log.info("request", extra=extra)


def log_stream_end(
    *,
    transport: str,
    remote: str,
    method: str,
    path: str,
    user_agent: str,
    types: Sequence[str],
    started: float,
    events: int,
    reason: str,
    status: int | str = 200,
    subject: str | None = None,
) -> None:
    """One line when a stream ends: who (with the token's ``sub``, never the token), what they
    asked for, how long, how much was sent.

    It carries the request fields of every access line (``log_request``'s), then the stream's.
    """
    if not access_log.isEnabledFor(logging.INFO):
        return
    extra: dict[str, object] = {
        "transport": transport,
        "remote": remote,
        "method": method,
        "path": path,
        "status": status,
        "user_agent": user_agent,
        "types": list(types),
        "duration_ms": round((time.monotonic() - started) * 1000, 3),
        "events_sent": events,
        "reason": reason,
    }
    if subject is not None:
        extra["subject"] = subject
    access_log.info("stream closed", extra=extra)


def log_lines_suppressed(*, transport: str, remote: str, lines: int) -> None:
    """One line when a connection ends whose stream lines passed its budget: how many were
    left out (a client that opens and resets streams by the thousand cannot fill the log)."""
    if access_log.isEnabledFor(logging.INFO):
        access_log.info(
            "stream lines suppressed",
            extra={"transport": transport, "remote": remote, "lines": lines},
        )
