"""Property-based fuzzing of every front (issue 15, item 5): request bodies generated from the
request schemas of turnout's own ``/openapi.json`` (OpenAI's schemas for the OpenAI and Responses
fronts, turnout's for Anthropic and Ollama; tests/support/schema_fuzz.py), valid and broken in
the ways clients get them wrong, sent to a real ``turnout serve`` over a fast fake backend that
answers anything (tests/fakes/fast.py). Whatever the body, turnout answers below 500 (a 4xx in
the front's dialect for what it refuses), never ends a stream on an internal error, and logs no
traceback.

``TURNOUT_FUZZ_EXAMPLES`` requests per front (default 500, what CI runs; the benchmark harness
runs 5,000). Derandomized, so CI sees the same bodies each run; set ``TURNOUT_FUZZ_SEED`` to
explore others. Each failure found is kept below as an explicit ``@example``."""

from __future__ import annotations

import http.client
import os
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import orjson
import pytest
from hypothesis import HealthCheck, given, seed, settings, strategies as st

from tests.fakes.fast import MODEL, run_fast
from tests.support.gateway_process import Served, serve_process
from tests.support.schema_fuzz import broken, from_schema
from turnout.server.app import routes
from turnout.server.openapi import document

EXAMPLES = int(os.environ.get("TURNOUT_FUZZ_EXAMPLES", "500"))
SEED = int(os.environ.get("TURNOUT_FUZZ_SEED", "0"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=not SEED,
    database=None,
    suppress_health_check=list(HealthCheck),
)
SCHEMAS: dict[str, Any] = document(routes(), version="fuzz")["components"]["schemas"]
#: path -> (the request schema, the error dialect)
FRONTS = {
    "/v1/chat/completions": ("CreateChatCompletionRequest", "openai"),
    "/v1/completions": ("CreateCompletionRequest", "openai"),
    "/v1/embeddings": ("CreateEmbeddingRequest", "openai"),
    "/v1/responses": ("CreateResponse", "openai"),
    "/v1/messages": ("AnthropicMessagesRequest", "anthropic"),
    "/api/chat": ("OllamaChatRequest", "ollama"),
    "/api/generate": ("OllamaGenerateRequest", "ollama"),
}


#: path -> status -> how many generated requests got it
STATUSES: dict[str, Counter[int]] = {path: Counter() for path in FRONTS}


class Gateway:
    """The running gateway, one kept-alive connection to it."""

    def __init__(self, served: Served) -> None:
        self.served = served
        url = urlsplit(served.url)
        self.host, self.port = url.hostname or "127.0.0.1", url.port or 80
        self.conn = http.client.HTTPConnection(self.host, self.port, timeout=30)
        self.sent = 0

    def post(self, path: str, body: Any) -> tuple[int, bytes]:
        raw = orjson.dumps(body)
        headers = {"Content-Type": "application/json"}
        for attempt in range(2):
            try:
                self.conn.request("POST", path, raw, headers)
                response = self.conn.getresponse()
                self.sent += 1
                return response.status, response.read()
            except (http.client.HTTPException, ConnectionError):
                self.conn.close()  # the server closed a kept-alive connection: a new one
                self.conn = http.client.HTTPConnection(self.host, self.port, timeout=30)
                if attempt:
                    raise
        raise AssertionError("unreachable")


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    config = {
        "providers": {"fast": {"type": "openai", "endpoint": "", "models": [MODEL]}},
        "health": {"enabled": False},
        "discovery": {"enabled": False},
    }
    tmp: Path = tmp_path_factory.mktemp("fuzz")
    with run_fast() as fast:
        config["providers"]["fast"]["endpoint"] = fast.url
        with serve_process(tmp, config) as served:
            yield Gateway(served)
            _no_traceback(served)


def _no_traceback(served: Served) -> None:
    log = served.log_text()
    for sign in ("Traceback", "Exception in ASGI", "unhandled error"):
        assert sign not in log, log[-4000:]


def _named(body: Any) -> Any:
    """The bodies name the model the fake serves (else nearly all would be a 404); `broken`
    then drops or changes it in some."""
    if isinstance(body, dict):
        return {**body, "model": MODEL}
    return body


def bodies(path: str) -> st.SearchStrategy[Any]:
    schema = SCHEMAS[FRONTS[path][0]]
    return broken(from_schema(schema, SCHEMAS).map(_named))


def check(gateway: Gateway, path: str, body: Any) -> None:
    status, raw = gateway.post(path, body)
    STATUSES[path][status] += 1
    assert status < 500, (status, raw[:2000], body)
    if status >= 400:
        error = orjson.loads(raw)
        dialect = FRONTS[path][1]
        if dialect == "anthropic":
            assert error["type"] == "error" and error["error"]["message"], error
        elif dialect == "ollama":
            assert isinstance(error["error"], str) and error["error"], error
        else:
            assert error["error"]["message"], error
    assert b"internal_error" not in raw, (raw[-2000:], body)


def _fuzz(path: str) -> Any:
    @FUZZ
    @given(body=bodies(path))
    def run(gateway: Gateway, body: Any) -> None:
        check(gateway, path, body)

    return seed(SEED)(run) if SEED else run


test_openai_chat = _fuzz("/v1/chat/completions")
test_openai_completions = _fuzz("/v1/completions")
test_openai_embeddings = _fuzz("/v1/embeddings")
test_responses = _fuzz("/v1/responses")
test_anthropic_messages = _fuzz("/v1/messages")
test_ollama_chat = _fuzz("/api/chat")
test_ollama_generate = _fuzz("/api/generate")


def test_the_fuzzing_reached_the_backend(gateway: Gateway) -> None:
    """Not everything was refused: the generated bodies include valid ones for every front
    (and the plain request of each front is answered)."""
    print({path: dict(sorted(counts.items())) for path, counts in STATUSES.items()})
    for path, counts in STATUSES.items():
        if sum(counts.values()) >= EXAMPLES:  # fuzzed in this run
            assert counts[200] >= EXAMPLES // 50, (path, counts)
            assert sum(n for status, n in counts.items() if 400 <= status < 500), (path, counts)
    ok = 0
    for path in FRONTS:
        body = {
            "/v1/chat/completions": {"model": MODEL, "messages": [{"role": "user",
                                                                    "content": "x"}]},
            "/v1/completions": {"model": MODEL, "prompt": "x"},
            "/v1/embeddings": {"model": MODEL, "input": "x"},
            "/v1/responses": {"model": MODEL, "input": "x"},
            "/v1/messages": {"model": MODEL, "max_tokens": 4,
                             "messages": [{"role": "user", "content": "x"}]},
            "/api/chat": {"model": MODEL, "messages": [{"role": "user", "content": "x"}]},
            "/api/generate": {"model": MODEL, "prompt": "x"},
        }[path]  # fmt: skip
        status, _ = gateway.post(path, body)
        ok += status == 200
    assert ok == len(FRONTS)
    _no_traceback(gateway.served)
