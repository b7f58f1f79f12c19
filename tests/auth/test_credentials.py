"""Where the token comes from, and keeping it out of log lines."""

from __future__ import annotations

import logging

import pytest

from plasma.auth.credentials import (
    RedactTokens,
    bearer_token,
    cookie_value,
    grpc_token,
    redact,
    request_token,
)
from plasma.auth.errors import Unauthenticated
from plasma.logging import JSONFormatter


def test_bearer_token() -> None:
    assert bearer_token("Bearer abc.def.ghi") == "abc.def.ghi"
    assert bearer_token("bearer   abc ") == "abc"
    assert bearer_token(None) is None
    assert bearer_token("Basic dXNlcjpwYXNz") is None
    for bad in ("Bearer", "Bearer ", "Bearer a b"):
        with pytest.raises(Unauthenticated) as info:
            bearer_token(bad)
        assert info.value.reason == "malformed"


def test_cookie_value() -> None:
    header = 'theme=dark; plasmaAuthorization="a.b.c"; other=1'
    assert cookie_value(header, "plasmaAuthorization") == "a.b.c"
    assert cookie_value("plasmaAuthorization=x.y.z", "plasmaAuthorization") == "x.y.z"
    assert cookie_value("xplasmaAuthorization=1", "plasmaAuthorization") is None
    assert cookie_value("plasmaAuthorization=", "plasmaAuthorization") is None
    assert cookie_value(None, "plasmaAuthorization") is None


def test_the_most_explicit_source_wins() -> None:
    cookie = "plasmaAuthorization=from-cookie"
    both = {"cookie_header": cookie, "cookie_name": "plasmaAuthorization"}
    assert (
        request_token(authorization="Bearer from-header", query_tokens=["q"], **both)
        == "from-header"
    )
    assert request_token(authorization=None, query_tokens=["from-query"], **both) == "from-query"
    assert request_token(authorization=None, **both) == "from-cookie"
    assert request_token(authorization=None, cookie_header=cookie, cookie_name="") is None
    with pytest.raises(Unauthenticated):
        request_token(authorization=None, query_tokens=["a", "b"])
    with pytest.raises(Unauthenticated):
        request_token(authorization=None, query_tokens=[""])


def test_grpc_token() -> None:
    assert grpc_token({b"authorization": b"Bearer t.o.k"}) == "t.o.k"
    assert grpc_token({}) is None


def test_redact() -> None:
    token = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiI0MiJ9.c2lnbmF0dXJl"
    assert redact(f"/?eventType=a&access_token={token}&x=1") == (
        "/?eventType=a&access_token=[redacted]&x=1"
    )
    assert redact("ACCESS_TOKEN=abc") == "ACCESS_TOKEN=[redacted]"
    assert redact(f"Authorization: Bearer {token}") == "Authorization: Bearer [redacted]"
    assert token not in redact(f"saw {token} somewhere")
    assert redact("/?eventType=user:42") == "/?eventType=user:42"


def test_the_log_filter_redacts_messages_and_fields() -> None:
    token = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiI0MiJ9.c2lnbmF0dXJl"
    record = logging.LogRecord(
        "plasma.x",
        logging.WARNING,
        __file__,
        1,
        "bad request line %s",
        (f"GET /?access_token={token}",),
        None,
    )
    record.target = f"/?access_token={token}"
    assert RedactTokens().filter(record)
    line = JSONFormatter().format(record)
    assert token not in line
    assert "access_token=[redacted]" in line
