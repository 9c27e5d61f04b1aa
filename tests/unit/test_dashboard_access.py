"""Who may use the dashboard (/ui): the admin key's session cookie when a key is set, loopback
otherwise; the cookie's flags, tampering and expiry; cross-origin logins refused by the guard; the
request log keeps no content."""

from __future__ import annotations

import time
from typing import Any

import pytest
from starlette.testclient import TestClient

from tests.unit.test_server import MemoryProvider
from turnout.gateway import Gateway
from turnout.routing import Catalog, Router
from turnout.server import create_app
from turnout.server.ui import COOKIE, _sign

KEY = "admin-key-for-the-dashboard-0123"
CHAT = {"model": "m", "messages": [{"role": "user", "content": "a secret prompt"}]}


def app(admin_key: str | None) -> Any:
    server = {"admin_key": admin_key} if admin_key else {}
    gw = Gateway({"default_embedded": False, "server": server}, environ={})
    gw.providers = {"local": MemoryProvider("local", ["m"])}
    gw.catalog = Catalog(gw.providers, {})
    gw.router = Router(gw.catalog)
    return create_app(gw)


def client(admin_key: str | None, host: str = "127.0.0.1") -> TestClient:
    return TestClient(app(admin_key), base_url="http://127.0.0.1", client=(host, 40000))


def test_with_an_admin_key_the_session_cookie_is_needed() -> None:
    with client(KEY) as http:
        assert http.get("/ui").status_code == 200  # the page (with its login form) is public
        assert http.get("/ui/api/session").json() == {
            "authenticated": False,
            "login_required": True,
        }
        refused = http.get("/ui/api/requests")
        assert refused.status_code == 401
        assert refused.json()["error"]["code"] == "not_logged_in"
        wrong = http.post("/ui/api/login", json={"key": "nope"})
        assert wrong.status_code == 401 and "set-cookie" not in wrong.headers
        right = http.post("/ui/api/login", json={"key": KEY})
        assert right.status_code == 200
        cookie = right.headers["set-cookie"]
        assert cookie.startswith(f"{COOKIE}=")
        flags = {part.strip().lower() for part in cookie.split(";")[1:]}
        assert {"httponly", "samesite=strict", "path=/ui"} <= flags
        assert KEY not in cookie
        http.post("/v1/chat/completions", json=CHAT)
        log = http.get("/ui/api/requests")
        assert log.status_code == 200
        (entry,) = log.json()["data"]
        assert entry["model"] == "m" and entry["backend"] == "local/m" and entry["outcome"] == "ok"
        assert "secret prompt" not in log.text  # no content in the log
        assert http.get("/ui/api/requests?q=nothing-like-it").json()["data"] == []
        history = http.get("/ui/api/history").json()
        assert history["bucket_seconds"] == 10 and len(history["data"]) == 360
        assert sum(b["requests"] for b in history["data"]) == 1
        assert history["data"][-1]["time"] > history["data"][0]["time"]
        http.post("/ui/api/logout", json={})
        assert http.get("/ui/api/requests").status_code == 401


@pytest.mark.parametrize(
    "value",
    [
        "garbage",
        f"{int(time.time()) + 3600}.{'0' * 64}",  # a forged signature
        _sign("another-key", int(time.time()) + 3600),  # signed with another key
        _sign(KEY, int(time.time()) - 1),  # expired
    ],
)
def test_a_forged_or_expired_cookie_is_refused(value: str) -> None:
    with client(KEY) as http:
        http.cookies.set(COOKIE, value, domain="127.0.0.1", path="/ui")
        assert http.get("/ui/api/requests").status_code == 401
    with client(KEY) as http:
        http.cookies.set(COOKIE, _sign(KEY, int(time.time()) + 60), domain="127.0.0.1", path="/ui")
        assert http.get("/ui/api/requests").status_code == 200


def test_without_an_admin_key_only_loopback() -> None:
    with client(None) as http:
        assert http.get("/ui/api/session").json()["authenticated"] is True
        assert http.get("/ui/api/requests").status_code == 200
    with client(None, host="192.0.2.7") as http:
        refused = http.get("/ui/api/requests")
        assert refused.status_code == 403
        assert refused.json()["error"]["code"] == "loopback_only"
        assert http.post("/ui/api/models/local/m/load", json={}).status_code == 403


def test_a_cross_origin_login_is_refused() -> None:
    with client(KEY) as http:
        evil = http.post(
            "/ui/api/login", json={"key": KEY}, headers={"Origin": "https://evil.example"}
        )
        assert evil.status_code == 403 and "set-cookie" not in evil.headers
        form = http.post(
            "/ui/api/login",
            content=f"key={KEY}",
            headers={"Content-Type": "text/plain", "Origin": "http://127.0.0.1"},
        )
        assert form.status_code in (403, 415) and "set-cookie" not in form.headers


def test_model_actions_need_the_session() -> None:
    with client(KEY) as http:
        assert http.post("/ui/api/models/local/m/load", json={}).status_code == 401
        http.post("/ui/api/login", json={"key": KEY})
        # logged in: the action reaches the model endpoint (a memory backend loads nothing: 400)
        reached = http.post("/ui/api/models/local/m/load", json={})
        assert reached.status_code == 400 and "loads models on its own" in reached.text
        assert http.post("/ui/api/models/local/m/explode", json={}).status_code == 404
