"""pullcache.logs.redact: credentials never reach a log line."""

from __future__ import annotations

import pytest

from pullcache.logs import redact


def run(**event):
    return redact(None, "info", dict(event))


@pytest.mark.parametrize("key", ["password", "Password", "pass", "token", "access_token",
                                 "authorization", "Authorization", "secret", "client_secret",
                                 "credentials"])
def test_secret_named_fields_are_blanked(key):
    assert run(event="x", **{key: "hunter2"})[key] == "***"


def test_secret_named_fields_are_blanked_whatever_their_type():
    assert run(event="x", token=None, password=1234)["password"] == "***"
    assert run(event="x", token={"a": 1})["token"] == "***"


@pytest.mark.parametrize("text, expected", [
    ("Bearer eyJhbGciOi.eyJzdWIi.c2lnbmF0dXJl", "Bearer ***"),
    ("got header Authorization: Basic QVdTOnNlY3JldA== from client",
     "got header Authorization: Basic *** from client"),
    ("bearer abc~+/=-._def", "bearer ***"),
    ("GET https://user:pa55@registry.example.com/v2/", "GET https://***@registry.example.com/v2/"),
    ("http://AWS:tok@10.0.0.1:5000/token and https://u@h/x",
     "http://***@10.0.0.1:5000/token and https://***@h/x"),
])
def test_credentials_inside_strings_are_scrubbed(text, expected):
    assert run(event="fetch", error=text)["error"] == expected


def test_the_event_itself_is_scrubbed_but_never_blanked():
    out = run(event="token_refreshed for https://u:p@auth.example/token")
    assert out["event"] == "token_refreshed for https://***@auth.example/token"


def test_ordinary_fields_are_left_alone():
    event = {"event": "fill_committed", "digest": "sha256:" + "ab" * 32, "bytes": 1234,
             "upstream": "docker.io", "url": "https://registry-1.docker.io/v2/library/alpine",
             "realm": "https://auth.docker.io/token", "scope": "repository:library/alpine:pull",
             "path": "/v2/library/alpine/manifests/3.20?ns=docker.io", "ok": True}
    assert redact(None, "info", dict(event)) == event


def test_returns_the_same_event_dict():
    event = {"event": "x", "password": "p"}
    assert redact(None, "info", event) is event
