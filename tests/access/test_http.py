"""Gateway keys over HTTP, end to end: a real uvicorn gateway on loopback in front of a fake
OpenAI-compatible backend, keys made the way `turnout keys create` makes them (straight in the
database), clients from OpenAI's SDK and plain HTTP."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest

from tests.fakes.timed import Paced, run_paced
from tests.support.servers import run_gateway
from turnout.access.auth import AuthenticationError
from turnout.gateway import Gateway
from turnout.server import create_app
from turnout.store import open_store
from turnout.store.keyring import create_key, revoke_key


def gateway_config(tmp_path: Path, url: str, **extra: Any) -> dict[str, Any]:
    return {
        "providers": {
            "fake": {
                "type": "openai",
                "endpoint": url,
                "models": ["paced", "other"],
                "cost_per_1k_input": 1.0,
                "cost_per_1k_output": 2.0,
                **extra.pop("provider", {}),
            }
        },
        "health": {"enabled": False},
        "storage": {
            "database_url": f"sqlite:///{tmp_path / 'turnout.db'}",
            "spool_path": str(tmp_path / "spool.jsonl"),
        },
        **extra,
    }


async def make_key(url: str, name: str, **limits: Any) -> str:
    store = open_store(url)
    await store.open()
    try:
        raw, _ = await create_key(store, name, **limits)
    finally:
        await store.close()
    return raw


@pytest.fixture
def paced() -> Iterator[Paced]:
    with run_paced() as fake:
        yield fake


#: the dashboard's answers to anyone: its page, whether one is logged in, logging out
DASHBOARD_PUBLIC = ("/ui", "/ui/api/session", "/ui/api/logout")


def every_route(gateway: Gateway) -> list[tuple[str, str, Any]]:
    """(method, path, the route's error dialect) of every route the app mounts, path
    parameters filled in."""
    app = create_app(gateway, access=False)
    out = []
    for route in app.routes:
        path = re.sub(r"\{[^}]+\}", "x", route.path)
        for method in sorted(set(route.methods) - {"HEAD"}):
            out.append((method, path, route.errors))
    return out


def message_of(body: Any) -> str:
    """The message of an error body in any front's dialect."""
    error = body["error"]
    return error if isinstance(error, str) else error["message"]


async def wait_for(check: Any, timeout: float = 2.0) -> float:
    started = time.monotonic()
    while not await check():
        assert time.monotonic() - started < timeout, "not within the time allowed"
        await asyncio.sleep(0.02)
    return time.monotonic() - started


async def test_every_route_needs_a_key_once_one_exists(tmp_path: Path, paced: Paced) -> None:
    cfg = gateway_config(tmp_path, paced.url)
    routes = every_route(Gateway(cfg, environ={}))
    paths = {(method, path) for method, path, _ in routes}
    assert ("POST", "/v1/chat/completions") in paths and ("GET", "/v1/keys") in paths
    chat = {"model": "paced", "messages": [{"role": "user", "content": "hi"}]}
    with run_gateway(cfg) as base:
        async with aiohttp.ClientSession() as http:
            async with http.post(f"{base}/v1/chat/completions", json=chat) as resp:
                assert resp.status == 200  # no key yet: open on loopback, as before
            raw = await make_key(cfg["storage"]["database_url"], "ci")

            async def closed() -> bool:
                async with http.post(f"{base}/v1/chat/completions", json=chat) as resp:
                    return resp.status == 401

            assert await wait_for(closed) < 1.0
            wrong = "gw_" + "A" * 32
            for method, path, errors in routes:
                for headers in ({}, {"Authorization": f"Bearer {wrong}"}, {"X-API-Key": "nope"}):
                    async with http.request(method, base + path, headers=headers, json={}) as r:
                        text = await r.text()
                        if path == "/health":
                            assert r.status == 200
                            continue
                        if path == "/ui" or path.startswith("/ui/"):
                            # the dashboard checks its own login (turnout/server/ui/session.py);
                            # with keys in use and no server.admin_key: the page and why, no more
                            if r.status == 200:
                                assert path in DASHBOARD_PUBLIC, (method, path, text)
                                assert '"authenticated":true' not in text, (path, text)
                            else:
                                assert r.status in (403, 404), (method, path, r.status, text)
                            continue
                        assert r.status == 401, (method, path, r.status, text)
                        assert wrong not in text and "AAAAAAAAAAAAAAAAAAAA" not in text
                        body = await r.json()
                        # in the route's own dialect: the shape its front gives any error
                        dialect = errors.body(AuthenticationError("m"))
                        assert set(body) == set(dialect), (path, body)
                        assert "gateway key" in message_of(body)
                        assert r.headers["WWW-Authenticate"].startswith("Bearer")
            for header in ("Authorization", "X-API-Key", "x-api-key"):
                value = f"Bearer {raw}" if header == "Authorization" else raw
                async with http.post(
                    f"{base}/v1/chat/completions", json=chat, headers={header: value}
                ) as resp:
                    assert resp.status == 200, await resp.text()
        client = openai.AsyncOpenAI(base_url=f"{base}/v1", api_key=wrong, max_retries=0)
        with pytest.raises(openai.AuthenticationError) as caught:
            await client.models.list()
        assert wrong not in str(caught.value)
        await client.close()


async def test_scope_admin_routes_and_revocation(tmp_path: Path, paced: Paced) -> None:
    cfg = gateway_config(tmp_path, paced.url)
    db = cfg["storage"]["database_url"]
    scoped = await make_key(db, "scoped", models=["paced"])
    admin = await make_key(db, "root", admin=True)
    with run_gateway(cfg) as base:
        client = openai.AsyncOpenAI(base_url=f"{base}/v1", api_key=scoped, max_retries=0)
        reply = await client.chat.completions.create(
            model="paced", messages=[{"role": "user", "content": "hi"}]
        )
        assert reply.choices[0].message.content
        with pytest.raises(openai.PermissionDeniedError) as denied:
            await client.chat.completions.create(
                model="other", messages=[{"role": "user", "content": "hi"}]
            )
        assert "'other'" in str(denied.value) and "'scoped'" in str(denied.value)
        async with aiohttp.ClientSession() as http:
            as_user = {"Authorization": f"Bearer {scoped}"}
            as_admin = {"Authorization": f"Bearer {admin}"}
            async with http.get(f"{base}/v1/keys", headers=as_user) as resp:
                assert resp.status == 403 and "admin key" in await resp.text()
            async with http.post(f"{base}/v1/models/x/load", headers=as_user) as resp:
                assert resp.status == 403
            async with http.post(
                f"{base}/v1/keys", headers=as_admin, json={"name": "made", "rpm": 5}
            ) as resp:
                assert resp.status == 201
                made = await resp.json()
            assert made["key"].startswith("gw_") and made["prefix"] == made["key"][:11]
            async with http.get(f"{base}/v1/keys", headers=as_admin) as resp:
                listed = await resp.text()
            assert {"scoped", "root", "made"} <= {k["name"] for k in (await resp.json())["data"]}
            for secret in (scoped, admin, made["key"]):
                assert secret not in listed
            async with http.get(f"{base}/v1/usage", headers=as_user) as resp:
                mine = (await resp.json())["data"]
            assert [row["key"] for row in mine] == ["scoped"]
            assert mine[0]["requests"] == 2 and mine[0]["errors"] == 1
            store = open_store(db)
            await store.open()
            await revoke_key(store, "scoped")
            await store.close()

            async def revoked() -> bool:
                async with http.get(f"{base}/v1/models", headers=as_user) as resp:
                    return resp.status == 401

            assert await wait_for(revoked) < 1.0
        await client.close()


async def test_limits_answer_429_with_openais_headers(tmp_path: Path, paced: Paced) -> None:
    cfg = gateway_config(tmp_path, paced.url)
    raw = await make_key(cfg["storage"]["database_url"], "small", rpm=3, tpm=100_000)
    chat = {"model": "paced", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}
    with run_gateway(cfg) as base:
        async with aiohttp.ClientSession(headers={"X-API-Key": raw}) as http:
            statuses = []
            for _ in range(5):
                async with http.post(f"{base}/v1/chat/completions", json=chat) as resp:
                    statuses.append(resp.status)
                    headers = resp.headers
                    for own in ("x-request-id", "x-ratelimit-limit-requests"):
                        assert len(headers.getall(own)) == 1, own  # written once, either way
                    if resp.status == 200:
                        assert headers["x-ratelimit-limit-requests"] == "3"
                        assert headers["x-ratelimit-limit-tokens"] == "100000"
                        assert int(headers["x-ratelimit-remaining-tokens"]) < 100_000
                    else:
                        body = await resp.json()
            assert statuses == [200, 200, 200, 429, 429]
            assert 1 <= int(headers["Retry-After"]) <= 60
            assert headers["x-ratelimit-remaining-requests"] == "0"
            assert body["error"]["type"] == "rate_limit_error"
            assert "'small'" in body["error"]["message"]


async def test_a_budget_is_a_soft_cap(tmp_path: Path, paced: Paced) -> None:
    cfg = gateway_config(tmp_path, paced.url)
    # 7 tokens in at 1.0 per 1k, 5 out at 2.0 per 1k: 0.017 per request
    raw = await make_key(cfg["storage"]["database_url"], "spender", budget=0.03)
    chat = {"model": "paced", "messages": [{"role": "user", "content": "hi"}]}
    with run_gateway(cfg) as base:
        async with aiohttp.ClientSession(headers={"X-API-Key": raw}) as http:
            statuses = []
            for _ in range(4):
                async with http.post(f"{base}/v1/chat/completions", json=chat) as resp:
                    statuses.append(resp.status)
                    body = await resp.json()
                await asyncio.sleep(0.7)  # spend settles with telemetry's drain (0.5 s)
            assert statuses == [200, 200, 429, 429]  # the second crossed the budget: completed
            assert body["error"]["code"] == "budget_exceeded"


async def test_a_public_address_without_keys_refuses_to_start(tmp_path: Path) -> None:
    import subprocess
    import sys

    from tests.access.instances import run_instance

    db = f"sqlite:///{tmp_path / 'x.db'}"
    env_cfg = tmp_path / "turnout.yaml"
    env_cfg.write_text(f"storage:\n  database_url: {db}\ndefault_embedded: false\n")
    done = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "turnout", "serve", "-c", str(env_cfg), "--host", "0.0.0.0",
         "--port", "1"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode != 0
    assert "without authentication" in done.stderr and "--allow-unauthenticated" in done.stderr
    assert "turnout keys create" in done.stderr  # what to do
    await make_key(db, "first")  # with a key, the same address serves (and asks for it)
    with run_instance(env_cfg, "--host", "0.0.0.0") as gateway:
        async with aiohttp.ClientSession() as http, http.get(f"{gateway.url}/v1/models") as resp:
            assert resp.status == 401


async def test_cors_and_end_user_limits(tmp_path: Path, paced: Paced) -> None:
    cfg = gateway_config(
        tmp_path,
        paced.url,
        server={"cors_origins": ["https://app.example"]},
        limits={"user_rpm": 1},
    )
    raw = await make_key(cfg["storage"]["database_url"], "web")
    chat = {"model": "paced", "messages": [{"role": "user", "content": "hi"}]}
    with run_gateway(cfg) as base:
        async with aiohttp.ClientSession() as http:
            preflight = {
                "Origin": "https://app.example",
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "authorization, content-type",
            }
            async with http.options(f"{base}/v1/chat/completions", headers=preflight) as r:
                assert r.status == 204  # answered without a key, as browsers send none
                assert r.headers["Access-Control-Allow-Origin"] == "https://app.example"
                assert r.headers["Access-Control-Allow-Credentials"] == "true"
            other = {**preflight, "Origin": "https://evil.example"}
            async with http.options(f"{base}/v1/chat/completions", headers=other) as r:
                assert r.status == 403 and "Access-Control-Allow-Origin" not in r.headers
            headers = {"X-API-Key": raw, "Origin": "https://app.example"}
            statuses = []
            for user in ("ann", "bob", "ann"):
                async with http.post(
                    f"{base}/v1/chat/completions",
                    json={**chat, "user": user},
                    headers=headers,
                ) as r:
                    statuses.append(r.status)
                    assert r.headers["Access-Control-Allow-Origin"] == "https://app.example"
                    text = await r.text()
            assert statuses == [200, 200, 429]
            assert "user 'ann' on chat" in text
            async with http.post(
                f"{base}/v1/chat/completions",
                json=chat,
                headers={**headers, "X-Turnout-User": "cid"},
            ) as r:
                assert r.status == 200


async def test_the_official_clients_of_every_front_send_their_key(
    tmp_path: Path, paced: Paced
) -> None:
    import anthropic
    import ollama

    cfg = gateway_config(tmp_path, paced.url)
    raw = await make_key(cfg["storage"]["database_url"], "clients", models=["paced"])
    with run_gateway(cfg) as base:
        claude = anthropic.AsyncAnthropic(base_url=base, api_key=raw, max_retries=0)
        reply = await claude.messages.create(
            model="paced", max_tokens=8, messages=[{"role": "user", "content": "hi"}]
        )
        assert reply.content and reply.content[0].type == "text"
        with pytest.raises(anthropic.PermissionDeniedError, match="'clients'"):
            await claude.messages.create(
                model="other", max_tokens=8, messages=[{"role": "user", "content": "hi"}]
            )
        wrong = anthropic.AsyncAnthropic(base_url=base, api_key="gw_" + "B" * 32, max_retries=0)
        with pytest.raises(anthropic.AuthenticationError):
            await wrong.messages.create(
                model="paced", max_tokens=8, messages=[{"role": "user", "content": "hi"}]
            )
        client = ollama.AsyncClient(host=base, headers={"Authorization": f"Bearer {raw}"})
        answer = await client.chat(model="paced", messages=[{"role": "user", "content": "hi"}])
        assert answer.message.content
        with pytest.raises(ollama.ResponseError) as refused:
            await ollama.AsyncClient(host=base).chat(
                model="paced", messages=[{"role": "user", "content": "hi"}]
            )
        assert refused.value.status_code == 401 and "gateway key" in refused.value.error
