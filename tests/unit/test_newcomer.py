"""What a newcomer meets first (issue 11, item 5): the embedded default beside configured
backends, the start-up and request logs, and CLI output that is whole when piped or captured.

Gateways here serve fake runtimes (tests/fakes) over real HTTP; CLI commands run through Typer's
CliRunner, whose output is not a terminal, as when piped."""

from __future__ import annotations

import io
import json
import logging
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from rich.console import Console
from rich.progress import Progress
from typer.testing import CliRunner

from tests.fakes.openai_runtimes import FakeRuntime, run_fake_runtime
from tests.support import client
from tests.support.servers import free_port, run_gateway
from turnout.cli import PIPE_WIDTH, app
from turnout.cli.bench import run_bench
from turnout.config import load_config
from turnout.errors import ConfigError, InvalidRequestError
from turnout.gateway import Gateway
from turnout.telemetry import Telemetry, Trace
from turnout.telemetry.logs import RequestLog, request_line

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[2]
UNREACHABLE = "http://127.0.0.1:9"  # the discard port: nothing listens


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CLI reads the real environment: keep the test runner's own settings out of it."""
    for key in list(os.environ):
        if key.startswith("TURNOUT_") or key in ("OPENAI_COMPATIBLE_DATA", "OLLAMA_BASE_URL"):
            monkeypatch.delenv(key)


@pytest.fixture
def fake() -> Iterator[FakeRuntime]:
    with run_fake_runtime("vllm") as runtime:
        yield runtime


@pytest.fixture
def gateway(fake: FakeRuntime) -> Iterator[str]:
    """turnout over HTTP in front of the fake vLLM (provider ``up``), without the embedded
    default."""
    config = {"providers": {"up": {"type": "vllm", "endpoint": fake.url}}, "embedded": False}
    with run_gateway(config) as url:
        yield url


def available(monkeypatch: pytest.MonkeyPatch, yes: bool) -> None:
    """Whether the embedded engine counts as installed (llama-cpp-python and the model's
    package), whatever this machine has."""
    monkeypatch.setattr("turnout.providers.embedded.default_available", lambda: yes)


UP = {"up": {"type": "vllm", "endpoint": UNREACHABLE}}
LOCAL = {"local": {"type": "embedded", "models_dir": "/nonexistent"}}


# --- the embedded default --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("settings", "installed", "served"),
    [
        ({}, True, ["embedded"]),
        ({}, False, ["embedded"]),  # nothing else to serve: start-up says what to install
        ({"providers": UP}, True, ["up", "embedded"]),  # kept beside a configured backend
        ({"providers": UP}, False, ["up"]),  # not installed: the others still serve
        ({"providers": UP, "embedded": True}, False, ["up", "embedded"]),  # asked for
        ({"providers": UP, "embedded": False}, True, ["up"]),
        ({"providers": UP, "default_embedded": False}, True, ["up"]),  # the older name
        ({"embedded": False}, True, []),
        ({"providers": LOCAL}, True, ["local"]),  # an in-process provider of one's own
        ({"providers": LOCAL, "embedded": True}, True, ["local", "embedded"]),
        ({"providers": {"embedded": UP["up"]}}, True, ["embedded"]),  # the name is taken
    ],
)
def test_the_embedded_default_is_served_unless_turned_off(
    monkeypatch: pytest.MonkeyPatch, settings: dict[str, object], installed: bool, served: list[str]
) -> None:
    available(monkeypatch, installed)
    assert list(Gateway(settings, environ={}).providers) == served


def test_the_environment_turns_the_embedded_default_off(monkeypatch: pytest.MonkeyPatch) -> None:
    available(monkeypatch, True)
    for variable in ("TURNOUT_EMBEDDED", "TURNOUT_DEFAULT_EMBEDDED"):
        gateway = Gateway({"providers": UP}, environ={variable: "false"})
        assert list(gateway.providers) == ["up"], variable


def test_embedded_setting_and_its_older_name() -> None:
    assert load_config({}, environ={}).embedded is None
    assert load_config({}, environ={}).default_embedded is True
    off = load_config({"default_embedded": False}, environ={})
    assert off.embedded is False and off.default_embedded is False
    assert "embedded" in load_config({}, environ={}).model_dump()
    with pytest.raises(ConfigError, match="embedded"):
        load_config({"embedded": "sometimes"}, environ={})


def test_a_route_may_name_the_embedded_default_beside_configured_providers() -> None:
    route = {"targets": [{"provider": "embedded", "model": "gemma-3-270m"}]}
    load_config({"providers": UP, "routes": {"small": route}}, environ={})
    with pytest.raises(ConfigError, match=r"routes\.small\.targets\[0\]\.provider"):
        load_config({"providers": UP, "routes": {"small": route}, "embedded": False}, environ={})


# --- the start-up log --------------------------------------------------------------------------


async def test_start_up_names_the_models_and_the_address_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    up = {"type": "vllm", "endpoint": UNREACHABLE, "models": ["m1", "m2"]}
    settings = {"providers": {"up": up}, "embedded": False, "health": {"enabled": False}}
    gateway = Gateway(settings, environ={})
    gateway.address = "http://127.0.0.1:8400"
    with caplog.at_level(logging.INFO, logger="turnout"):
        async with gateway:
            await gateway.start()  # a second start says nothing
    said = [r.getMessage() for r in caplog.records if r.getMessage().startswith("turnout serving")]
    assert said == ["turnout serving on http://127.0.0.1:8400: m1, m2 from up (vllm)"]


def test_serve_logs_what_it_serves_and_where(fake: FakeRuntime, tmp_path: Path) -> None:
    """``turnout serve`` as a user starts it: the line names the models and the address."""
    port = free_port()
    config = tmp_path / "turnout.yaml"
    config.write_text(
        f"providers:\n  up: {{type: vllm, endpoint: '{fake.url}'}}\nembedded: false\n"
        "health: {enabled: false}\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("TURNOUT_")}
    env["PYTHONPATH"] = str(ROOT)
    command = [sys.executable, "-m", "turnout", "serve", "-c", str(config), "--port", str(port)]
    with subprocess.Popen(command, stderr=subprocess.PIPE, text=True, env=env) as served:
        try:
            assert served.stderr is not None
            deadline = time.monotonic() + 60
            lines: list[str] = []
            while time.monotonic() < deadline:
                line = served.stderr.readline()
                lines.append(line)
                if "turnout serving" in line or not line:
                    break
        finally:
            served.terminate()
            served.wait(10)
    wanted = f"turnout serving on http://127.0.0.1:{port}: fake-model from up (vllm)"
    assert any(wanted in line for line in lines), lines


# --- the request log ---------------------------------------------------------------------------


def _trace(**fields: object) -> Trace:
    trace = Trace()
    trace.method, trace.path = "POST", "/v1/chat/completions"
    trace.begin("chat", "m", False)
    for key, value in fields.items():
        setattr(trace, key, value)
    return trace


def test_the_request_log_is_written_by_the_drain_not_by_the_request(
    caplog: pytest.LogCaptureFixture,
) -> None:
    telemetry = Telemetry()
    telemetry.add_sink(RequestLog())  # as `turnout serve` does
    trace = _trace(backend="up", served="m", stream=True)
    trace.usage({"prompt_tokens": 3, "completion_tokens": 5}, {})
    with caplog.at_level(logging.INFO, logger="turnout.requests"):
        telemetry.emit(trace)
        assert not caplog.records, "the request itself logs nothing"
        telemetry.flush()
    (record,) = caplog.records
    assert record.name == "turnout.requests" and record.levelno == logging.INFO
    assert re.fullmatch(
        r"POST /v1/chat/completions model=m backend=up/m status=200 tokens=3\+5 "
        r"latency_ms=\d+(\.\d+)? stream",
        record.getMessage(),
    ), record.getMessage()


def test_the_request_log_names_a_failure_and_its_status() -> None:
    failed = _trace()
    failed.failed(InvalidRequestError("bad", param="tool_choice"))
    failed.t_end = failed.t_start + 0.25
    assert request_line(failed) == (
        "POST /v1/chat/completions model=m backend=- status=400 tokens=?+? latency_ms=250.0 "
        "error=invalid_request_error"
    )
    gone = _trace(backend="up", served="m")
    gone.failed(KeyboardInterrupt())
    assert " status=499 " in request_line(gone)
    python = Trace()
    python.begin("embedding", "e", False)
    assert request_line(python).startswith("python embedding model=e ")


def test_the_request_log_redacts_the_model_a_client_named_and_the_filter_trusts_it() -> None:
    """The one client-chosen part of a request line, its model, is redacted as the line is
    built; the handlers' RedactingFilter then passes the marked record without scanning it,
    while an unmarked record is still redacted."""
    from turnout.errors import REDACTED, RedactingFilter, register_secrets

    register_secrets(["sk-planted-secret-0123456789"])
    trace = _trace(model="Bearer abcdefghijklmnop sk-planted-secret-0123456789")
    line = request_line(trace)
    assert "abcdefghijklmnop" not in line and "sk-planted" not in line, line
    assert line.startswith("POST /v1/chat/completions model=Bearer [redacted] [redacted] ")
    marked = logging.LogRecord("turnout.requests", logging.INFO, __file__, 1, "%s", (line,), None)
    marked.__dict__[REDACTED] = True
    assert RedactingFilter().filter(marked) and marked.args == (line,)  # untouched
    plain = logging.LogRecord(
        "x", logging.INFO, __file__, 1, "key=%s", ("sk-planted-secret-0123456789",), None
    )
    RedactingFilter().filter(plain)
    assert "sk-planted" not in plain.getMessage()


def test_the_request_log_costs_nothing_when_info_is_off(caplog: pytest.LogCaptureFixture) -> None:
    telemetry = Telemetry()
    telemetry.add_sink(RequestLog())
    with caplog.at_level(logging.WARNING, logger="turnout.requests"):
        telemetry.emit(_trace())
        telemetry.flush()
    assert not caplog.records


async def test_a_request_over_http_is_logged_once(
    fake: FakeRuntime, caplog: pytest.LogCaptureFixture
) -> None:
    config = {"providers": {"up": {"type": "vllm", "endpoint": fake.url}}, "embedded": False}
    served = Gateway(config, environ={})
    served.telemetry.add_sink(RequestLog())  # as `turnout serve` does
    body = {"model": "fake-model", "messages": [{"role": "user", "content": "Hi"}]}
    with run_gateway(served) as gateway, caplog.at_level(logging.INFO, logger="turnout.requests"):
        assert (await client.post(gateway + "/v1/chat/completions", body)).status == 200
        missing = await client.post(gateway + "/v1/chat/completions", {**body, "model": "nope"})
        assert missing.status == 404
        await client.get(gateway + "/stats")  # drains what is pending now
    lines = [r.getMessage() for r in caplog.records if r.name == "turnout.requests"]
    assert len(lines) == 2, lines
    assert lines[0].startswith(
        "POST /v1/chat/completions model=fake-model backend=up/fake-model status=200 tokens="
    )
    assert lines[1].startswith("POST /v1/chat/completions model=nope backend=- status=404 ")


# --- the command line --------------------------------------------------------------------------


def test_chat_without_a_gateway_says_so_in_one_line() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    result = runner.invoke(app, ["chat", "Hi", "--url", url])
    assert result.exit_code == 1
    assert "Traceback" not in result.output
    (line,) = result.output.splitlines()
    assert line.startswith(f"cannot reach a gateway at {url} (") and "turnout serve" in line


def test_monitor_prints_plain_rows_when_piped(gateway: str) -> None:
    result = runner.invoke(app, ["monitor", "--url", gateway, "--count", "2", "--interval", "0.05"])
    assert result.exit_code == 0, result.output
    header, *rows = result.output.splitlines()
    assert header.split("\t") == [
        "time", "provider", "type", "status", "latency ms", "in flight", "queued", "req/s",
        "circuit", "models", "local models",
    ]  # fmt: skip
    assert len(rows) == 2  # one backend, two refreshes
    cells = rows[1].split("\t")
    assert cells[1:4] == ["up", "vllm", "up"] and cells[9] == "fake-model"
    assert re.fullmatch(r"\d\d:\d\d:\d\d", cells[0])
    assert not set("┏┃│━") & set(result.output), "no table drawing"


def test_health_all_without_configuration_reports_the_embedded_default(tmp_path: Path) -> None:
    empty = tmp_path / "turnout.yaml"
    empty.write_text("")
    result = runner.invoke(app, ["health", "--all", "-c", str(empty), "--json"])
    assert result.exit_code == 0, result.output
    (row,) = json.loads(result.stdout)
    assert (row["name"], row["type"], row["models"]) == ("embedded", "embedded", ["gemma-3-270m"])
    assert "in-process" in row["detail"]
    table = runner.invoke(app, ["health", "--all", "-c", str(empty)])
    assert table.exit_code == 0 and "gemma-3-270m" in table.stdout
    empty.write_text("embedded: false\n")
    off = runner.invoke(app, ["health", "--all", "-c", str(empty)])
    assert off.exit_code == 2 and "embedded: false" in off.output


def test_models_list_shows_the_default_model(tmp_path: Path) -> None:
    config = tmp_path / "turnout.yaml"
    config.write_text("")
    args = ["models", "list", "--dir", str(tmp_path / "none"), "-c", str(config)]
    listed = runner.invoke(app, [*args, "--json"])
    assert listed.exit_code == 0, listed.output
    (entry,) = json.loads(listed.stdout)
    assert (entry["name"], entry["default"], entry["format"]) == ("gemma-3-270m", True, "gguf")
    assert entry["quantization"] == "Q4_K_M"
    table = runner.invoke(app, args)
    assert "gemma-3-270m (default)" in table.stdout and "253.1 MB" in table.stdout
    config.write_text("embedded: false\n")
    off = runner.invoke(app, [*args, "--json"])
    assert json.loads(off.stdout) == []


def test_discover_leaves_turnout_out_of_the_yaml(fake: FakeRuntime, gateway: str) -> None:
    targets = [fake.url.removeprefix("http://"), gateway.removeprefix("http://")]
    yaml_out = runner.invoke(app, ["discover", *targets, "--yaml"])
    assert yaml_out.exit_code == 0, yaml_out.output
    assert yaml_out.stdout == f"providers:\n  vllm:\n    type: vllm\n    endpoint: {fake.url}\n"
    table = runner.invoke(app, ["discover", *targets])
    row = next(line for line in table.stdout.splitlines() if gateway in line)
    assert "turnout gateway" in row and "left out of --yaml" in row  # the whole endpoint
    found = json.loads(runner.invoke(app, ["discover", *targets, "--json"]).stdout)
    assert {f["endpoint"]: f["runtime"] for f in found} == {fake.url: "vllm", gateway: "turnout"}


async def test_discovery_never_registers_a_gateway(gateway: str) -> None:
    """``discovery: true`` on a port where a turnout answers (its own, say) must not register
    it: every request to it would come back to turnout."""
    settings = {
        "embedded": False,
        "health": {"enabled": False},
        "discovery": {"enabled": True, "hosts": [gateway.removeprefix("http://")]},
    }
    async with Gateway(settings, environ={}) as gw:
        assert gw.discovery is not None and gw.discovery.found == {}
        assert list(gw.providers) == []


def test_piped_tables_are_not_cut_to_80_columns(tmp_path: Path) -> None:
    name = "a-model-whose-name-alone-is-wider-than-eighty-columns-of-a-terminal-" + "x" * 30
    (tmp_path / f"{name}.gguf").write_bytes(b"not a GGUF")
    config = tmp_path / "turnout.yaml"
    config.write_text("embedded: false\n")
    result = runner.invoke(app, ["models", "list", "--dir", str(tmp_path), "-c", str(config)])
    assert result.exit_code == 0, result.output
    (row,) = [line for line in result.stdout.splitlines() if name in line]
    assert len(row) > 80 and "unreadable" in row  # one line: neither wrapped nor cut


def test_the_width_given_by_columns_is_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from turnout.cli import console

    monkeypatch.setenv("COLUMNS", "70")
    runner.invoke(app, ["version"])
    assert console.width == 70
    monkeypatch.delenv("COLUMNS")
    runner.invoke(app, ["version"])
    assert console.width == PIPE_WIDTH


async def test_bench_advances_its_progress_bar(fake: FakeRuntime) -> None:
    progress = Progress(console=Console(file=io.StringIO()))
    with progress:
        model, summary = await run_bench(fake.url, None, 3, 2, 4, True, "Hi", None, progress)
    (task,) = progress.tasks
    assert (task.description, task.total, task.completed) == ("fake-model: requests", 3, 3)
    assert (model, summary.failed) == ("fake-model", 0)


def test_license_is_apache_2() -> None:
    text = (ROOT / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert "END OF TERMS AND CONDITIONS" in text
    assert 'license = "Apache-2.0"' in (ROOT / "pyproject.toml").read_text()
