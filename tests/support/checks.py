"""Invariants every OpenAI-shaped answer from turnout must keep, whichever backend served it.

Each check validates against OpenAI's OpenAPI schema first, then asserts what the schema cannot
say: ids and timestamps constant across a stream, exactly one finish, usage adding up.
"""

from __future__ import annotations

from typing import Any

from tests.support.openapi import assert_valid

__all__ = [
    "FINISH_REASONS",
    "check_chat",
    "check_chat_stream",
    "check_completion",
    "check_completion_stream",
    "check_error",
    "check_usage",
]

FINISH_REASONS = ("stop", "length")


def check_usage(usage: Any, *, max_completion: int | None = None) -> dict[str, int]:
    assert isinstance(usage, dict), f"no usage object: {usage!r}"
    prompt, completion, total = (
        usage["prompt_tokens"],
        usage["completion_tokens"],
        usage["total_tokens"],
    )
    assert all(isinstance(n, int) and not isinstance(n, bool) for n in (prompt, completion, total))
    assert prompt > 0, usage
    assert completion > 0, usage
    assert total == prompt + completion, usage
    if max_completion is not None:
        assert completion <= max_completion, usage
    return usage


def check_chat(body: dict[str, Any], *, max_tokens: int) -> dict[str, Any]:
    """A non-streamed chat completion; returns its one choice."""
    assert_valid(body, "CreateChatCompletionResponse")
    assert body["object"] == "chat.completion"
    assert body["id"]
    assert len(body["choices"]) == 1
    choice: dict[str, Any] = body["choices"][0]
    assert choice["index"] == 0
    assert choice["message"]["role"] == "assistant"
    assert isinstance(choice["message"]["content"], str)
    assert choice["finish_reason"] in FINISH_REASONS
    usage = check_usage(body["usage"], max_completion=max_tokens)
    if choice["finish_reason"] == "length":
        assert usage["completion_tokens"] == max_tokens, body
    return choice


def check_completion(body: dict[str, Any], *, max_tokens: int) -> dict[str, Any]:
    assert_valid(body, "CreateCompletionResponse")
    assert body["object"] == "text_completion"
    assert len(body["choices"]) == 1
    choice: dict[str, Any] = body["choices"][0]
    assert isinstance(choice["text"], str)
    assert choice["finish_reason"] in FINISH_REASONS
    usage = check_usage(body["usage"], max_completion=max_tokens)
    if choice["finish_reason"] == "length":
        assert usage["completion_tokens"] == max_tokens, body
    return choice


def _check_stream(
    events: list[dict[str, Any]], *, object_type: str, include_usage: bool
) -> tuple[list[dict[str, Any]], str, dict[str, Any] | None]:
    """Common stream invariants; returns the choice chunks, the finish reason and the usage."""
    assert events, "the stream carried no events"
    for key in ("id", "created", "model"):
        values = {e[key] for e in events}
        assert len(values) == 1, f"'{key}' changed within one stream: {values}"
    assert {e["object"] for e in events} == {object_type}
    with_choices = [e for e in events if e["choices"]]
    assert with_choices, "no chunk carried a choice"
    finishes = [
        (i, c["finish_reason"])
        for i, e in enumerate(with_choices)
        for c in e["choices"]
        if c["finish_reason"] is not None
    ]
    assert len(finishes) == 1, f"expected exactly one finish_reason, got {finishes}"
    position, reason = finishes[0]
    assert position == len(with_choices) - 1, "content arrived after the finish_reason"
    assert reason in FINISH_REASONS
    assert all(c["index"] == 0 for e in with_choices for c in e["choices"])
    usage_events = [e for e in events if e.get("usage")]
    if not include_usage:
        assert not usage_events, f"usage sent though not asked for: {usage_events}"
        assert len(with_choices) == len(events), "a chunk without choices though no usage asked"
        return with_choices, reason, None
    assert len(usage_events) == 1, f"expected one usage chunk, got {len(usage_events)}"
    last = events[-1]
    assert last is usage_events[0], "the usage chunk must be the last one"
    assert last["choices"] == []
    return with_choices, reason, last["usage"]


def check_chat_stream(
    events: list[dict[str, Any]], *, max_tokens: int, include_usage: bool
) -> dict[str, Any] | None:
    """A streamed chat completion (the events before ``[DONE]``); returns the usage, if asked."""
    for event in events:
        assert_valid(event, "CreateChatCompletionStreamResponse")
    chunks, reason, usage = _check_stream(
        events, object_type="chat.completion.chunk", include_usage=include_usage
    )
    assert chunks[0]["choices"][0]["delta"].get("role") == "assistant"
    contents = [c["choices"][0]["delta"].get("content") for c in chunks]
    pieces = [c for c in contents if c]
    assert len(pieces) <= max_tokens
    if usage is not None:
        check_usage(usage)
        if reason == "length":
            # Counted by re-tokenising the text, which may merge or split a token or two.
            assert abs(usage["completion_tokens"] - max_tokens) <= 2, usage
    return usage


def check_completion_stream(
    events: list[dict[str, Any]], *, max_tokens: int, include_usage: bool
) -> dict[str, Any] | None:
    for event in events:
        # OpenAI's schema types a text completion's finish_reason as a non-null enum though the
        # stream sends null until the end (the schema says streamed chunks share this shape);
        # validate everything else, with the null standing in for the final value.
        shown = {
            **event,
            "choices": [
                {**c, "finish_reason": c["finish_reason"] or "stop"} for c in event["choices"]
            ],
        }
        assert_valid(shown, "CreateCompletionResponse")
    chunks, reason, usage = _check_stream(
        events, object_type="text_completion", include_usage=include_usage
    )
    assert sum(1 for c in chunks if c["choices"][0]["text"]) <= max_tokens
    if usage is not None:
        check_usage(usage)
        if reason == "length":
            assert abs(usage["completion_tokens"] - max_tokens) <= 2, usage
    return usage


def check_error(
    body: Any,
    *,
    type: str,
    code: str | None,
    param: str | None = None,
) -> dict[str, Any]:
    """An OpenAI error body with all four keys, the expected type, code and param."""
    assert_valid(body, "ErrorResponse")
    assert set(body) == {"error"}
    error: dict[str, Any] = body["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    assert error["message"].strip(), error
    assert "Traceback" not in error["message"] and 'File "' not in error["message"], error
    assert (error["type"], error["code"], error["param"]) == (type, code, param), error
    return error
