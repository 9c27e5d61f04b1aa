"""Property-based fuzzing of every front (issue 15, item 5): request bodies generated from the
request schemas of turnout's own ``/openapi.json`` (OpenAI's schemas for the OpenAI and Responses
fronts, turnout's for Anthropic and Ollama; tests/support/schema_fuzz.py), valid and broken in
the ways clients get them wrong, sent to a real ``turnout serve`` over a fast fake backend that
answers anything (tests/fakes/fast.py). Whatever the body, turnout answers below 500 (a 4xx in
the front's dialect for what it refuses), never ends a stream on an internal error, and logs no
traceback.

``TURNOUT_FUZZ_EXAMPLES`` requests per front (default 500, what CI runs; the benchmark harness
runs 5,000). Derandomized, so CI sees the same bodies each run; set ``TURNOUT_FUZZ_SEED`` to
explore others. Each failure found is kept below as an explicit ``@example``. What the test
shares with bench/fuzz.py (the fronts, the bodies, what counts as wrong) is in
tests/support/front_fuzz.py."""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given

from tests.fakes.fast import run_fast
from tests.support.front_fuzz import (
    FRONTS,
    PLAIN,
    Gateway,
    bodies,
    fuzz_config,
    fuzz_settings,
    log_problems,
    problem,
)
from tests.support.gateway_process import Served, serve_process

EXAMPLES = int(os.environ.get("TURNOUT_FUZZ_EXAMPLES", "500"))
SEED = int(os.environ.get("TURNOUT_FUZZ_SEED", "0"))
FUZZ = fuzz_settings(EXAMPLES, SEED)

#: path -> status -> how many generated requests got it
STATUSES: dict[str, Counter[int]] = {path: Counter() for path in FRONTS}


class Fuzzed(Gateway):
    """The running gateway and its process (for its log), one kept-alive connection to it."""

    def __init__(self, served: Served) -> None:
        super().__init__(served.url)
        self.served = served


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fuzzed]:
    tmp: Path = tmp_path_factory.mktemp("fuzz")
    with run_fast() as fast, serve_process(tmp, fuzz_config(fast.url)) as served:
        yield Fuzzed(served)
        _no_traceback(served)


def _no_traceback(served: Served) -> None:
    log = served.log_text()
    assert not log_problems(log), log[-4000:]


def check(gateway: Gateway, path: str, body: Any) -> None:
    status, raw = gateway.post(path, body)
    STATUSES[path][status] += 1
    wrong = problem(path, status, raw)
    assert wrong is None, (wrong, raw[:2000], body)


def _fuzz(path: str) -> Any:
    @FUZZ
    @given(body=bodies(path))
    def run(gateway: Gateway, body: Any) -> None:
        check(gateway, path, body)

    return run


test_openai_chat = _fuzz("/v1/chat/completions")
test_openai_completions = _fuzz("/v1/completions")
test_openai_embeddings = _fuzz("/v1/embeddings")
test_responses = _fuzz("/v1/responses")
test_anthropic_messages = _fuzz("/v1/messages")
test_ollama_chat = _fuzz("/api/chat")
test_ollama_generate = _fuzz("/api/generate")


def test_the_fuzzing_reached_the_backend(gateway: Fuzzed) -> None:
    """Not everything was refused: the generated bodies include valid ones for every front
    (and the plain request of each front is answered)."""
    print({path: dict(sorted(counts.items())) for path, counts in STATUSES.items()})
    for path, counts in STATUSES.items():
        if sum(counts.values()) >= EXAMPLES:  # fuzzed in this run
            assert counts[200] >= EXAMPLES // 50, (path, counts)
            assert sum(n for status, n in counts.items() if 400 <= status < 500), (path, counts)
    ok = sum(gateway.post(path, body)[0] == 200 for path, body in PLAIN.items())
    assert ok == len(FRONTS)
    _no_traceback(gateway.served)
