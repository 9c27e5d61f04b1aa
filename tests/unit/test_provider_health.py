"""Provider list and health: ``GET /v1/providers``, ``turnout health`` (exit 1 when a backend is
down) and ``turnout monitor``, against documented-format fakes and a closed port."""

from __future__ import annotations

import json
import os
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from tests.fakes.gpt4all import FakeGPT4All, run_fake_gpt4all
from tests.fakes.openai_runtimes import FakeRuntime, run_fake_runtime
from tests.support.servers import free_port, run_gateway
from turnout.cli import app

runner = CliRunner()


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.startswith("TURNOUT_") or key in ("OPENAI_COMPATIBLE_DATA", "OLLAMA_BASE_URL"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("COLUMNS", "200")


@pytest.fixture(scope="module")
def backends() -> Iterator[tuple[FakeRuntime, FakeGPT4All, int]]:
    with run_fake_runtime("vllm") as vllm, run_fake_gpt4all() as g4a:
        yield vllm, g4a, free_port()  # nothing listens on the last one


def config(backends: tuple[FakeRuntime, FakeGPT4All, int]) -> dict[str, Any]:
    vllm, g4a, closed = backends
    return {
        "providers": {
            "gpu": {"type": "vllm", "endpoint": vllm.url},
            "desk": {"type": "gpt4all", "endpoint": g4a.url},
            "gone": {
                "type": "llamacpp",
                "endpoint": f"http://127.0.0.1:{closed}",
                "max_retries": 0,
            },
        },
        "health": {"timeout": 1.0},
    }


def call(url: str, body: Any = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data, {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def test_provider_list(backends: tuple[FakeRuntime, FakeGPT4All, int]) -> None:
    with run_gateway(config(backends)) as url:
        call(
            f"{url}/v1/chat/completions",
            {"model": "gpu/fake-model", "messages": [{"role": "user", "content": "Hi"}]},
        )
        listed = call(f"{url}/v1/providers")
    assert listed["object"] == "list"
    by_name = {p["name"]: p for p in listed["data"]}
    assert list(by_name) == ["gpu", "desk", "gone"]
    gpu, desk, gone = by_name["gpu"], by_name["desk"], by_name["gone"]
    assert (gpu["type"], gpu["dialect"], gpu["endpoint"]) == ("vllm", "openai", backends[0].url)
    assert gpu["status"] == "up" and gpu["latency_ms"] is not None
    assert gpu["models"] == ["fake-model"]
    assert gpu["requests"] == 1 and gpu["in_flight"] == 0
    assert (desk["type"], desk["dialect"], desk["status"]) == ("gpt4all", "gpt4all", "up")
    assert desk["models"] == ["Llama 3.2 3B Instruct", "Reasoner v1"]
    assert gone["status"] == "down" and gone["latency_ms"] is None
    assert "unreachable" in gone["health"]["detail"]
    assert not any(p["discovered"] for p in listed["data"])


def write(tmp_path: Path, data: dict[str, Any]) -> Path:
    path = tmp_path / "turnout.yaml"
    path.write_text(json.dumps(data))  # JSON is YAML
    return path


def test_health_all_exits_1_when_one_is_down(
    backends: tuple[FakeRuntime, FakeGPT4All, int], tmp_path: Path
) -> None:
    result = runner.invoke(
        app, ["health", "--all", "--config", str(write(tmp_path, config(backends)))]
    )
    assert result.exit_code == 1, result.output
    lines = {line.split()[1]: line for line in result.output.splitlines() if line.startswith("│")}
    assert "up" in lines["gpu"] and "fake-model" in lines["gpu"]
    assert "up" in lines["desk"]
    assert "down" in lines["gone"] and "unreachable" in lines["gone"]


def test_health_of_one_provider(
    backends: tuple[FakeRuntime, FakeGPT4All, int], tmp_path: Path
) -> None:
    path = str(write(tmp_path, config(backends)))
    result = runner.invoke(app, ["health", "--provider", "gpu", "--config", path, "--json"])
    assert result.exit_code == 0, result.output
    (row,) = json.loads(result.output)
    assert (row["name"], row["ok"], row["models"]) == ("gpu", True, ["fake-model"])
    result = runner.invoke(app, ["health", "--provider", "gone", "--config", path])
    assert result.exit_code == 1
    result = runner.invoke(app, ["health", "--provider", "nope", "--config", path])
    assert result.exit_code == 2
    assert "no provider named 'nope'; configured: gpu, desk, gone" in result.output


def test_health_and_monitor_of_a_running_gateway(
    backends: tuple[FakeRuntime, FakeGPT4All, int],
) -> None:
    with run_gateway(config(backends)) as url:
        result = runner.invoke(app, ["health", "--url", url, "--json"])
        assert result.exit_code == 1, result.output
        assert {r["name"]: r["ok"] for r in json.loads(result.output)} == {
            "gpu": True,
            "desk": True,
            "gone": False,
        }
        watched = runner.invoke(app, ["monitor", "--url", url, "--count", "2", "--interval", "0.1"])
    assert watched.exit_code == 0, watched.output
    assert "req/s" in watched.output and "in flight" in watched.output
    # Captured, not a terminal: tab-separated rows, one a backend a refresh.
    rows = [line.split("\t") for line in watched.output.splitlines()]
    gpu = [row for row in rows if row[1] == "gpu"]
    assert len(gpu) == 2 and gpu[-1][3] == "up"
    assert gpu[0][7] == "-" and gpu[-1][7] == "0.00"  # the second refresh has a rate


def test_monitor_without_a_gateway() -> None:
    result = runner.invoke(
        app, ["monitor", "--url", f"http://127.0.0.1:{free_port()}", "--count", "1"]
    )
    assert result.exit_code == 2
    assert "cannot read" in result.output
