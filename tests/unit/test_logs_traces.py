"""Request ids, log lines and OpenTelemetry traces.

- ``X-Request-Id``: returned on every response, the client's kept when it is safe, else new.
- ``--log-format json``: ``turnout serve`` run for real, every line it writes parsed as JSON.
- OTLP: a real OTLP/HTTP receiver on loopback (http.server) decodes what the gateway sends with
  opentelemetry-proto; one trace per request, a span per backend attempt, GenAI attributes.
"""

from __future__ import annotations

import gzip
import io
import json
import logging
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.testclient import TestClient

from tests.unit.test_server import MemoryProvider
from turnout.config import RouteConfig
from turnout.errors import BackendUnavailableError
from turnout.gateway import Gateway
from turnout.routing import Catalog, Router
from turnout.server import create_app
from turnout.telemetry import Trace
from turnout.telemetry.logs import JsonFormatter, RequestLog, TextFormatter, configure
from turnout.wire.types import JSON, Call

pytest.importorskip("opentelemetry.sdk")
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
)


class Counting(MemoryProvider):
    """Reports usage on its whole replies, as real backends do."""

    async def complete(self, call: Call) -> JSON:
        reply = await super().complete(call)
        return {**reply, "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6}}


CHAT = {"model": "fast", "messages": [{"role": "user", "content": "hi"}]}


def gateway(environ: dict[str, str] | None = None) -> tuple[Gateway, list[Trace]]:
    """``fast`` is a route: first to ``bad`` (down), then to ``local``; the traces handed to
    telemetry's sinks are collected."""
    gw = Gateway({"default_embedded": False}, environ=environ or {})
    bad, local = MemoryProvider("bad", ["m"]), Counting("local", ["m"])
    bad.fail = BackendUnavailableError("backend 'bad' is down", backend="bad")
    gw.providers = {"bad": bad, "local": local}
    route = RouteConfig.model_validate(
        {"targets": [{"provider": "bad", "model": "m"}, {"provider": "local", "model": "m"}],
         "retry": {"max_retries": 0}}
    )  # fmt: skip
    gw.catalog = Catalog(gw.providers, {}, routes={"fast": route})
    gw.router = Router(gw.catalog)
    seen: list[Trace] = []
    gw.telemetry.add_sink(seen.extend)
    return gw, seen


# --- request ids ------------------------------------------------------------------------------


def test_request_id_returned_and_taken_from_the_client() -> None:
    gw, seen = gateway()
    with TestClient(create_app(gw), base_url="http://127.0.0.1") as http:
        first = http.post("/v1/chat/completions", json=CHAT)
        second = http.get("/health")
        assert first.status_code == 200
        ids = {first.headers["x-request-id"], second.headers["x-request-id"]}
        assert len(ids) == 2 and all(ids)
        kept = http.get("/v1/models", headers={"X-Request-Id": "client-abc.123:x/y"})
        assert kept.headers["x-request-id"] == "client-abc.123:x/y"
        for bad in ("has space", "x" * 129, "semi;colon", "ünicode".encode()):
            r = http.get("/v1/models", headers={"X-Request-Id": bad})
            assert r.headers["x-request-id"] not in (bad, "", "ünicode")
        missing = http.get("/nothing", headers={"X-Request-Id": "on-a-404"})
        assert missing.status_code == 404
        assert missing.headers["x-request-id"] == "on-a-404"
        gw.telemetry.flush()
    assert seen[0].request_id == first.headers["x-request-id"]


# --- log lines --------------------------------------------------------------------------------


def _record(trace: Trace | None = None, **extra: Any) -> logging.LogRecord:
    record = logging.LogRecord(
        "turnout.requests", logging.INFO, __file__, 1, "done %s", ("x",), None
    )
    if trace is not None:
        record.trace = trace
    record.__dict__.update(extra)
    return record


def test_json_line_of_a_real_request() -> None:
    gw, seen = gateway()
    with TestClient(create_app(gw), base_url="http://127.0.0.1") as http:
        response = http.post("/v1/chat/completions", json=CHAT, headers={"X-Request-Id": "r-1"})
        gw.telemetry.flush()
    assert response.status_code == 200
    line = json.loads(JsonFormatter().format(_record(seen[0])))
    assert line["level"] == "info" and line["logger"] == "turnout.requests"
    assert line["message"] == "done x"
    assert line["time"].endswith("Z") and "T" in line["time"]
    assert line["request_id"] == "r-1"
    assert line["model"] == "fast"
    assert line["backend"] == "local/m"
    assert line["outcome"] == "ok"
    assert line["latency_ms"] > 0 and line["overhead_ms"] >= 0
    assert [a["backend"] for a in line["attempts"]] == ["bad", "local"]
    assert [a["ok"] for a in line["attempts"]] == [False, True]
    assert (line["tokens_in"], line["tokens_out"]) == (5, 1)


def test_json_line_plain_fields_and_exceptions() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        record = _record(status=502, key="tk-abcdef", latency_ms=12.5)
        record.exc_info = sys.exc_info()
    line = json.loads(JsonFormatter().format(record))
    assert (line["status"], line["key"], line["latency_ms"]) == (502, "tk-abcdef", 12.5)
    assert "ValueError: boom" in line["exc_info"]
    text = TextFormatter().format(_record(request_id="r-9"))
    assert text.endswith("turnout.requests: done x [r-9]") and " INFO " in text


def test_configure_routes_uvicorn_through_one_handler() -> None:
    root = logging.getLogger()
    uvicorn_error = logging.getLogger("uvicorn.error")
    saved = (list(root.handlers), root.level, uvicorn_error.level)
    # a gateway served in this process before (uvicorn at log level warning) leaves the level
    uvicorn_error.setLevel(logging.NOTSET)
    try:
        handler = configure("json", "info")
        stream = io.StringIO()
        handler.setStream(stream)  # type: ignore[attr-defined]
        logging.getLogger("uvicorn.error").info("Started server process [%d]", 1)
        assert json.loads(stream.getvalue())["message"] == "Started server process [1]"
        with pytest.raises(ValueError, match="json"):
            configure("xml")
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
        uvicorn_error.setLevel(saved[2])


class _CountingStream(io.StringIO):
    writes = 0

    def write(self, text: str) -> int:
        self.writes += 1
        return super().write(text)


def test_the_request_log_writes_a_drains_lines_at_once() -> None:
    """A drained batch of 50 requests reaches stderr in one write, each line whole and in order;
    a record logged outside a batch is written as it comes."""
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    try:
        handler = configure("text", "info")
        stream = _CountingStream()
        handler.setStream(stream)  # type: ignore[attr-defined]
        traces = []
        for i in range(50):
            trace = Trace()
            trace.kind, trace.model, trace.method, trace.path = "chat", f"m{i}", "POST", "/x"
            trace.request_id = f"r-{i}"
            traces.append(trace)
        RequestLog()(traces)
        assert stream.writes == 1
        lines = stream.getvalue().splitlines()
        assert [line.rsplit("[", 1)[1] for line in lines] == [f"r-{i}]" for i in range(50)]
        assert all(f"model=m{i} " in line for i, line in enumerate(lines))
        logging.getLogger("turnout.test").warning("on its own")
        assert stream.writes == 2 and stream.getvalue().endswith("on its own\n")
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_serve_with_log_format_json(tmp_path: Path) -> None:
    """``turnout serve --log-format json`` for real: every line on stderr is one JSON object."""
    port = _free_port()
    config = tmp_path / "turnout.yaml"
    config.write_text("default_embedded: false\nproviders: {}\n")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    env.pop("OTEL_EXPORTER_OTLP_ENDPOINT", None)
    cmd = [sys.executable, "-m", "turnout", "serve", "--config", str(config),
           "--port", str(port), "--log-format", "json"]  # fmt: skip
    proc = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                r = httpx.get(f"http://127.0.0.1:{port}/health", headers={"X-Request-Id": "cli"})
                break
            except httpx.TransportError:
                assert proc.poll() is None and time.monotonic() < deadline, "serve did not start"
                time.sleep(0.2)
        assert r.headers["x-request-id"] == "cli"
        chat = {"model": "nowhere", "messages": [{"role": "user", "content": "hi"}]}
        refused = httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", json=chat,
                             headers={"X-Request-Id": "cli-chat"})  # fmt: skip
        assert refused.status_code == 404
        time.sleep(1.2)  # the drain writes the request's line within half a second
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    lines = [line for line in err.decode().splitlines() if line.strip()]
    assert lines, "serve logged nothing"
    parsed = [json.loads(line) for line in lines]  # fails on any line that is not JSON
    assert all({"time", "level", "logger", "message"} <= set(p) for p in parsed)
    assert any(p["logger"].startswith("uvicorn") for p in parsed)
    (line,) = [p for p in parsed if p["logger"] == "turnout.requests"]
    # one line a request, turnout's: uvicorn's access log (a second record for every response,
    # redacted and written on the request path) stays off
    assert not [p for p in parsed if p["logger"] == "uvicorn.access"], parsed
    assert line["request_id"] == "cli-chat"
    assert line["model"] == "nowhere" and line["outcome"] == "refused"  # a 4xx
    assert line["error"] == "model_not_found" and line["latency_ms"] > 0
    assert line["level"] == "info" and "model=nowhere" in line["message"]


# --- traces over OTLP ---------------------------------------------------------------------------


class Receiver(ThreadingHTTPServer):
    """An OTLP/HTTP trace receiver: decodes each ExportTraceServiceRequest it is sent."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.exports: list[ExportTraceServiceRequest] = []
        self.paths: list[str] = []


class _Handler(BaseHTTPRequestHandler):
    server: Receiver

    def do_POST(self) -> None:
        raw = self.rfile.read(int(self.headers["Content-Length"]))
        if self.headers.get("Content-Encoding") == "gzip":
            raw = gzip.decompress(raw)
        assert self.headers["Content-Type"] == "application/x-protobuf"
        request = ExportTraceServiceRequest()
        request.ParseFromString(raw)
        self.server.exports.append(request)
        self.server.paths.append(self.path)
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def _attrs(span: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for kv in span.attributes:
        value = kv.value
        kind = value.WhichOneof("value")
        if kind == "array_value":
            out[kv.key] = [getattr(v, v.WhichOneof("value")) for v in value.array_value.values]
        else:
            out[kv.key] = getattr(value, kind)
    return out


def test_one_trace_per_request_with_its_attempts(receiver: Receiver) -> None:
    endpoint = f"http://127.0.0.1:{receiver.server_address[1]}"
    gw, seen = gateway({"OTEL_EXPORTER_OTLP_ENDPOINT": endpoint})
    with TestClient(create_app(gw), base_url="http://127.0.0.1") as http:
        plain = http.post("/v1/chat/completions", json=CHAT)
        streamed = http.post("/v1/chat/completions", json={**CHAT, "stream": True})
        http.get("/health")  # not a model request: no trace
        refused = http.post("/v1/chat/completions", json={**CHAT, "model": "nope"})
    assert (plain.status_code, streamed.status_code, refused.status_code) == (200, 200, 404)
    # leaving the client closed the gateway, which sent every span still queued
    assert receiver.exports and set(receiver.paths) == {"/v1/traces"}
    spans = [
        (resource, span)
        for export in receiver.exports
        for resource in export.resource_spans
        for scope in resource.scope_spans
        for span in scope.spans
    ]
    service = {kv.key: kv.value.string_value for kv in spans[0][0].resource.attributes}
    assert service["service.name"] == "turnout"
    by_trace: dict[bytes, list[Any]] = {}
    for _, span in spans:
        by_trace.setdefault(span.trace_id, []).append(span)
    assert len(by_trace) == 3  # one trace per model request, none for /health
    roots = {}
    for trace_spans in by_trace.values():
        (root,) = [s for s in trace_spans if not s.parent_span_id]
        roots[_attrs(root)["turnout.request_id"]] = (root, trace_spans)
    for response in (plain, streamed):
        root, trace_spans = roots[response.headers["x-request-id"]]
        attrs = _attrs(root)
        assert root.name == "chat fast" and root.kind == root.SPAN_KIND_SERVER
        assert attrs["gen_ai.operation.name"] == "chat"
        assert attrs["gen_ai.request.model"] == "fast"
        assert attrs["gen_ai.response.model"] == "m"
        assert attrs["gen_ai.usage.input_tokens"] > 0
        # the whole reply's usage as the backend counted it; the stream's estimated (a chunk
        # a token: two)
        tokens = (5, 1) if response is plain else (attrs["gen_ai.usage.input_tokens"], 2)
        assert (attrs["gen_ai.usage.input_tokens"], attrs["gen_ai.usage.output_tokens"]) == tokens
        assert root.end_time_unix_nano > root.start_time_unix_nano
        assert abs(root.start_time_unix_nano / 1e9 - time.time()) < 60
        children = sorted(
            (s for s in trace_spans if s.parent_span_id), key=lambda s: s.start_time_unix_nano
        )
        assert [_attrs(c)["turnout.backend"] for c in children] == ["bad", "local"]
        assert all(c.parent_span_id == root.span_id for c in children)
        assert all(c.kind == c.SPAN_KIND_CLIENT for c in children)
        assert children[0].status.code == children[0].status.STATUS_CODE_ERROR
        assert _attrs(children[0])["error.type"] == "backend_unavailable"
        assert children[1].status.code != children[1].status.STATUS_CODE_ERROR
        for child in children:
            assert root.start_time_unix_nano <= child.start_time_unix_nano
            assert child.end_time_unix_nano <= root.end_time_unix_nano
    assert _attrs(roots[plain.headers["x-request-id"]][0])["gen_ai.response.finish_reasons"] == [
        "stop"
    ]
    assert _attrs(roots[plain.headers["x-request-id"]][0])["turnout.stream"] is False
    assert _attrs(roots[streamed.headers["x-request-id"]][0])["turnout.stream"] is True
    root, trace_spans = roots[refused.headers["x-request-id"]]
    assert root.status.code == root.status.STATUS_CODE_ERROR
    assert _attrs(root)["error.type"] == "model_not_found"
    assert len(trace_spans) == 1  # no backend was tried
    assert len(seen) == 3  # what telemetry recorded: the three model requests


def test_no_endpoint_no_exporter(receiver: Receiver) -> None:
    from turnout.telemetry import otel

    assert otel.from_environ({}) is None
    assert (
        otel.from_environ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://x", "OTEL_SDK_DISABLED": "true"})
        is None
    )
    exporter = otel.from_environ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://127.0.0.1:9/t"})
    assert exporter is not None
    exporter.provider.shutdown()
