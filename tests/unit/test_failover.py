"""Failover mid-stream (a route's ``stream_failover: continue``) with in-memory backends: the
continuation request, how its text is fitted to what was sent, and the router's two attempts."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.unit.test_routing import MemoryProvider
from turnout.config import RouteConfig
from turnout.errors import BackendTimeoutError, BackendUnavailableError, GatewayError
from turnout.routing import Catalog, Router
from turnout.routing.failover import CONTINUE, _Answer, continuable, continuation, joined
from turnout.telemetry import Trace
from turnout.wire.types import JSON, Call, Chunk

ASK = [{"role": "user", "content": "Count"}]


def _chunk(content: str | None = None, finish: str | None = None, **delta: Any) -> JSON:
    if content is not None:
        delta["content"] = content
    return {
        "id": "chatcmpl-x",
        "object": "chat.completion.chunk",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }


class Chat(MemoryProvider):
    """Streams OpenAI chunks: each outcome a list of chunk objects or errors (raised there)."""

    async def stream(self, call: Call) -> AsyncIterator[Chunk]:
        outcome = self._next(call)
        assert isinstance(outcome, list)
        for item in outcome:
            if isinstance(item, GatewayError):
                raise item
            yield Chunk({**item, "id": f"{item['id']}-{self.name}", "model": call.model})


def _cut(*words: str, error: GatewayError | None = None) -> list[Any]:
    return [
        _chunk(role="assistant", content=""),
        *(_chunk(w) for w in words),
        error or BackendUnavailableError("backend 'a' closed the connection", backend="a"),
    ]


def _whole(*words: str) -> list[Any]:
    return [_chunk(role="assistant", content=""), *(_chunk(w) for w in words), _chunk("", "stop")]


async def _router(
    a: list[Any], b: list[Any] | None, failover: str = "continue"
) -> tuple[Router, Chat, Chat]:
    first, second = Chat("a", ["m"], outcomes=[a]), Chat("b", ["m"], outcomes=[b] if b else [])
    targets = [{"provider": "a", "model": "m"}] + ([{"provider": "b", "model": "m"}] if b else [])
    route = RouteConfig(targets=targets, stream_failover=failover)  # type: ignore[arg-type]
    catalog = Catalog({"a": first, "b": second}, routes={"r": route})
    await catalog.refresh()
    return Router(catalog), first, second


async def _read(router: Router, body: JSON, trace: Trace) -> list[JSON]:
    chunks, _ = await router.stream("chat", body, trace=trace)
    return [c.data async for c in chunks]


def _text(chunks: list[JSON]) -> str:
    return "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])


async def test_a_stream_cut_mid_way_is_finished_by_the_next_target() -> None:
    router, _, b = await _router(_cut("One,", " two,"), _whole("three", ", four."))
    trace = Trace()
    body = {"model": "r", "messages": ASK, "stream": True, "max_tokens": 10}
    chunks = await _read(router, body, trace)
    assert _text(chunks) == "One, two, three, four."
    assert {c["id"] for c in chunks} == {"chatcmpl-x-a"}  # one completion, as the client sees it
    assert [c["choices"][0]["delta"].get("role") for c in chunks].count("assistant") == 1
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    sent = b.calls[0].body
    assert sent["messages"] == [
        *ASK,
        {"role": "assistant", "content": "One, two,"},
        {"role": "user", "content": CONTINUE},
    ]
    assert sent["max_tokens"] == 8  # what is left of the request's 10
    assert [(name, ok, code) for name, _, ok, code, _, _ in trace.attempts] == [
        ("a", False, "backend_unavailable"),
        ("b", True, None),
    ]
    assert trace.backend == "b"


async def test_an_idle_timeout_is_continued_too_and_a_restart_is_not_repeated() -> None:
    stall = BackendTimeoutError("backend 'a' sent nothing for 1s", backend="a")
    router, _, _ = await _router(_cut("The sky", error=stall), _whole("The sky", " is blue."))
    chunks = await _read(router, {"model": "r", "messages": ASK, "stream": True}, Trace())
    assert _text(chunks) == "The sky is blue."


async def test_without_the_option_the_failure_reaches_the_client() -> None:
    router, _, b = await _router(_cut("One"), _whole("two"), failover="error")
    with pytest.raises(BackendUnavailableError):
        await _read(router, {"model": "r", "messages": ASK, "stream": True}, Trace())
    assert not b.calls


async def test_tool_calls_or_no_next_target_end_with_the_failure() -> None:
    call = {"index": 0, "id": "c1", "type": "function", "function": {"name": "f", "arguments": ""}}
    tools = [_chunk(role="assistant", tool_calls=[call]), BackendUnavailableError("gone")]
    router, _, b = await _router(tools, _whole("two"))
    trace = Trace()
    with pytest.raises(BackendUnavailableError):
        await _read(router, {"model": "r", "messages": ASK, "stream": True}, trace)
    assert not b.calls
    router, _, _ = await _router(_cut("One"), None)
    trace = Trace()
    with pytest.raises(BackendUnavailableError, match="closed the connection"):
        await _read(router, {"model": "r", "messages": ASK, "stream": True}, trace)
    assert [ok for _, _, ok, _, _, _ in trace.attempts] == [False]  # a cut stream never succeeds


def test_continuation_requests() -> None:
    chat = {"model": "r", "messages": ASK, "max_completion_tokens": 3}
    assert continuation("chat", chat, "", 0) == chat  # nothing sent yet: the request again
    assert continuation("chat", chat, "a b c d", 4)["max_completion_tokens"] == 1
    text = {"model": "r", "prompt": "Once upon", "max_tokens": 9}
    assert continuation("completion", text, " a time", 2) == {
        "model": "r",
        "prompt": "Once upon a time",
        "max_tokens": 7,
    }
    assert continuation("completion", {**text, "prompt": ["Once"]}, " upon", 1)["prompt"] == [
        "Once upon"
    ]
    assert continuable("chat", chat) and continuable("completion", text)
    assert not continuable("chat", {**chat, "n": 2})
    assert not continuable("completion", {**text, "echo": True})
    assert not continuable("completion", {**text, "prompt": ["a", "b"]})
    assert not continuable("embedding", {"model": "r", "input": "x"})


@pytest.mark.parametrize(
    ("before", "text", "out"),
    [
        ("The sky", "is blue", " is blue"),
        ("The sky.", "It is", " It is"),
        ("The sky ", "is", "is"),
        ("The sky", " is", " is"),
        ("The sky", ", blue", ", blue"),
        ("", "is", "is"),
        ("(", "is", "is"),
    ],
)
def test_a_space_joins_two_words_a_break_split(before: str, text: str, out: str) -> None:
    assert joined(before, text) == out


@pytest.mark.parametrize(
    ("sent", "parts", "out"),
    [
        ("The sky", ["The", " sky", " is", " blue"], " is blue"),  # a restart: dropped
        ("The sky", ["is", " blue"], " is blue"),  # a real continuation
        ("The", ["There", " is"], " There is"),  # not a restart: a longer word
        ("The sky", ["The", " cat"], " The cat"),  # began like it, then went elsewhere
        ("The sky", ["The"], ""),  # ended while it still repeated: nothing new
    ],
)
def test_a_continuation_that_restarts_the_answer_is_not_repeated(
    sent: str, parts: list[str], out: str
) -> None:
    answer = _Answer("chat")
    answer.note(Chunk(_chunk(sent)))
    answer.resume()
    fitted = [answer.fit(Chunk(_chunk(p))) for p in parts]
    assert "".join(c.data["choices"][0]["delta"]["content"] for c in fitted if c) == out
