"""What the fuzzing of the fronts (issue 15, item 5) shares between CI's test
(tests/integration/test_fuzz.py, 500 requests per front) and the benchmark harness's run
(bench/fuzz.py, 5,000): the fronts and their request schemas from turnout's own
``/openapi.json``, the generated bodies (tests/support/schema_fuzz.py), the gateway's
configuration over the fast fake (tests/fakes/fast.py), a kept-alive client, and what counts as
a wrong answer or a wrong log.
"""

from __future__ import annotations

import http.client
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import orjson
from hypothesis import HealthCheck, given, seed, settings, strategies as st

from tests.fakes.fast import MODEL
from tests.support.schema_fuzz import broken, from_schema
from turnout.server.app import routes
from turnout.server.openapi import document

__all__ = [
    "FRONTS",
    "LOG_SIGNS",
    "PLAIN",
    "SCHEMAS",
    "Gateway",
    "bodies",
    "fuzz_config",
    "fuzz_settings",
    "log_problems",
    "problem",
    "run_front",
]

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
#: path -> the plain request of that front, which must be answered
PLAIN: dict[str, dict[str, Any]] = {
    "/v1/chat/completions": {"model": MODEL, "messages": [{"role": "user", "content": "x"}]},
    "/v1/completions": {"model": MODEL, "prompt": "x"},
    "/v1/embeddings": {"model": MODEL, "input": "x"},
    "/v1/responses": {"model": MODEL, "input": "x"},
    "/v1/messages": {"model": MODEL, "max_tokens": 4,
                     "messages": [{"role": "user", "content": "x"}]},
    "/api/chat": {"model": MODEL, "messages": [{"role": "user", "content": "x"}]},
    "/api/generate": {"model": MODEL, "prompt": "x"},
}  # fmt: skip
#: what an unhandled exception leaves in the gateway's log
LOG_SIGNS = ("Traceback", "Exception in ASGI", "unhandled error")


def fuzz_config(backend: str) -> dict[str, Any]:
    """The gateway's configuration: the fast fake at ``backend`` as the only provider."""
    return {
        "providers": {"fast": {"type": "openai", "endpoint": backend, "models": [MODEL]}},
        "health": {"enabled": False},
        "discovery": {"enabled": False},
    }


def fuzz_settings(examples: int, seed_: int = 0) -> Callable[[Any], Any]:
    """Hypothesis's settings for ``examples`` requests: derandomized (the same bodies each run)
    unless a seed is given, no example database, no deadline, no health check."""
    fuzz = settings(
        max_examples=examples,
        deadline=None,
        derandomize=not seed_,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    return (lambda f: seed(seed_)(fuzz(f))) if seed_ else fuzz


class Gateway:
    """The running gateway, one kept-alive connection to it."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
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

    def close(self) -> None:
        self.conn.close()


def _named(body: Any) -> Any:
    """The bodies name the model the fake serves (else nearly all would be a 404); `broken`
    then drops or changes it in some."""
    if isinstance(body, dict):
        return {**body, "model": MODEL}
    return body


def _with_input(body: Any) -> Any:
    """OpenAI's CreateResponse schema lets ``input`` be absent (a stored conversation goes on
    from ``previous_response_id``); turnout, stateless by default, refuses that with a 400 naming
    ``input``. Generated bodies without one get a short one, so that most reach the backend."""
    if isinstance(body, dict) and body.get("input") is None:
        return {**body, "input": "x"}
    return body


def bodies(path: str) -> st.SearchStrategy[Any]:
    """Request bodies for the front at ``path``: valid by its schema, often broken in one place."""
    schema = SCHEMAS[FRONTS[path][0]]
    valid = from_schema(schema, SCHEMAS).map(_named)
    if path == "/v1/responses":
        valid = valid.map(_with_input)
    return broken(valid)


def problem(path: str, status: int, raw: bytes) -> str | None:
    """What is wrong with the front's answer to a generated body, or None. The fast fake answers
    whatever it can parse, so any 5xx is turnout's own; a refusal must be a 4xx in the front's
    error dialect; no answer may carry an internal error."""
    if status >= 500:
        return f"HTTP {status}"
    if b"internal_error" in raw:
        return "internal_error in the answer"
    if status < 400:
        return None
    try:
        error = orjson.loads(raw)
        dialect = FRONTS[path][1]
        if dialect == "anthropic":
            ok = error["type"] == "error" and bool(error["error"]["message"])
        elif dialect == "ollama":
            ok = isinstance(error["error"], str) and bool(error["error"])
        else:
            ok = bool(error["error"]["message"])
    except (orjson.JSONDecodeError, KeyError, TypeError):
        ok = False
    return None if ok else f"HTTP {status} not in the {FRONTS[path][1]} error dialect"


def log_problems(log: str) -> int:
    """How many signs of an unhandled exception the gateway's log holds."""
    return sum(log.count(sign) for sign in LOG_SIGNS)


def run_front(path: str, examples: int, each: Callable[[Any], None], seed_: int = 0) -> None:
    """Call ``each`` with ``examples`` bodies generated for the front at ``path``, by the same
    strategy as CI's test (Hypothesis derives the derandomized bodies from the test function, so
    these are not CI's 500 bodies but more of their kind)."""

    @fuzz_settings(examples, seed_)
    @given(body=bodies(path))
    def run(body: Any) -> None:
        each(body)

    run()
