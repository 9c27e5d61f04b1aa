"""Discovery: each runtime named by its signature endpoints (against the documented-format fakes),
closed and silent ports passed over quickly, and ``discovery: true`` registering what it finds
with the gateway at start-up and again when it looks later."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

import pytest
import yaml
from aiohttp import web
from typer.testing import CliRunner

from tests.fakes.gpt4all import run_fake_gpt4all
from tests.fakes.kobold import run_fake_kobold
from tests.fakes.ollama import run_fake_ollama
from tests.fakes.openai_runtimes import PROFILES, run_fake_runtime, serve_app
from tests.support.servers import free_port, run_silent_server
from turnout.cli import app
from turnout.config import load_config
from turnout.gateway import Gateway
from turnout.providers import PROVIDER_TYPES
from turnout.providers.discovery import (
    DEFAULT_PORTS,
    SIGNATURES,
    TURNOUT,
    Found,
    discover,
    parse_target,
)
from turnout.providers.presets import DIALECT_PORTS, DIALECT_SIGNATURES, PRESETS

#: fake -> (provider type, label, models) discovery must report
EXPECTED = {
    "vllm": ("vllm", "vLLM", ("fake-model",)),
    "localai": ("localai", "LocalAI", ("fake-model",)),
    "lmstudio": ("lmstudio", "LM Studio", ("fake-model",)),
    "jan": ("jan", "Jan", ()),  # its model list needs the key
    "tabbyapi": ("tabbyapi", "TabbyAPI", ("fake-model",)),
    "mlx": ("mlx", "MLX (mlx_lm.server)", ("fake-model",)),
    "mistralrs": ("mistralrs", "mistral.rs", ("fake-model",)),
    "fastchat": ("fastchat", "FastChat", ("fake-model",)),
    "textgen": ("textgen", "text-generation-webui", ("fake-model",)),
    "koboldcpp-openai": ("kobold", "KoboldCpp", ()),  # the native dialect is preferred
    "gpt4all": ("gpt4all", "GPT4All", ("Llama 3.2 3B Instruct", "Reasoner v1")),
    "kobold": ("kobold", "KoboldCpp", ("koboldcpp/Llama-3.2-1B-Instruct",)),
    "koboldai": ("koboldai", "KoboldAI", ("koboldcpp/Llama-3.2-1B-Instruct",)),
    "ollama": ("ollama", "Ollama", ("llama3.2:latest", "llava:7b", "all-minilm:latest")),
}


@contextlib.contextmanager
def serve(name: str) -> Iterator[str]:
    if name in PROFILES:
        with run_fake_runtime(name) as fake:
            yield fake.url
    elif name == "gpt4all":
        with run_fake_gpt4all() as g4a:
            yield g4a.url
    elif name in ("kobold", "koboldai"):
        with run_fake_kobold(original=name == "koboldai") as kobold:
            yield kobold.url
    else:
        with run_fake_ollama() as ollama:
            yield ollama.url


@pytest.mark.parametrize("name", sorted(EXPECTED))
async def test_each_runtime_is_named_by_its_signature(name: str) -> None:
    with serve(name) as url:
        found = await discover([url])
    runtime, label, models = EXPECTED[name]
    port = int(url.rsplit(":", 1)[1])
    assert [(f.runtime, f.label, f.models, f.port) for f in found] == [
        (runtime, label, models, port)
    ]
    assert found[0].endpoint == url


async def test_many_at_once_each_named() -> None:
    with serve("vllm") as a, serve("gpt4all") as b, serve("ollama") as c:
        ports = [int(u.rsplit(":", 1)[1]) for u in (a, b, c)]
        found = await discover(["localhost"], ports)
    assert sorted(f.runtime for f in found) == ["gpt4all", "ollama", "vllm"]
    assert {f.host for f in found} == {"127.0.0.1"}  # localhost is probed as 127.0.0.1


async def test_closed_and_silent_ports_are_passed_over() -> None:
    closed = free_port()
    with run_silent_server() as silent:
        start = time.monotonic()
        found = await discover([f"127.0.0.1:{closed}", silent], timeout=0.3)
        took = time.monotonic() - start
    assert found == []
    assert took < 5, took  # bounded by the probe timeout, not hanging on the silent server


async def test_a_plain_web_server_is_not_a_runtime() -> None:
    async def page(request: web.Request) -> web.Response:
        return web.Response(text="<html><body>hello</body></html>", content_type="text/html")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", page)
    with serve_app(app) as url:
        assert await discover([url]) == []


def test_default_ports_cover_every_preset_and_dialect() -> None:
    local = {p.port for p in PRESETS.values() if p.endpoint is None}
    assert local | set(DIALECT_PORTS.values()) <= set(DEFAULT_PORTS)
    # runtimes.md's defaults where source document 002 differs
    assert {1234, 8000, 9931, 5000} <= set(DEFAULT_PORTS)


def test_signatures_are_the_presets_and_dialects_declarations_in_rank_order() -> None:
    ranks = [sig.rank for _, sig in SIGNATURES]
    assert ranks == sorted(ranks) and len(set(ranks)) == len(ranks)
    declared = {n for n, p in PRESETS.items() if p.signature is not None} | set(DIALECT_SIGNATURES)
    assert {name for name, _ in SIGNATURES} == declared | {TURNOUT}  # and turnout's own
    assert declared <= set(PROVIDER_TYPES)
    # every fake above is named, and nothing is named that has no signature
    assert {runtime for runtime, _, _ in EXPECTED.values()} <= declared
    assert PRESETS["openai-cloud"].signature is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("localhost", ("127.0.0.1", None)),
        ("gpu-box:8000", ("gpu-box", 8000)),
        ("http://10.0.0.2:5001/", ("10.0.0.2", 5001)),
        ("[::1]:8080", ("::1", 8080)),
        ("::1", ("::1", None)),
    ],
)
def test_parse_target(text: str, expected: tuple[str, int | None]) -> None:
    assert parse_target(text) == expected


def test_endpoint_of_an_ipv6_host() -> None:
    assert Found("::1", 8080, "llamacpp", "llama.cpp server").endpoint == "http://[::1]:8080"


def test_discovery_setting() -> None:
    assert load_config({"discovery": True}).discovery.enabled is True
    assert load_config({}).discovery.enabled is False
    settings = load_config({"discovery": {"enabled": True, "hosts": ["box"], "ports": [8080]}})
    assert (settings.discovery.hosts, settings.discovery.ports) == (["box"], [8080])


# --- registering with the gateway -----------------------------------------------------------------


async def test_gateway_registers_what_it_finds_at_start_up() -> None:
    with serve("vllm") as vllm, serve("gpt4all") as g4a:
        config = {
            "providers": {"mine": {"type": "vllm", "endpoint": vllm}},  # configured: not twice
            "discovery": {"enabled": True, "hosts": [vllm, g4a], "timeout": 0.5},
            "embedded": False,
            "health": {"enabled": False},
        }
        async with Gateway(config, environ={}) as gw:
            assert list(gw.providers) == ["mine", "gpt4all"]
            assert gw.discovery is not None and set(gw.discovery.found) == {"gpt4all"}
            reply = await gw.chat(
                "gpt4all/Llama 3.2 3B Instruct", [{"role": "user", "content": "Hi"}]
            )
    assert reply["choices"][0]["message"]["content"] == "You said: Hi"


async def test_gateway_looks_again_and_never_reprobes_what_it_knows() -> None:
    port = free_port()
    with serve("mlx") as mlx:
        config = {
            "discovery": {
                "enabled": True,
                "hosts": [mlx, f"127.0.0.1:{port}"],
                "interval_seconds": 60,
            },
            "default_embedded": False,
            "health": {"enabled": False},
        }
        async with Gateway(config, environ={}) as gw:
            assert gw.discovery is not None
            assert list(gw.providers) == ["mlx"]
            with run_fake_runtime("mlx", ("other-model",), port=port) as late:
                assert await gw.discovery.check() == [f"mlx-{port}"]  # the name is taken
                assert await gw.discovery.check() == []
                assert [r.path for r in late.requests].count("/v1/models") == 2  # probe + catalog
            ids = [m["id"] for m in await gw.models()]
    assert "mlx/fake-model" in ids and f"mlx-{port}/other-model" in ids


# --- the command --------------------------------------------------------------------------------


def test_discover_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "200")
    runner = CliRunner()
    with serve("gpt4all") as g4a, serve("vllm") as vllm:
        table = runner.invoke(app, ["discover", g4a, vllm])
        snippet = runner.invoke(app, ["discover", g4a, "--yaml"])
    assert table.exit_code == 0, table.output
    row = next(line for line in table.output.splitlines() if g4a in line)
    assert "GPT4All" in row and "gpt4all" in row and "Llama 3.2 3B Instruct" in row
    assert any(vllm in line and "vLLM" in line for line in table.output.splitlines())
    assert snippet.exit_code == 0
    assert yaml.safe_load(snippet.output) == {
        "providers": {"gpt4all": {"type": "gpt4all", "endpoint": g4a}}
    }
    nothing = runner.invoke(app, ["discover", f"127.0.0.1:{free_port()}"])
    assert nothing.exit_code == 1
    assert "no runtime answers on 127.0.0.1" in nothing.output
