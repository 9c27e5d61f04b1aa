"""The admin key (turnout/server/admin.py): the check itself, which routes it guards (the
pipeline stage and the routes marked admin), the start-up warning, its setting and environment
variable, and the CLI's model-state summary."""

from __future__ import annotations

import hmac
import logging
from types import SimpleNamespace
from typing import Any
from unittest.mock import ANY

import pytest
from starlette.requests import Request
from starlette.responses import Response

from turnout.cli.providers import _lifecycle
from turnout.config import load_config
from turnout.errors import ConfigError
from turnout.server import admin
from turnout.server.admin import AdminKeyError, check_admin, guarded, warn_if_open
from turnout.server.pipeline import Pipeline, Route


def request(key: str | None, authorization: str | None, method: str = "POST") -> Request:
    config = load_config({"server": {"admin_key": key}} if key else {}, environ={})
    app = SimpleNamespace(state=SimpleNamespace(gateway=SimpleNamespace(config=config)))
    headers = [(b"authorization", authorization.encode())] if authorization is not None else []
    scope = {"type": "http", "method": method, "path": "/v1/models/local/a/load",
             "headers": headers, "query_string": b"", "app": app}  # fmt: skip
    return Request(scope)


def test_without_an_admin_key_everything_passes() -> None:
    check_admin(request(None, None))
    check_admin(request(None, "Bearer whatever"))


@pytest.mark.parametrize(
    ("authorization", "code", "says"),
    [
        (None, "missing_admin_key", "has no Authorization header"),
        ("", "missing_admin_key", "has no Authorization header"),
        ("Basic dXNlcjpwYXNz", "missing_admin_key", "not Bearer <key>"),
        ("Bearer", "missing_admin_key", "not Bearer <key>"),
        ("Bearer wrong", "invalid_admin_key", "is not this gateway's admin key"),
        ("Bearer s3cret-but-longer", "invalid_admin_key", "is not this gateway's admin key"),
    ],
)
def test_a_missing_or_wrong_key_is_401_naming_what_is_missing(
    authorization: str | None, code: str, says: str
) -> None:
    with pytest.raises(AdminKeyError) as caught:
        check_admin(request("s3cret", authorization))
    exc = caught.value
    assert exc.status == 401 and exc.code == code and exc.type == "authentication_error"
    assert says in exc.message and "server.admin_key" in exc.message
    assert "POST /v1/models/local/a/load" in exc.message
    assert "s3cret" not in exc.message  # the key is never echoed
    assert exc.headers()["WWW-Authenticate"].startswith("Bearer")
    assert exc.to_openai()["error"]["code"] == code


@pytest.mark.parametrize("authorization", ["Bearer s3cret", "bearer s3cret", " Bearer  s3cret "])
def test_the_right_key_passes(authorization: str) -> None:
    check_admin(request("s3cret", authorization))


def test_keys_are_compared_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def compare(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(admin.hmac, "compare_digest", compare)
    check_admin(request("s3cret", "Bearer s3cret"))
    with pytest.raises(AdminKeyError):
        check_admin(request("s3cret", "Bearer nope"))
    assert calls == [(b"s3cret", b"s3cret"), (b"nope", b"s3cret")]


async def endpoint(request: Request) -> Response:
    return Response("ran")


async def call(app: Pipeline, method: str, path: str, key: str | None) -> tuple[int, Any, bytes]:
    """One request through ``app`` (ASGI, in process): status, headers, body."""
    headers = [(b"authorization", f"Bearer {key}".encode())] if key else []
    scope = {"type": "http", "method": method, "path": path, "raw_path": path.encode(),
             "headers": headers, "query_string": b""}  # fmt: skip
    sent: list[Any] = []

    async def receive() -> Any:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Any) -> None:
        sent.append(message)

    await app(scope, receive, send)
    return sent[0]["status"], dict(sent[0]["headers"]), b"".join(m.get("body", b"") for m in sent)


async def test_guarded_marks_only_the_routes_that_change_state_and_the_stage_checks_them() -> None:
    routes = guarded([
        Route("/v1/local/ps", endpoint),
        Route("/v1/models/{model:path}/load", endpoint, ("POST",)),
        Route("/v1/thing", endpoint, ("DELETE",)),
    ])  # fmt: skip
    plain, load, thing = routes
    assert not plain.admin and plain.endpoint is endpoint
    for route in (load, thing):
        assert route.admin and route.endpoint is endpoint
    assert load.path == "/v1/models/{model:path}/load" and load.methods == ("POST",)
    app = Pipeline(routes, [admin.admin_key])
    config = load_config({"server": {"admin_key": "k"}}, environ={})
    app.state.gateway = SimpleNamespace(config=config)
    status, headers, body = await call(app, "POST", "/v1/models/local/a/load", None)
    assert status == 401 and b"missing_admin_key" in body
    assert headers[b"www-authenticate"].startswith(b"Bearer")
    assert await call(app, "POST", "/v1/models/local/a/load", "k") == (200, ANY, b"ran")
    assert (await call(app, "DELETE", "/v1/thing", "nope"))[0] == 401
    assert await call(app, "GET", "/v1/local/ps", None) == (200, ANY, b"ran")


@pytest.mark.parametrize(
    ("host", "key", "warned"),
    [
        ("127.0.0.1", None, False),
        ("localhost", None, False),
        ("::1", None, False),
        ("127.0.1.1", None, False),
        ("0.0.0.0", None, True),
        ("::", None, True),
        ("192.168.1.20", None, True),
        ("gateway.example", None, True),
        ("0.0.0.0", "k", False),
    ],
)
def test_start_up_warning_when_open_beyond_this_machine(
    host: str, key: str | None, warned: bool, caplog: pytest.LogCaptureFixture
) -> None:
    server: dict[str, Any] = {"host": host, **({"admin_key": key} if key else {})}
    config = load_config({"server": server}, environ={})
    with caplog.at_level(logging.WARNING, logger="turnout.server"):
        assert warn_if_open(config.server) is warned
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == (1 if warned else 0)
    if warned:
        assert "model-changing endpoints" in lines[0] and "TURNOUT_SERVER__ADMIN_KEY" in lines[0]
        assert host in lines[0] and "\n" not in lines[0]


def test_the_setting_and_its_environment_variable() -> None:
    config = load_config({}, environ={"TURNOUT_SERVER__ADMIN_KEY": "0123"})
    assert config.server.admin_key is not None
    assert config.server.admin_key.get_secret_value() == "0123"  # text, never a YAML number
    assert "0123" not in str(config.model_dump(mode="json"))  # hidden when shown
    assert load_config({}, environ={}).server.admin_key is None
    with pytest.raises(ConfigError, match=r"server\.admin_key"):
        load_config({}, environ={"TURNOUT_SERVER__ADMIN_KEY": ""})
    # TURNOUT_<SECTION>__<KEY> is the only mapping: a bare TURNOUT_ADMIN_KEY is not a setting.
    with pytest.raises(ConfigError, match="admin_key: unknown setting"):
        load_config({}, environ={"TURNOUT_ADMIN_KEY": "k"})


def test_lifecycle_summary_for_the_cli() -> None:
    assert _lifecycle(None) == ""
    assert _lifecycle([]) == "no model loaded"
    states = [
        {"name": "a", "state": "loaded", "progress": 1.0, "active": 1, "waiting": 0,
         "expires_at": None},
        {"name": "b", "state": "loading", "progress": 0.5, "active": 0, "waiting": 2},
        {"name": "c", "state": "loaded", "progress": 1.0, "active": 0, "waiting": 0,
         "expires_at": 1000.0},
        {"name": "d", "state": "queued", "progress": 0.0, "active": 0, "waiting": 1},
    ]  # fmt: skip
    assert _lifecycle(states, now=940.0) == (
        "a loaded (1 running), b loading 50% (2 waiting), c loaded (unloads in 60s), "
        "d queued 0% (1 waiting)"
    )
