"""``/api/copy``, ``/api/create`` and ``/api/push`` on the Ollama front, with Ollama's official
Python client (``ollama``) unchanged, against turnout over real HTTP: mapped to an Ollama backend
(the fake of tests/fakes/ollama.py, which follows Ollama's documented API: Ollama cannot run
here) and to turnout's models directory (GGUF files written by the ``gguf`` package's writer),
and refused in Ollama's error shape (``ollama.ResponseError`` with the status) for every other
backend: an OpenAI-compatible runtime and the Anthropic cloud (their fakes).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import ollama
import orjson
import pytest

from tests.fakes.anthropic import FakeAnthropic, run_fake_anthropic
from tests.fakes.ollama import FakeOllama, run_fake_ollama
from tests.fakes.openai_runtimes import FakeRuntime, run_fake_runtime
from tests.support.servers import run_gateway
from tests.unit.test_models_directory import write_gguf

CLAUDE = "claude/claude-sonnet-4-5-20250929"
KEY = "adm-51c0ffee"

Fakes = tuple[FakeOllama, FakeAnthropic, FakeRuntime]


@pytest.fixture(scope="module")
def fakes() -> Iterator[Fakes]:
    with (
        run_fake_ollama() as fake_ollama,
        run_fake_anthropic() as fake_claude,
        run_fake_runtime("vllm") as fake_vllm,
    ):
        yield fake_ollama, fake_claude, fake_vllm


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("models")
    write_gguf(folder / "tiny.gguf")
    return folder


def _config(fakes: Fakes, models: Path, **server: Any) -> dict[str, Any]:
    fake_ollama, fake_claude, fake_vllm = fakes
    return {
        "providers": {
            "ollama": {"type": "ollama", "endpoint": fake_ollama.url, "max_retries": 0},
            "claude": {"type": "anthropic", "endpoint": fake_claude.url, "max_retries": 0,
                       "api_key": fake_claude.api_key},
            "vllm": {"type": "vllm", "endpoint": fake_vllm.url, "max_retries": 0},
            "local": {"type": "embedded", "models_dir": str(models)},
        },
        "server": server,
    }  # fmt: skip


@pytest.fixture(scope="module")
def url(fakes: Fakes, models: Path) -> Iterator[str]:
    with run_gateway(_config(fakes, models)) as base:
        yield base


@pytest.fixture(autouse=True)
def _pull_enabled(monkeypatch: pytest.MonkeyPatch, fakes: Fakes) -> Iterator[None]:
    monkeypatch.setenv("LOCAL_LLM_ENABLE_PULL", "true")
    fakes[0].reset()
    yield
    fakes[0].reset()


def client(url: str, **kw: Any) -> ollama.Client:
    return ollama.Client(host=url, timeout=30, **kw)


def refused(call: Any, status: int) -> str:
    """The message of the `ollama.ResponseError` that ``call`` raises with ``status``."""
    with pytest.raises(ollama.ResponseError) as info:
        call()
    assert info.value.status_code == status, info.value
    return str(info.value.error)


def names(url: str) -> set[str]:
    return {m.model or "" for m in client(url).list().models}


# --- an Ollama backend ----------------------------------------------------------------------


def test_copy_on_the_ollama_backend(url: str, fakes: Fakes) -> None:
    fake = fakes[0]
    assert client(url).copy("ollama/llama3.2", "ollama/llama3-backup").status == "success"
    assert client(url).copy("llama3.2", "llama3-spare").status == "success"  # a bare name
    assert fake.bodies("/api/copy") == [
        {"source": "llama3.2", "destination": "llama3-backup"},
        {"source": "llama3.2:latest", "destination": "llama3-spare"},
    ]
    assert {"ollama/llama3-backup:latest", "ollama/llama3-spare:latest"} <= names(url)
    raw = httpx.post(url + "/api/copy", json={"source": "llama3.2", "destination": "again"})
    assert raw.status_code == 200 and raw.content == b""  # Ollama's empty 200
    # unknown to turnout, then unknown to the backend: 404 either way
    assert "nope" in refused(lambda: client(url).copy("nope", "x"), 404)
    assert "not found" in refused(lambda: client(url).copy("ollama/nope", "x"), 404)
    message = refused(lambda: client(url).copy("ollama/llama3.2", "local/x"), 400)
    assert "'local'" in message and "'ollama'" in message


def test_create_on_the_ollama_backend_streams_its_progress(url: str, fakes: Fakes) -> None:
    fake = fakes[0]
    progress = list(
        client(url).create(
            model="mario", from_="ollama/llama3.2", system="You are Mario.",
            parameters={"temperature": 0.7}, stream=True,
        )
    )  # fmt: skip
    statuses = [p.status or "" for p in progress]
    assert statuses[0].startswith("using existing layer sha256:")
    assert any(s.startswith("creating new layer") for s in statuses)
    assert statuses[-2:] == ["writing manifest", "success"]
    assert fake.bodies("/api/create")[-1] == {
        "model": "mario", "from": "llama3.2", "system": "You are Mario.",
        "parameters": {"temperature": 0.7}, "stream": True,
    }  # fmt: skip
    assert "ollama/mario:latest" in names(url)  # listed as soon as success is told
    # not streamed: one object, Ollama's {"status": "success"}
    assert client(url).create(model="ollama/luigi", from_="mario").status == "success"
    assert fake.bodies("/api/create")[-1]["model"] == "luigi"
    # the raw stream: NDJSON, one object a line, success last
    raw = httpx.post(url + "/api/create", json={"model": "peach", "from": "ollama/llama3.2"})
    assert raw.headers["content-type"].startswith("application/x-ndjson")
    lines = [orjson.loads(line) for line in raw.content.splitlines()]
    assert lines[-1] == {"status": "success"} and all(set(o) == {"status"} for o in lines)


def test_create_failures_on_the_ollama_backend(url: str) -> None:
    # the backend pulls a `from` it lacks: the registry a name names must be allowed
    message = refused(lambda: client(url).create(model="x", from_="ollama/evil.example/ns/m"), 400)
    assert "evil.example" in message and "security.pull_registries" in message
    # refused before any line: the backend's own 400
    message = refused(lambda: client(url).create(model="ollama/x"), 400)
    assert "neither 'from' or 'files'" in message
    # failed after it began: a last line {"error"} when streamed, the gateway's 502 when not
    with pytest.raises(ollama.ResponseError, match="file does not exist"):
        list(client(url).create(model="x", from_="ollama/nothere", stream=True))
    raw = httpx.post(url + "/api/create", json={"model": "x", "from": "ollama/nothere"})
    assert orjson.loads(raw.content.splitlines()[-1])["error"].endswith("file does not exist")
    assert "file does not exist" in refused(
        lambda: client(url).create(model="x", from_="ollama/nothere"), 502
    )


def test_push_from_the_ollama_backend(url: str, fakes: Fakes) -> None:
    fake = fakes[0]
    client(url).copy("ollama/llama3.2", "ollama/me/llama3.2")
    statuses = [p.status for p in client(url).push("ollama/me/llama3.2", stream=True)]
    assert statuses[0] == "retrieving manifest" and statuses[-2:] == ["pushing manifest", "success"]
    assert "me/llama3.2:latest" in fake.pushed
    assert fake.bodies("/api/push")[-1] == {
        "model": "me/llama3.2", "insecure": False, "stream": True,
    }  # fmt: skip
    assert client(url).push("me/llama3.2:latest").status == "success"  # turnout's bare name
    # the registry refuses after the first line: the SDK raises what the last line says
    with pytest.raises(ollama.ResponseError, match="unauthorized"):
        list(client(url).push("ollama/llama3.2", stream=True))
    # a push uploads to the registry its name names: one security.pull_registries lists
    client(url).copy("ollama/llama3.2", "ollama/evil.example/ns/m")
    before = len(fake.bodies("/api/push"))
    message = refused(lambda: client(url).push("ollama/evil.example/ns/m"), 400)
    assert "'evil.example'" in message and "security.pull_registries" in message
    assert "TLS" in refused(lambda: client(url).push("ollama/me/llama3.2", insecure=True), 400)
    assert len(fake.bodies("/api/push")) == before  # neither reached the backend


# --- the models directory -------------------------------------------------------------------


def test_copy_in_the_models_directory(url: str, models: Path) -> None:
    assert client(url).copy("local/tiny", "tiny-copy").status == "success"
    assert os.path.samefile(models / "tiny.gguf", models / "tiny-copy.gguf")
    assert "local/tiny-copy" in names(url)
    assert client(url).copy("tiny", "local/kept/tiny").status == "success"  # bare, prefixed
    assert (models / "kept" / "tiny.gguf").is_file()
    message = refused(lambda: client(url).copy("local/tiny", "tiny-copy"), 400)
    assert "'tiny-copy' is already in the models directory" in message
    assert "not a model name" in refused(lambda: client(url).copy("local/tiny", "../x"), 400)
    assert "'ollama'" in refused(lambda: client(url).copy("local/tiny", "ollama/x"), 400)


def test_create_in_the_models_directory(url: str, models: Path) -> None:
    progress = list(client(url).create(model="tiny-alias", from_="local/tiny", stream=True))
    assert progress[-1].status == "success"
    assert (models / "tiny-alias.gguf").is_file() and "local/tiny-alias" in names(url)
    assert client(url).create(model="local/tiny-2", from_="tiny").status == "success"
    for field, value in (("system", "be brief"), ("parameters", {"temperature": 0.1}),
                         ("template", "{{ .Prompt }}"), ("quantize", "q4_K_M")):  # fmt: skip
        message = refused(
            lambda f=field, v=value: client(url).create(
                model="tiny-x", from_="local/tiny", **{f: v}
            ),
            400,
        )
        assert f"'{field}' cannot be set" in message and "models directory" in message
    assert not (models / "tiny-x.gguf").exists()


def test_push_from_the_models_directory_is_refused(url: str) -> None:
    message = refused(lambda: client(url).push("local/tiny"), 501)
    assert "turnout's models directory cannot push to a registry" in message


# --- everything else ------------------------------------------------------------------------


@pytest.mark.parametrize("model", ["vllm/fake-model", CLAUDE])
def test_other_backends_are_refused_naming_the_model(url: str, model: str) -> None:
    provider = model.split("/")[0]
    for call in (
        lambda: client(url).copy(model, "x"),
        lambda: client(url).create(model="x", from_=model),
        lambda: client(url).push(model),
    ):
        message = refused(call, 501)
        assert f"'{model}'" in message and f"provider '{provider}'" in message
    raw = httpx.post(url + "/api/copy", json={"source": model, "destination": "x"})
    assert raw.status_code == 501 and set(raw.json()) == {"error"}  # Ollama's shape


def test_malformed_requests(url: str) -> None:
    assert "source is required" in refused(lambda: client(url).copy("", "x"), 400)
    raw = httpx.post(url + "/api/create", json={"model": "x", "from": "tiny", "stream": "yes"})
    assert raw.status_code == 400 and "stream" in raw.json()["error"]
    raw = httpx.post(url + "/api/push", content=b"[1]")
    assert raw.status_code == 400 and set(raw.json()) == {"error"}


def test_model_changes_need_the_key_and_the_switch(
    fakes: Fakes, models: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with run_gateway(_config(fakes, models, admin_key=KEY)) as base:
        for call in (
            lambda c: c.copy("ollama/llama3.2", "ollama/k"),
            lambda c: c.create(model="k", from_="local/tiny"),
            lambda c: c.push("ollama/me/k"),
        ):
            assert "admin" in refused(lambda: call(client(base)), 401)  # noqa: B023
        keyed = client(base, headers={"Authorization": f"Bearer {KEY}"})
        assert keyed.copy("ollama/llama3.2", "ollama/k").status == "success"
        monkeypatch.setenv("LOCAL_LLM_ENABLE_PULL", "false")
        assert "LOCAL_LLM_ENABLE_PULL" in refused(lambda: keyed.copy("ollama/k", "ollama/j"), 403)


def test_pull_checks_the_registry_as_the_admin_routes_do(url: str, fakes: Fakes) -> None:
    message = refused(lambda: client(url).pull("ollama/evil.example/ns/m"), 400)
    assert "'evil.example'" in message and "security.pull_registries" in message
    assert "TLS" in refused(lambda: client(url).pull("ollama/llama3.2", insecure=True), 400)
    assert fakes[0].bodies("/api/pull") == []
