"""The pipeline's guard stage (turnout/server/guard.py) and routing on the raw path, each attack
performed over HTTP against a running gateway and shown refused, on every route the app mounts
(enumerated from its route table); plus the memory bound of 20 concurrent 500 MB bodies per
route, and a real browser (Debian's headless Chromium) trying a cross-origin simple POST and a
DNS-rebinding read."""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from tests.support import client
from tests.support.aioserver import serve_app
from tests.support.servers import free_port, run_gateway, run_process
from turnout.server.app import routes

SEEN: list[Any] = []


def _backend() -> web.Application:
    async def models(request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": "m", "object": "model"}]})

    async def chat(request: web.Request) -> web.Response:
        SEEN.append(await request.json())
        return web.json_response(
            {
                "id": "c", "object": "chat.completion", "created": 1, "model": "m",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"},
                             "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
            }
        )  # fmt: skip

    app = web.Application()
    app.router.add_get("/v1/models", models)
    app.router.add_post("/v1/chat/completions", chat)
    return app


def _config(upstream: str, **server: Any) -> dict[str, Any]:
    return {
        "providers": {"up": {"type": "openai", "endpoint": upstream, "max_retries": 0}},
        "health": {"enabled": False},
        "embedded": False,  # the backend alone: no model loaded beside it
        "server": server,
    }


@pytest.fixture(scope="module")
def upstream() -> Iterator[str]:
    with serve_app(_backend(), "guarded-backend") as (url,):
        yield url


@pytest.fixture(scope="module")
def gateway(upstream: str) -> Iterator[str]:
    with run_gateway(_config(upstream), environ={}) as url:
        yield url


CHAT = {"model": "up/m", "messages": [{"role": "user", "content": "hi"}]}


def _concrete(path: str) -> str:
    """A request path for a route's template (``{model:path}`` -> ``up/m``)."""
    return re.sub(r"\{[^}]+\}", "x", path)


def _every_route() -> list[tuple[str, str]]:
    out = []
    for route in routes():
        for method in route.methods:
            out.append((method, _concrete(route.path)))
    return out


async def test_a_rebinding_host_is_refused_on_every_route(gateway: str) -> None:
    for method, path in _every_route():
        reply = await client.request(
            method, gateway + path, CHAT, {"Host": "rebind.attacker.test:8400"}
        )
        assert reply.status == 403, (method, path, reply.status)
        assert b"server.allowed_hosts" in reply.body, (method, path)


async def test_loopback_names_and_addresses_are_answered(gateway: str) -> None:
    port = gateway.rsplit(":", 1)[1]
    for host in (f"localhost:{port}", f"127.0.0.1:{port}", f"[::1]:{port}", "127.0.0.1"):
        reply = await client.request("GET", gateway + "/v1/models", None, {"Host": host})
        assert reply.status == 200, host


async def test_allowed_hosts_opens_a_name(upstream: str) -> None:
    with run_gateway(_config(upstream, allowed_hosts=["gw.example.com"]), environ={}) as url:
        ok = await client.request("GET", url + "/v1/models", None, {"Host": "gw.example.com"})
        assert ok.status == 200
        bad = await client.request("GET", url + "/v1/models", None, {"Host": "evil.example.com"})
        assert bad.status == 403


async def test_a_cross_origin_change_is_refused_on_every_changing_route(gateway: str) -> None:
    before = len(SEEN)
    origin = {"Origin": "https://evil.example", "Content-Type": "text/plain"}
    for method, path in _every_route():
        if method in ("GET", "HEAD"):
            continue
        reply = await client.request(method, gateway + path, CHAT, origin)
        assert reply.status == 403, (method, path, reply.status)
        assert b"server.cors_origins" in reply.body
    assert len(SEEN) == before


async def test_same_origin_and_configured_origins_pass(upstream: str) -> None:
    cfg = _config(upstream, cors_origins=["https://app.example.com"])
    with run_gateway(cfg, environ={}) as url:
        allowed = {"Origin": "https://app.example.com"}
        reply = await client.request("POST", url + "/v1/chat/completions", CHAT, allowed)
        assert reply.status == 200
        same = {"Origin": url}
        reply = await client.request("POST", url + "/v1/chat/completions", CHAT, same)
        assert reply.status == 200


@pytest.mark.parametrize(
    "kind", ["text/plain", "text/plain; charset=utf-8", "multipart/form-data; boundary=x"]
)
async def test_json_routes_take_json(gateway: str, kind: str) -> None:
    reply = await client.request(
        "POST", gateway + "/v1/chat/completions", CHAT, {"Content-Type": kind}
    )
    assert reply.status == 415
    error = reply.json()["error"]
    assert error["param"] == "Content-Type" and "application/json" in error["message"]


async def test_curl_style_form_type_without_origin_is_read_as_json(gateway: str) -> None:
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    reply = await client.request("POST", gateway + "/v1/chat/completions", CHAT, form)
    assert reply.status == 200
    reply = await client.request(
        "POST", gateway + "/v1/chat/completions", CHAT, {**form, "Origin": "https://evil.example"}
    )
    assert reply.status == 403


async def test_a_declared_oversized_body_is_refused_on_every_route_before_it_is_read(
    gateway: str,
) -> None:
    for method, path in _every_route():
        if method not in ("POST", "PUT", "PATCH"):
            continue
        reader, writer = await asyncio.open_connection("127.0.0.1", int(gateway.rsplit(":", 1)[1]))
        writer.write(
            f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {500 * 1024 * 1024}\r\n\r\n".encode()
        )
        await writer.drain()
        status = await asyncio.wait_for(reader.readline(), 10)
        assert b" 413 " in status, (method, path, status)
        writer.close()


@pytest.mark.parametrize(
    "path", ["/v1%2fchat%2fcompletions", "/v1%2Fchat%2Fcompletions", "/st%61ts", "/v1/%6dodels"]
)
async def test_percent_encoded_paths_reach_no_route(gateway: str, path: str) -> None:
    method = "POST" if "chat" in path else "GET"
    reply = await client.request(method, gateway + path, CHAT if method == "POST" else None)
    assert reply.status == 404


async def test_a_trailing_slash_redirect_names_no_host(gateway: str) -> None:
    reply = await client.request(
        "GET", gateway + "/stats/", None, {"Host": "127.0.0.1"}, follow=False
    )
    assert reply.status in (307, 308)
    assert reply.headers["Location"] == "/stats"


def _peak_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


async def _hostile_upload(port: int, method: str, path: str, chunked: bool) -> bytes:
    """Send up to 500 MB to ``path`` until the gateway answers or closes; its status line."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    length = "Transfer-Encoding: chunked" if chunked else f"Content-Length: {500 * 1024 * 1024}"
    writer.write(
        f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"{length}\r\n\r\n".encode()
    )
    block = b"[" * (256 * 1024)
    frame = f"{len(block):x}\r\n".encode() + block + b"\r\n" if chunked else block
    answer = asyncio.ensure_future(reader.readline())
    try:
        for _ in range(2000):  # 500 MB at most
            if answer.done():
                break
            writer.write(frame)
            await asyncio.wait_for(writer.drain(), 10)
        return await asyncio.wait_for(answer, 10)
    except (ConnectionError, TimeoutError):
        return await asyncio.wait_for(answer, 10) if not answer.cancelled() else b""
    finally:
        writer.close()


@pytest.mark.slow
async def test_concurrent_huge_bodies_leave_memory_bounded(upstream: str, tmp_path: Path) -> None:
    """20 concurrent 500 MB bodies to every route (declared and chunked): peak RSS of the gateway
    process stays under 300 MB."""
    import yaml

    port = free_port()
    cfg = tmp_path / "turnout.yaml"
    cfg.write_text(yaml.safe_dump(_config(upstream)))
    cmd = [sys.executable, "-m", "turnout", "serve", "--config", str(cfg), "--port", str(port)]
    with run_process(cmd, f"http://127.0.0.1:{port}/health") as proc:
        for method, path in _every_route():
            statuses = await asyncio.gather(
                *(_hostile_upload(port, method, path, chunked=i % 2 == 1) for i in range(20)),
                return_exceptions=True,
            )
            assert not any(isinstance(s, BaseException) for s in statuses), (path, statuses)
        peak = _peak_rss_kib(proc.pid) / 1024
        assert peak < 300, f"peak RSS {peak:.0f} MB"
        healthy = await client.get(f"http://127.0.0.1:{port}/health")
        assert healthy.status == 200


# --- a real browser ----------------------------------------------------------------------------

CHROMIUM = shutil.which("chromium")


def _chromium(url: str, *flags: str) -> str:
    """The DOM headless Chromium ends with after loading ``url`` (scripts run)."""
    assert CHROMIUM is not None, "Debian's chromium package is installed by the test command"
    cmd = [
        CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=8000",
        *flags, "--dump-dom", url,
    ]  # fmt: skip
    return subprocess.run(cmd, capture_output=True, text=True, timeout=90).stdout


ATTACK = """<html><body><script>
const body = JSON.stringify(
  {{model: "up/m", messages: [{{role: "user", content: "from a page"}}]}});
const post = (url) => fetch(url, {{method: "POST", mode: "no-cors",
  headers: {{"Content-Type": "text/plain"}}, body: body}});
Promise.allSettled([post("{target}/v1/chat/completions"), post("{recorder}/v1/chat/completions")])
  .then((r) => {{ document.body.textContent = "done " + r.map((x) => x.status).join(","); }});
</script></body></html>"""


@pytest.mark.slow
async def test_a_web_page_cannot_make_the_browser_post_to_the_gateway(
    gateway: str, upstream: str
) -> None:
    """The page (another origin) sends a "simple" text/plain POST, which needs no preflight, both
    to the gateway and to a plain recorder: the recorder shows the browser did send it; the
    backend behind the gateway shows it got nothing."""
    recorded: list[Any] = []

    async def record(request: web.Request) -> web.Response:
        recorded.append(await request.text())
        return web.Response(text="ok")

    async def page(request: web.Request) -> web.Response:
        html = ATTACK.format(target=gateway, recorder=recorder_url)
        return web.Response(text=html, content_type="text/html")

    recorder = web.Application()
    recorder.router.add_post("/v1/chat/completions", record)
    attacker = web.Application()
    attacker.router.add_get("/", page)
    with (
        serve_app(recorder, "recorder") as (recorder_url,),
        serve_app(attacker, "attacker") as (page_url,),
    ):
        before = len(SEEN)
        dom = _chromium(page_url.replace("127.0.0.1", "localhost"))  # another origin
        assert "done" in dom, dom
        assert recorded and "from a page" in recorded[0], "the browser sent the simple POST"
        assert len(SEEN) == before, "the cross-origin POST reached the backend"


@pytest.mark.slow
async def test_a_rebinding_page_cannot_read_the_gateway(gateway: str) -> None:
    """A name the attacker controls, resolved to this machine (as DNS rebinding does): the
    browser asks with that name as Host and reads a refusal, not the gateway's models."""
    port = gateway.rsplit(":", 1)[1]
    rule = "--host-resolver-rules=MAP rebind.attacker.test 127.0.0.1"
    dom = _chromium(f"http://rebind.attacker.test:{port}/v1/models", rule)
    assert "server.allowed_hosts" in dom and "up/m" not in dom
    control = _chromium(f"http://127.0.0.1:{port}/v1/models")
    assert "up/m" in control  # the same read from the gateway's own address works
