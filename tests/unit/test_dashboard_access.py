"""Who may use the dashboard (/ui): the admin key's session cookie when a key is set, loopback
otherwise (and only while no gateway keys are in use); the cookie's flags, tampering and expiry;
cross-origin logins refused by the guard; the request log keeps no content; the Keys page's
routes create, rotate and revoke keys (on a real SQLite store) for a logged-in person only, show
a new key once and list prefixes only."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from tests.unit.test_server import MemoryProvider
from turnout.gateway import Gateway
from turnout.routing import Catalog, Router
from turnout.server import create_app
from turnout.server.ui.session import COOKIE, sign as _sign

KEY = "admin-key-for-the-dashboard-0123"
CHAT = {"model": "m", "messages": [{"role": "user", "content": "a secret prompt"}]}


def app(admin_key: str | None, database: Path | None = None) -> Any:
    server = {"admin_key": admin_key} if admin_key else {}
    config: dict[str, Any] = {"default_embedded": False, "server": server}
    if database is not None:  # a store of its own: keys made here bind no other test
        config["storage"] = {"database_url": f"sqlite:///{database}"}
    gw = Gateway(config, environ={})
    gw.providers = {"local": MemoryProvider("local", ["m"])}
    gw.catalog = Catalog(gw.providers, {})
    gw.router = Router(gw.catalog)
    return create_app(gw)


def client(
    admin_key: str | None, host: str = "127.0.0.1", database: Path | None = None
) -> TestClient:
    return TestClient(app(admin_key, database), base_url="http://127.0.0.1", client=(host, 40000))


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
        assert {"httponly", "samesite=strict", "path=/"} <= flags
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
        http.cookies.set(COOKIE, value, domain="127.0.0.1", path="/")
        assert http.get("/ui/api/requests").status_code == 401
    with client(KEY) as http:
        http.cookies.set(COOKIE, _sign(KEY, int(time.time()) + 60), domain="127.0.0.1", path="/")
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


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_the_keys_page_creates_rotates_and_revokes_keys(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    with client(KEY, database=tmp_path / "keys.db") as http:
        assert http.get("/ui/api/keys").status_code == 401  # not logged in
        assert http.post("/ui/api/keys", json={"name": "x"}).status_code == 401
        assert http.delete("/ui/api/keys/x").status_code == 401
        assert http.post("/ui/api/keys/x/rotate", json={}).status_code == 401
        http.post("/ui/api/login", json={"key": KEY})
        assert http.get("/ui/api/keys").json()["data"] == []
        made = http.post("/ui/api/keys", json={"name": "team-a", "models": ["m"], "rpm": 50})
        assert made.status_code == 201 and made.headers["cache-control"] == "no-store"
        raw = made.json()["key"]
        assert raw.startswith("gw_") and made.json()["prefix"] == raw[:11]
        # keys are in use now: a request without one is refused (the logged-in browser's
        # session counts as the admin key: test_a_session_reads_the_api_with_keys_in_use)
        assert http.get("/v1/models", headers={"Cookie": "other=1"}).status_code == 401
        assert http.get("/v1/models", headers=bearer(raw)).status_code == 200
        assert http.post("/v1/chat/completions", json=CHAT, headers=bearer(raw)).status_code == 200
        listed = http.get("/ui/api/keys")
        assert listed.status_code == 200 and raw not in listed.text
        (entry,) = listed.json()["data"]
        assert (entry["name"], entry["prefix"], entry["state"]) == ("team-a", raw[:11], "active")
        assert entry["models"] == ["m"] and entry["rpm"] == 50
        usage = http.get("/ui/api/usage?by=key&since=7d").json()  # the chat, in the ledger
        assert [(u["key"], u["requests"]) for u in usage["data"]] == [("team-a", 1)]
        # refused: a name in use, a bad name, an unknown key
        assert http.post("/ui/api/keys", json={"name": "team-a"}).status_code == 400
        assert http.post("/ui/api/keys", json={"name": "no spaces"}).status_code == 400
        assert http.delete("/ui/api/keys/nobody").status_code == 404
        assert http.post("/ui/api/keys/nobody/rotate", json={}).status_code == 404
        # rotate: both secrets work during the grace period
        rotated = http.post("/ui/api/keys/team-a/rotate", json={"grace": "1h"})
        assert rotated.status_code == 200 and rotated.headers["cache-control"] == "no-store"
        new = rotated.json()["key"]
        assert new != raw and rotated.json()["previous_valid_until"] > time.time() + 3500
        assert http.get("/v1/models", headers=bearer(raw)).status_code == 200
        assert http.get("/v1/models", headers=bearer(new)).status_code == 200
        assert new not in http.get("/ui/api/keys").text
        # revoke: neither works, at once
        assert http.delete("/ui/api/keys/team-a").json() == {"name": "team-a", "revoked": True}
        assert http.get("/v1/models", headers=bearer(raw)).status_code == 401
        assert http.get("/v1/models", headers=bearer(new)).status_code == 401
        assert http.get("/ui/api/keys").json()["data"][0]["state"] == "revoked"
        http.post("/ui/api/logout", json={})
        assert http.get("/ui/api/keys").status_code == 401
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "team-a" in logged and raw not in logged and new not in logged


def test_key_changes_are_refused_from_another_origin_or_as_a_form(tmp_path: Path) -> None:
    with client(KEY, database=tmp_path / "keys.db") as http:
        http.post("/ui/api/login", json={"key": KEY})
        evil = {"Origin": "https://evil.example"}
        assert http.post("/ui/api/keys", json={"name": "e"}, headers=evil).status_code == 403
        form = http.post(
            "/ui/api/keys",
            content="name=e",
            headers={"Content-Type": "text/plain", "Origin": "http://127.0.0.1"},
        )
        assert form.status_code in (403, 415)
        assert http.get("/ui/api/keys").json()["data"] == []
        raw = http.post("/ui/api/keys", json={"name": "kept"}).json()["key"]
        assert http.delete("/ui/api/keys/kept", headers=evil).status_code == 403
        assert http.post("/ui/api/keys/kept/rotate", json={}, headers=evil).status_code == 403
        assert http.get("/v1/models", headers=bearer(raw)).status_code == 200


def test_without_an_admin_key_the_dashboard_stops_once_keys_are_in_use(tmp_path: Path) -> None:
    with client(None, database=tmp_path / "keys.db") as http:
        raw = http.post("/ui/api/keys", json={"name": "first"}).json()["key"]  # loopback, no keys
        refused = http.get("/ui/api/keys")
        assert refused.status_code == 403
        assert refused.json()["error"]["code"] == "admin_key_needed"
        assert http.get("/ui/api/requests").status_code == 403
        session = http.get("/ui/api/session").json()
        assert session["authenticated"] is False and "server.admin_key" in session["message"]
        assert http.get("/ui").status_code == 200  # the page says why
        assert http.get("/v1/models", headers=bearer(raw)).status_code == 200


def test_a_session_reads_the_api_with_keys_in_use(tmp_path: Path) -> None:
    """With gateway keys in use, the pages' own reads (/stats, /v1/providers, /v1/models), the
    playground's chats and the model actions work for a browser logged in with the admin key;
    without the cookie, with a forged one or from another origin they are refused."""
    with client(KEY, database=tmp_path / "keys.db") as http:
        http.post("/ui/api/login", json={"key": KEY})
        raw = http.post("/ui/api/keys", json={"name": "team-a"}).json()["key"]
        for path in ("/stats", "/v1/providers", "/v1/models"):
            assert http.get(path).status_code == 200, path
        chat = http.post("/v1/chat/completions", json=CHAT)
        assert chat.status_code == 200, chat.text
        usage = http.get("/ui/api/usage?by=key&since=7d").json()["data"]
        assert ("admin", 1) in [(u["key"], u["requests"]) for u in usage]
        loaded = http.post("/v1/models/local/m/load", json={})  # an admin route, reached
        assert loaded.status_code == 400 and "loads models on its own" in loaded.text
        evil = {"Origin": "https://evil.example"}
        assert http.post("/v1/chat/completions", json=CHAT, headers=evil).status_code == 403
        wrong = bearer("gw_" + "x" * 40)  # a key shown and wrong stays wrong, session or not
        assert http.get("/v1/models", headers=wrong).status_code == 401
        assert http.post("/v1/models/local/m/load", json={}, headers=wrong).status_code == 401
        http.cookies.clear()
        for path in ("/stats", "/v1/providers", "/v1/models"):
            assert http.get(path).status_code == 401, path
        http.cookies.set(COOKIE, f"{int(time.time()) + 60}.{'0' * 64}", domain="127.0.0.1")
        assert http.get("/stats").status_code == 401
        assert http.post("/v1/models/local/m/load", json={}).status_code == 401
        assert http.get("/v1/models", headers=bearer(raw)).status_code == 200
