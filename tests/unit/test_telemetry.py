"""Telemetry: bounded windows and queues, statistics per backend and model, Prometheus text, and
the gateway and HTTP layers that feed them (records after the response, the overhead header)."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator
from typing import Any, ClassVar

import pytest
from prometheus_client.parser import text_string_to_metric_families

from turnout.config import ProviderConfig
from turnout.errors import BackendUnavailableError
from turnout.gateway import Gateway
from turnout.providers.base import Health, ModelInfo, Provider
from turnout.routing import Catalog, Router
from turnout.server import create_app
from turnout.telemetry import Telemetry, Trace, stats
from turnout.telemetry.stats import WINDOW, Window
from turnout.wire.types import JSON, Call, Chunk

# --- bounded statistics -----------------------------------------------------------------------


def test_window_percentiles_are_nearest_rank() -> None:
    window = Window()
    assert window.percentile(50) is None
    assert window.summary_ms() == {"avg": None, "p50": None, "p95": None, "samples": 0}
    for ms in range(1, 101):
        window.add(ms / 1000)
    assert window.percentile(50) == 0.05 and window.percentile(95) == 0.095
    assert window.percentile(100) == 0.1 and window.percentile(0) == 0.001
    assert window.summary_ms() == {"avg": 50.5, "p50": 50.0, "p95": 95.0, "samples": 100}


def test_window_memory_is_bounded_and_percentiles_follow_the_recent_samples() -> None:
    window = Window()
    for _ in range(WINDOW * 5):
        window.add(10.0)
    for _ in range(WINDOW):
        window.add(1.0)  # the last WINDOW samples are all fast
    assert len(window._ring) == WINDOW
    assert window.percentile(95) == 1.0
    assert window.count == WINDOW * 6  # the average is over all time
    assert window.total / window.count == pytest.approx((10 * 5 + 1) / 6)


def record(backend: str = "a", model: str = "m", *, ok: bool = True, **fields: Any) -> Trace:
    trace = Trace()
    trace.begin("chat", model, False)
    code = None if ok else "backend_unavailable"
    trace.attempts.append((backend, model, ok, code, 0.2, fields.pop("ttft", None)))
    if ok:
        trace.backend, trace.served = backend, model
    else:
        trace.outcome, trace.code = "error", code
    for key, value in fields.items():
        setattr(trace, key, value)
    return trace


def test_records_are_aggregated_off_the_request_path() -> None:
    telemetry = Telemetry()
    telemetry.emit(record(tokens_in=10, tokens_out=5))
    assert telemetry._series == {}  # emitting only appended the record
    assert len(telemetry._pending) == 1
    snapshot = telemetry.stats()  # drains first
    assert telemetry._pending == []
    model = snapshot["backends"]["a"]["models"]["m"]
    assert (model["requests"], model["successes"], model["tokens_in"], model["tokens_out"]) == (
        1,
        1,
        10,
        5,
    )


def test_a_full_queue_drops_and_counts_instead_of_growing() -> None:
    telemetry = Telemetry(capacity=3)
    for _ in range(5):
        telemetry.emit(record())
    assert len(telemetry._pending) == 3
    snapshot = telemetry.stats()
    assert snapshot["dropped_records"] == 2 and snapshot["requests"]["total"] == 3
    assert b"turnout_telemetry_dropped_total 2.0" in telemetry.render_metrics()


def test_series_are_capped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(stats, "MAX_SERIES", 2)
    monkeypatch.setattr("turnout.telemetry.MAX_SERIES", 2)
    telemetry = Telemetry()
    for model in ("m1", "m2", "made-up-1", "made-up-2"):
        telemetry.emit(record(model=model, tokens_in=1, tokens_out=1))
    models = telemetry.stats()["backends"]["a"]["models"]
    assert set(models) == {"m1", "m2", "(other)"} and models["(other)"]["requests"] == 2


def test_tokens_are_estimated_when_nobody_counted_and_cost_follows_prices() -> None:
    telemetry = Telemetry(prompt_text=lambda kind, body: body["messages"][0]["content"])
    body = {"messages": [{"role": "user", "content": "x" * 400}]}
    telemetry.emit(record(tokens_out=7, body=body, price_in=1.0, price_out=2.0))
    telemetry.emit(record(tokens_in=1000, tokens_out=500, price_in=1.0, price_out=2.0))
    model = telemetry.stats()["backends"]["a"]["models"]["m"]
    assert (model["tokens_in"], model["tokens_out"], model["tokens_estimated"]) == (1100, 507, 1)
    assert model["cost"] == pytest.approx(1.1 * 1.0 + 0.507 * 2.0)


def test_failures_are_counted_by_code_and_attempts_per_backend() -> None:
    telemetry = Telemetry()
    trace = record("b", tokens_in=3, tokens_out=2, ttft=0.05)
    trace.attempts.insert(0, ("a", "m", False, "backend_unavailable", 0.001, None))
    telemetry.emit(trace)
    telemetry.emit(record("a", ok=False))
    snapshot = telemetry.stats()
    a, b = snapshot["backends"]["a"], snapshot["backends"]["b"]
    assert (a["requests"], a["failures"], a["successes"]) == (2, 2, 0)
    assert a["models"]["m"]["errors"] == {"backend_unavailable": 2}
    assert (b["requests"], b["successes"]) == (1, 1)
    assert b["models"]["m"]["ttft_ms"]["p50"] == 50.0
    assert snapshot["requests"] == {
        "total": 2, "ok": 1, "refused": 0, "error": 1, "internal": 0, "cancelled": 0, "cut": 0,
        "reasons": {"error": {"backend_unavailable": 1}},
    }  # fmt: skip


def samples(text: bytes) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    out = {}
    for family in text_string_to_metric_families(text.decode()):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def test_prometheus_metrics_with_cached_label_children() -> None:
    live = {
        "a": {
            "health": {"ok": False},
            "circuit": {"state": "open", "opens": 3},
            "concurrency": {"in_flight": 1, "queued": 2},
        }
    }
    telemetry = Telemetry(live=lambda: live)
    telemetry.emit(record(tokens_in=10, tokens_out=4, price_in=0.5, overhead_s=0.0004, ttft=0.1))
    telemetry.flush()
    children = telemetry._series[("a", "m")].children
    telemetry.emit(record(ok=False))
    got = samples(telemetry.render_metrics())
    assert telemetry._series[("a", "m")].children is children  # made once per series

    def value(name: str, **labels: str) -> float:
        return got[(name, frozenset(labels.items()))]

    am = {"backend": "a", "model": "m"}
    assert value("turnout_backend_requests_total", **am, outcome="success") == 1
    assert value("turnout_backend_requests_total", **am, outcome="failure") == 1
    assert value("turnout_backend_errors_total", **am, code="backend_unavailable") == 1
    assert value("turnout_backend_latency_seconds_count", **am) == 1
    assert value("turnout_backend_latency_seconds_bucket", **am, le="0.25") == 1
    assert value("turnout_backend_ttft_seconds_sum", **am) == pytest.approx(0.1)
    assert value("turnout_backend_tokens_total", **am, direction="input") == 10
    assert value("turnout_backend_cost_total", **am) == pytest.approx(0.005)
    assert value("turnout_overhead_seconds_bucket", le="0.0005") == 1
    assert value("turnout_requests_total", outcome="error") == 1
    assert value("turnout_backend_up", backend="a") == 0
    assert value("turnout_backend_circuit_state", backend="a", state="open") == 1
    assert value("turnout_backend_circuit_state", backend="a", state="closed") == 0
    assert value("turnout_backend_circuit_opens_total", backend="a") == 3
    assert value("turnout_backend_in_flight", backend="a") == 1
    assert value("turnout_backend_queued", backend="a") == 2


async def test_the_drain_task_runs_in_the_background() -> None:
    telemetry = Telemetry(interval=0.01)
    telemetry.start()
    telemetry.emit(record())
    for _ in range(500):  # the drain publishes in its own time: wait for it (5 s at most)
        if not telemetry._pending:
            break
        await asyncio.sleep(0.01)
    assert telemetry._pending == [] and telemetry._series[("a", "m")].requests == 1
    telemetry.emit(record())
    await telemetry.close()  # the last records are not lost
    assert telemetry._series[("a", "m")].requests == 2


# --- fed by the gateway and the HTTP layer ----------------------------------------------------


class Scripted(Provider):
    """Answers chats with usage (or streams without it), or fails while ``down``."""

    dialect: ClassVar[str] = "memory"

    def __init__(self, name: str, **config: Any) -> None:
        super().__init__(
            name,
            ProviderConfig.model_validate(
                {"type": "openai", "models": ["m"], "max_retries": 0, **config}
            ),
        )
        self.down = False

    async def list_models(self) -> list[ModelInfo]:
        return [ModelInfo("m", self.name)]

    async def probe(self) -> Health:
        return Health(not self.down)

    async def complete(self, call: Call) -> JSON:
        if self.down:
            raise BackendUnavailableError(f"backend '{self.name}' is unreachable")
        usage = {"prompt_tokens": 2000, "completion_tokens": 1000, "total_tokens": 3000}
        message = {"role": "assistant", "content": "hi"}
        choice = {"index": 0, "message": message, "finish_reason": "stop"}
        return {
            "id": "c",
            "object": "chat.completion",
            "created": 1,
            "model": "m",
            "choices": [choice],
            "usage": usage,
        }

    async def stream(self, call: Call) -> AsyncIterator[Chunk]:
        if self.down:
            raise BackendUnavailableError(f"backend '{self.name}' is unreachable")
        for text in ("a", "b", "c"):
            await asyncio.sleep(0.01)
            choice = {"index": 0, "delta": {"content": text}, "finish_reason": None}
            yield Chunk(
                {
                    "id": "c",
                    "object": "chat.completion.chunk",
                    "created": 1,
                    "model": "m",
                    "choices": [choice],
                }
            )


def gateway_with(*providers: Provider) -> Gateway:
    gateway = Gateway({"default_embedded": False, "health": {"enabled": False}}, environ={})
    gateway.providers = {p.name: p for p in providers}
    gateway.catalog = Catalog(gateway.providers)
    gateway.router = Router(gateway.catalog)
    return gateway


async def test_gateway_stats_per_backend_and_model() -> None:
    down = Scripted("down")
    down.down = True
    paid = Scripted("paid", cost_per_1k_input=0.5, cost_per_1k_output=1.5)
    async with gateway_with(down, paid) as gateway:
        reply = await gateway.chat("m", [{"role": "user", "content": "hi"}])
        assert reply["usage"]["total_tokens"] == 3000
        assert len(gateway.telemetry._pending) == 1  # recorded after the response, not folded in
        chunks = [c async for c in gateway.stream("m", [{"role": "user", "content": "hey"}])]
        assert len(chunks) == 3
        result = gateway.stats()
    paid_m = result["backends"]["paid"]["models"]["m"]
    assert (paid_m["requests"], paid_m["successes"], paid_m["ttft_ms"]["samples"]) == (2, 2, 1)
    assert paid_m["ttft_ms"]["p50"] >= 10  # the first chunk comes after 10 ms
    assert paid_m["latency_ms"]["p95"] >= paid_m["ttft_ms"]["p50"]
    assert paid_m["tokens_out"] == 1000 + 3  # the stream: one token per chunk, estimated
    assert paid_m["tokens_in"] == 2000 + 1  # "hey": 3 characters, about one token
    assert paid_m["cost"] == pytest.approx(2 * 0.5 + 1 * 1.5 + (1 * 0.5 + 3 * 1.5) / 1000)
    assert result["backends"]["down"]["failures"] == 2  # tried first by both requests
    assert result["backends"]["down"]["circuit"]["state"] == "closed"
    assert result["requests"]["ok"] == 2 and result["overhead_ms"]["samples"] == 2


async def asgi(
    app: Any, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    """One request straight into the ASGI app, as a server would make it."""
    raw = b"" if body is None else json.dumps(body).encode()
    sent = False
    finished = asyncio.Event()
    messages: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": raw, "more_body": False}
        await finished.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        messages.append(message)
        if message["type"] == "http.response.body" and not message.get("more_body"):
            finished.set()

    extra = [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"content-type", b"application/json"), *extra],
        "client": ("127.0.0.1", 5000),
        "server": ("127.0.0.1", 8400),
    }
    await app(scope, receive, send)
    start = messages[0]
    got = {k.decode(): v.decode() for k, v in start["headers"]}
    return start["status"], got, b"".join(m.get("body", b"") for m in messages[1:])


async def test_http_overhead_header_stats_and_metrics_endpoints() -> None:
    async with gateway_with(Scripted("local")) as gateway:
        app = create_app(gateway)
        ask = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
        status, headers, _ = await asgi(app, "POST", "/v1/chat/completions", ask)
        assert status == 200 and headers["x-turnout-backend"] == "local"
        overhead = float(headers["x-turnout-overhead-ms"])
        assert 0 <= overhead < 1000
        status, headers, _ = await asgi(
            app, "POST", "/v1/chat/completions", {**ask, "stream": True}
        )
        assert status == 200 and float(headers["x-turnout-overhead-ms"]) >= 0
        status, headers, body = await asgi(app, "GET", "/stats")
        assert status == 200 and headers["content-type"] == "application/json"
        local = json.loads(body)["backends"]["local"]
        assert local["successes"] == 2
        overhead_ms = json.loads(body)["overhead_ms"]
        assert overhead_ms["samples"] == 2
        process = json.loads(body)["process"]  # this process, its live tasks counted when asked
        assert process["pid"] == os.getpid() and process["tasks"] >= 1
        status, headers, body = await asgi(app, "GET", "/metrics")
        assert status == 200 and headers["content-type"].startswith("text/plain; version=0.0.4")
        assert (
            "turnout_backend_requests_total",
            frozenset({("backend", "local"), ("model", "m"), ("outcome", "success")}),
        ) in samples(body)
        status, headers, _ = await asgi(app, "GET", "/v1/models")
        assert "x-turnout-overhead-ms" not in headers  # nothing was routed


@pytest.mark.parametrize("value", ["soon", "0", "-1", "nan", "inf"])
async def test_an_invalid_timeout_header_is_a_400_naming_it(value: str) -> None:
    async with gateway_with(Scripted("local")) as gateway:
        ask = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
        status, _, body = await asgi(
            create_app(gateway), "POST", "/v1/chat/completions", ask, {"X-Turnout-Timeout": value}
        )
    error = json.loads(body)["error"]
    assert status == 400 and error["param"] == "X-Turnout-Timeout"
    assert error["code"] == "invalid_header" and "positive number of seconds" in error["message"]


async def test_python_api_timeouts_are_validated() -> None:
    async with gateway_with(Scripted("local")) as gateway:
        with pytest.raises(Exception, match="'timeout' must be a positive number of seconds"):
            await gateway.chat("m", [{"role": "user", "content": "hi"}], timeout=-1)
        reply = await gateway.chat("m", [{"role": "user", "content": "hi"}], timeout=5)
        assert reply["choices"][0]["message"]["content"] == "hi"
