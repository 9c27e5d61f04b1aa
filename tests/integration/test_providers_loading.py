"""Loading progress in ``GET /v1/providers`` and in ``turnout health`` / ``turnout monitor``, on
the real Gemma 3 270M GGUF served by the embedded engine.

The provider keeps two llama.cpp instances per model (``max_concurrency: 2``), so a load builds
two and llama.cpp's progress passes 0.5 between them for a second or more: long enough to be
seen by polling, as a user polling the gateway would see it.
"""

from __future__ import annotations

import json
import re
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from tests.support.servers import run_gateway
from turnout.cli import app

pytestmark = pytest.mark.slow

HI = [{"role": "user", "content": "Say hi."}]


@pytest.fixture(scope="module")
def gateway_url(gemma_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    folder = tmp_path_factory.mktemp("models")
    (folder / "a.gguf").symlink_to(gemma_path)
    local = {"type": "embedded", "models_dir": str(folder), "max_concurrency": 2,
             "keep_alive": "5m"}  # fmt: skip
    with run_gateway({"providers": {"local": local}, "models_dir": str(folder)}) as url:
        yield url


def http(method: str, url: str, body: Any = None) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data, {"Content-Type": "application/json"}, method=method)
    with urllib.request.urlopen(request, timeout=120) as resp:
        return resp.status, json.loads(resp.read())


def states(url: str) -> list[dict[str, Any]]:
    _, listing = http("GET", url + "/v1/providers")
    (local,) = [p for p in listing["data"] if p["name"] == "local"]
    found: list[dict[str, Any]] = local["model_states"]
    return found


def ask_in_background(url: str, count: int) -> list[threading.Thread]:
    """``count`` chat requests for the unloaded model, sent at once from threads."""
    results: list[int] = []

    def one() -> None:
        status, _ = http(
            "POST", url + "/v1/chat/completions",
            {"model": "local/a", "messages": HI, "max_tokens": 2},
        )  # fmt: skip
        results.append(status)

    threads = [threading.Thread(target=one, daemon=True) for _ in range(count)]
    for t in threads:
        t.start()
    return threads


def poll(read: Callable[[], Any], until: Callable[[Any], bool], within: float) -> list[Any]:
    seen = []
    deadline = time.monotonic() + within
    while True:
        seen.append(read())
        if until(seen[-1]):
            return seen
        assert time.monotonic() < deadline, f"not within {within}s; last: {seen[-1]}"
        time.sleep(0.02)


def loaded(entries: list[dict[str, Any]]) -> bool:
    return [(e["name"], e["state"], e["active"]) for e in entries] == [("a", "loaded", 0)]


def test_providers_show_a_load_in_progress_then_the_loaded_model(gateway_url: str) -> None:
    assert states(gateway_url) == []  # a provider that manages loading, nothing loaded yet
    _, listing = http("GET", gateway_url + "/v1/providers")
    assert all("model_states" in p for p in listing["data"])
    threads = ask_in_background(gateway_url, 2)
    seen = poll(lambda: states(gateway_url), loaded, 120)
    for t in threads:
        t.join(60)
    loading = [e for entries in seen for e in entries if e["state"] in ("loading", "queued")]
    assert loading, f"no loading state seen: {seen}"
    assert any(e["waiting"] == 2 for e in loading), loading  # both requests wait for the load
    assert any(0 < e["progress"] < 1 for e in loading), [e["progress"] for e in loading]
    progress = [e["progress"] for e in loading]
    assert progress == sorted(progress)  # progress only goes forward
    (final,) = seen[-1]
    assert final["progress"] == 1.0 and final["waiting"] == 0
    # Idle now: it unloads at expires_at, keep_alive (5 minutes) after its last request.
    assert final["keep_alive"] == 300
    assert 250 < final["expires_at"] - time.time() <= 300
    http("POST", gateway_url + "/v1/models/local/a/unload", {})
    assert states(gateway_url) == []


# llama.cpp logs from the gateway's thread to whatever sys.stderr is then: CliRunner's, closed
# once a command ends; that lost log line is not what this test is about.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_cli_shows_the_load_progress(gateway_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "250")  # one line a row, whatever the test's terminal
    runner = CliRunner()

    def health() -> str:
        result = runner.invoke(app, ["health", "--url", gateway_url])
        assert result.exit_code == 0, result.output
        return result.stdout

    assert "no model loaded" in health()
    threads = ask_in_background(gateway_url, 2)
    seen = poll(health, lambda out: "a loaded (unloads in" in out, 120)
    for t in threads:
        t.join(60)
    shown = [out for out in seen if "a loading" in out or "a queued" in out]
    assert shown, seen[:3]
    assert any("(2 waiting)" in out for out in shown), shown
    between = [m for out in shown for m in re.findall(r"a loading (\d+)%", out)]
    assert any(0 < int(p) < 100 for p in between), shown
    monitor = runner.invoke(app, ["monitor", "--url", gateway_url, "--count", "1"])
    assert monitor.exit_code == 0, monitor.output
    assert "local models" in monitor.stdout and "a loaded (unloads in" in monitor.stdout
    http("POST", gateway_url + "/v1/models/local/a/unload", {})
