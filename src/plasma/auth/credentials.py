"""Where a token comes from, and keeping it out of every log line.

SSE: ``Authorization: Bearer <jwt>``, else the ``access_token`` query parameter (RFC 6750,
section 2.3: ``EventSource`` cannot set headers), else the cookie named by
``PLASMA_AUTH_COOKIE`` (sent by a browser ``EventSource`` with ``withCredentials``). The most
explicit source wins. gRPC: the ``authorization`` metadata entry. Publishing never reads the
cookie: a cookie rides along with any page's request, so it would let any site a user visits
publish in their name (cross-site request forgery).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence

from plasma.auth.errors import Unauthenticated

__all__ = [
    "DEFAULT_COOKIE",
    "QUERY_PARAMETER",
    "RedactTokens",
    "bearer_token",
    "cookie_value",
    "grpc_token",
    "redact",
    "request_token",
]

DEFAULT_COOKIE = "plasmaAuthorization"
QUERY_PARAMETER = "access_token"

_BEARER = re.compile(r"[ \t]*bearer[ \t]+", re.IGNORECASE)


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer`` value; ``None`` for no header or another scheme.

    ``Bearer`` with nothing after it is a malformed request, not "no token".
    """
    if not authorization:
        return None
    match = _BEARER.match(authorization)
    if match is None:
        if authorization.strip().lower() == "bearer":
            raise Unauthenticated("malformed", "Authorization: Bearer carries no token")
        return None
    token = authorization[match.end() :].strip()
    if not token or " " in token:
        raise Unauthenticated("malformed", "Authorization: Bearer carries no single token")
    return token


def cookie_value(cookie_header: str | None, name: str) -> str | None:
    """The value of cookie ``name`` in a ``Cookie`` header (the first, as browsers send it)."""
    if not cookie_header or name not in cookie_header:
        return None
    for part in cookie_header.split(";"):
        key, sep, value = part.partition("=")
        if sep and key.strip() == name:
            value = value.strip()
            if len(value) >= 2 and value[0] == value[-1] == '"':
                value = value[1:-1]
            return value or None
    return None


def request_token(
    *,
    authorization: str | None,
    query_tokens: Sequence[str] = (),
    cookie_header: str | None = None,
    cookie_name: str = "",
) -> str | None:
    """The token an HTTP request presents, or ``None``; see the module docstring for the order.

    Pass ``cookie_name=""`` where a cookie must not count (publishing).
    """
    token = bearer_token(authorization)
    if token is not None:
        return token
    if len(query_tokens) > 1:
        raise Unauthenticated("malformed", f"more than one {QUERY_PARAMETER} parameter")
    if query_tokens:
        if not query_tokens[0]:
            raise Unauthenticated("malformed", f"empty {QUERY_PARAMETER} parameter")
        return query_tokens[0]
    if cookie_name:
        return cookie_value(cookie_header, cookie_name)
    return None


def grpc_token(headers: Mapping[bytes, bytes]) -> str | None:
    """The token of a gRPC call's ``authorization`` metadata (``Bearer <jwt>``), or ``None``."""
    value = headers.get(b"authorization")
    if value is None:
        return None
    return bearer_token(value.decode("latin-1"))


# access_token=<value> in a query string or URL; "Bearer <value>"; anything shaped like a JWT.
_SECRETS = re.compile(
    r"(?P<q>\baccess_token=)[^&\s\"'#]*"
    r"|(?P<b>\bbearer\s+)[^\s\"',;]+"
    r"|\beyJ[\w-]*\.[\w-]*\.[\w-]*",
    re.IGNORECASE,
)


def _redacted(match: re.Match[str]) -> str:
    prefix = match.group("q") or match.group("b") or ""
    return prefix + "[redacted]"


def redact(text: str) -> str:
    """``text`` with every token-looking value replaced by ``[redacted]``."""
    if "=" not in text and "eyJ" not in text and "earer" not in text:
        return text
    return _SECRETS.sub(_redacted, text)


class RedactTokens(logging.Filter):
    """Redacts tokens from a record's message and string fields, whoever logged it.

    Installed on plasma's handlers: a token in a URL that reaches any log line (an error
    quoting a request line, a library's warning) is replaced before the line is written.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        for key, value in list(record.__dict__.items()):
            if isinstance(value, str) and key not in ("msg", "message"):
                cleaned = redact(value)
                if cleaned != value:
                    setattr(record, key, cleaned)
        return True
