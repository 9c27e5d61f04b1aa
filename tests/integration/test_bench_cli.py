"""`turnout bench` against a real gateway on the embedded engine (Gemma 3 270M), tiny answers."""

from __future__ import annotations

import asyncio

import pytest
from typer.testing import CliRunner

from tests.support.servers import free_port
from turnout.cli import app
from turnout.cli.bench import percentile, run_bench

pytestmark = pytest.mark.slow
runner = CliRunner()


@pytest.fixture(autouse=True)
def wide_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    """A table wide enough that its headings are not wrapped; no API key from the environment."""
    monkeypatch.setenv("COLUMNS", "160")
    monkeypatch.delenv("TURNOUT_BENCH_API_KEY", raising=False)


def test_streamed_bench_prints_percentiles_and_time_to_first_token(embedded_gateway: str) -> None:
    args = ["bench", "--url", embedded_gateway, "--requests", "3", "--concurrency", "2"]
    result = runner.invoke(app, [*args, "--max-tokens", "4"])
    assert result.exit_code == 0, result.output
    out = result.output
    assert "turnout bench: embedded/gemma-3-270m" in out  # the first model the gateway lists
    for heading in ("p50", "p90", "p99", "latency (ms)", "time to first token (ms)"):
        assert heading in out
    assert "tokens/s (per request)" in out
    assert "3/3 requests succeeded" in out
    assert "counted as content chunks" not in out  # turnout reports usage in streams


def test_unstreamed_bench_has_no_time_to_first_token(embedded_gateway: str) -> None:
    args = ["bench", "--url", embedded_gateway + "/v1", "--model", "gemma-3-270m"]
    result = runner.invoke(app, [*args, "--requests", "2", "--max-tokens", "3", "--no-stream"])
    assert result.exit_code == 0, result.output
    assert "turnout bench: gemma-3-270m" in result.output
    assert "time to first token" not in result.output
    assert "2/2 requests succeeded" in result.output


def test_measures_are_consistent(embedded_gateway: str) -> None:
    model, summary = asyncio.run(
        run_bench(embedded_gateway, "gemma-3-270m", 3, 1, 4, True, "Name a colour.")
    )
    assert model == "gemma-3-270m"
    assert (summary.requests, summary.failed, summary.errors) == (3, 0, [])
    assert len(summary.latency_s) == len(summary.ttft_s) == 3
    for latency, ttft in zip(sorted(summary.latency_s), sorted(summary.ttft_s), strict=True):
        assert 0 < ttft <= latency
    assert 3 <= summary.tokens <= 3 * 4  # usage from the gateway, within max_tokens
    assert summary.throughput_tok_s == pytest.approx(summary.tokens / summary.wall_s)
    assert percentile(summary.latency_s, 50) <= percentile(summary.latency_s, 99)


def test_unknown_model_fails_with_the_gateways_message(embedded_gateway: str) -> None:
    result = runner.invoke(
        app, ["bench", "--url", embedded_gateway, "--model", "no-such-model", "--requests", "2"]
    )
    assert result.exit_code == 1
    assert "0/2 requests succeeded" in result.output
    assert "HTTP 404" in result.output and "no-such-model" in result.output


def test_unreachable_server_is_a_clear_error() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    result = runner.invoke(app, ["bench", "--url", url, "--requests", "1"])
    assert result.exit_code == 1
    assert f"cannot reach {url}" in result.output


def test_percentile_interpolates_between_ranks() -> None:
    assert percentile([4.0, 1.0, 3.0, 2.0], 50) == 2.5
    assert percentile([1.0, 2.0, 3.0, 4.0, 5.0], 90) == pytest.approx(4.6)
    assert percentile([7.0], 99) == 7.0
