"""The policy: the colon-prefix rule, ``*``, public types, and refusing a type above the grant."""

from __future__ import annotations

import pytest

from plasma.auth.authorizer import Authorizer
from plasma.auth.errors import Forbidden, Unauthenticated
from plasma.auth.keys import load_keys
from plasma.auth.policy import TypeSet
from plasma.auth.tokens import TokenVerifier
from tests.auth.keyring import SECRET, mint


def test_an_entry_allows_itself_and_what_is_below_it() -> None:
    grant = TypeSet.of(["user:42", "news"])
    assert grant.allows("user:42")
    assert grant.allows("user:42:notifications")
    assert grant.allows("news:sports:live")
    assert not grant.allows("user:420")
    assert not grant.allows("user:4")
    assert not grant.allows("user")  # above the grant: every user's events
    assert not grant.allows("newsletter")
    assert grant.first_refused(["news", "user:42:x", "user:43", "user"]) == "user:43"


def test_star_allows_every_type_and_nothing_allows_nothing() -> None:
    assert TypeSet.of(["*"]).allows("anything:at:all")
    assert not TypeSet.of([]).allows("a")
    assert not TypeSet.of(["", " "]).allows("")
    assert not TypeSet.of([])


def authorizer(public: list[str] | None = None) -> Authorizer:
    keys = load_keys(secret=SECRET)
    assert keys is not None
    return Authorizer(TokenVerifier(keys), public_types=TypeSet.of(public or []))


def token(subscribe: list[str], publish: list[str] | None = None) -> str:
    return mint(
        SECRET, "HS256", {"sub": "42", "plasma": {"subscribe": subscribe, "publish": publish or []}}
    )


def test_every_requested_type_must_be_allowed() -> None:
    auth = authorizer()
    identity = auth.check_subscribe(token(["user:42", "news"]), ["user:42:n", "news"])
    assert identity is not None and identity.subject == "42"
    with pytest.raises(Forbidden) as info:
        auth.check_subscribe(token(["user:42"]), ["user:42", "user:43"])
    assert info.value.status == 403
    assert "'user:43'" in str(info.value)
    with pytest.raises(Forbidden):
        auth.check_subscribe(token(["user:42"]), ["user"])
    assert auth.failures["forbidden"] == 2


def test_no_token_is_401_without_an_error_code() -> None:
    auth = authorizer()
    with pytest.raises(Unauthenticated) as info:
        auth.check_subscribe(None, ["user:42"])
    assert info.value.status == 401
    assert info.value.www_authenticate == "Bearer"
    assert auth.failures["missing"] == 1


def test_a_bad_token_is_401_invalid_token() -> None:
    auth = authorizer(public=["news"])
    with pytest.raises(Unauthenticated) as info:
        auth.check_subscribe("garbage", ["news"])  # even for a public type
    assert info.value.www_authenticate == 'Bearer error="invalid_token"'
    assert auth.failures["malformed"] == 1


def test_public_types_need_no_token() -> None:
    auth = authorizer(public=["news", "status:public"])
    assert auth.check_subscribe(None, ["news:sports", "status:public"]) is None
    with pytest.raises(Unauthenticated):
        auth.check_subscribe(None, ["news", "status"])  # status is above the public prefix
    assert auth.check_subscribe(token(["user:42"]), ["news", "user:42"]) is not None


def test_publishing_needs_a_publish_grant() -> None:
    auth = authorizer(public=["news"])
    with pytest.raises(Unauthenticated):
        auth.check_publish_token(None, ["news"])  # public to read, not to write
    with pytest.raises(Forbidden) as info:
        auth.check_publish_token(token(["*"], ["user:42"]), ["user:42:x", "user:43"])
    assert "'user:43'" in str(info.value)
    assert auth.check_publish_token(token([], ["user:42"]), ["user:42:x"]) is not None


def test_a_disabled_authorizer_allows_everything() -> None:
    auth = Authorizer(None)
    assert not auth.enabled
    assert auth.check_subscribe(None, ["user"]) is None
    assert auth.check_subscribe("not even a token", ["user"]) is None
    assert auth.check_publish_token(None, ["user"]) is None
