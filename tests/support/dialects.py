"""Event-by-event checks of the streams turnout's Anthropic, Responses and Ollama fronts send,
against each vendor's documented schema and order (the documents are in tests/fixtures/<dialect>/,
their README says where each comes from):

- Anthropic: every event validates against the SDK's ``RawMessageStreamEvent`` schema
  (tests/fixtures/anthropic/schemas.json), its SSE name equals its ``type``, and the order is the
  documented one: ``message_start``; per block ``content_block_start`` (indices 0, 1, ... in
  turn), deltas of that block's kind only, ``content_block_stop``; ``message_delta`` after every
  block stopped; ``message_stop`` last; ``ping`` anywhere after ``message_start``; ``error`` ends
  the stream. A ``tool_use`` block's ``partial_json`` pieces join into a JSON object, and
  ``stop_reason`` is ``tool_use`` exactly when a ``tool_use`` block was sent.
- Responses: every event validates against OpenAI's ``ResponseStreamEvent`` schema
  (tests/fixtures/openai/schemas.json); ``sequence_number`` counts from 0; ``response.created``
  then ``response.in_progress`` first; each output item's events nest and close in order
  (``output_item.added`` ... ``output_item.done``), text deltas join into the ``.done`` text, and
  the final ``response.completed``/``incomplete``/``failed`` lists exactly the items done.
- Ollama: every line validates against the schemas written from docs/api.md
  (tests/fixtures/ollama/api_schemas.json): pieces with ``done: false``, then one ``done: true``
  line with the counters and durations (nanoseconds), or a last ``{"error"}`` line.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator

from tests.support.openapi import assert_valid
from turnout.wire.sse import SSEDecoder

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
JSON = dict[str, Any]
_DELTAS = {
    "text": {"text_delta", "citations_delta"},
    "tool_use": {"input_json_delta"},
    "thinking": {"thinking_delta", "signature_delta"},
}


@functools.cache
def _anthropic(name: str) -> Draft202012Validator:
    doc = json.loads((FIXTURES / "anthropic" / "schemas.json").read_text())
    return Draft202012Validator(doc["schemas"][name])


@functools.cache
def _ollama(name: str) -> Draft202012Validator:
    doc = json.loads((FIXTURES / "ollama" / "api_schemas.json").read_text())
    return Draft202012Validator({**doc["schemas"][name], "$defs": doc["schemas"]})


def sse_events(raw: bytes) -> list[tuple[str | None, JSON]]:
    """An SSE body as ``(event name, parsed data)`` pairs."""
    decoder = SSEDecoder()
    events = decoder.feed(raw) + decoder.close()
    return [(e.event, json.loads(e.data)) for e in events]


def check_anthropic_message(message: JSON) -> None:
    _anthropic("Message").validate(message)
    for key in ("stop_reason", "stop_sequence"):
        assert key in message, key
    for key in ("input_tokens", "output_tokens", "cache_read_input_tokens"):
        assert isinstance(message["usage"][key], int), key
    uses = [b for b in message["content"] if b["type"] == "tool_use"]
    assert (message["stop_reason"] == "tool_use") == bool(uses), message


def check_anthropic_error(body: JSON, kind: str) -> None:
    _anthropic("ErrorResponse").validate(body)
    assert body["type"] == "error" and body["error"]["type"] == kind, body


class _Blocks:
    """The content blocks of an Anthropic stream as its events build them, checking their order."""

    def __init__(self) -> None:
        self.blocks: list[JSON] = []
        self.open: int | None = None
        self.pieces: dict[int, str] = {}

    def start(self, data: JSON) -> None:
        assert self.open is None, "a block started inside another"
        assert data["index"] == len(self.blocks), "block indices count from 0"
        self.open = data["index"]
        self.blocks.append(dict(data["content_block"]))

    def delta(self, data: JSON) -> None:
        assert self.open is not None and data["index"] == self.open, "delta for a closed block"
        block, delta = self.blocks[self.open], data["delta"]
        assert delta["type"] in _DELTAS[block["type"]], (block["type"], delta["type"])
        if delta["type"] == "text_delta":
            block["text"] += delta["text"]
        elif delta["type"] == "thinking_delta":
            block["thinking"] += delta["thinking"]
        elif delta["type"] == "input_json_delta":
            self.pieces[self.open] = self.pieces.get(self.open, "") + delta["partial_json"]

    def stop(self, data: JSON) -> None:
        assert self.open is not None and data["index"] == self.open, "stop for a closed block"
        if self.blocks[self.open]["type"] == "tool_use":
            joined = self.pieces.get(self.open, "")
            self.blocks[self.open]["input"] = json.loads(joined) if joined else {}
            assert isinstance(self.blocks[self.open]["input"], dict)
        self.open = None


def check_anthropic_stream(events: list[tuple[str | None, JSON]]) -> JSON:
    """Check the events; return the message they add up to."""
    validator = _anthropic("RawMessageStreamEvent")
    assert events and events[0][1]["type"] == "message_start", events[:1]
    message: JSON = events[0][1]["message"]
    blocks = _Blocks()
    phase = "blocks"  # then "delta", then "stopped"
    for name, data in events:
        assert name == data["type"], (name, data)
        kind = data["type"]
        if kind == "error":
            _anthropic("ErrorResponse").validate(data)
            assert (name, data) == events[-1], "an error event ends the stream"
            return message
        assert phase != "stopped", f"{kind} after message_stop"
        if kind == "ping":  # documented as {"type": "ping"}; the SDK's event union leaves it out
            assert data == {"type": "ping"}, data
            continue
        validator.validate(data)
        if kind.startswith("content_block_"):
            assert phase == "blocks", f"{kind} after message_delta"
            getattr(blocks, kind.removeprefix("content_block_"))(data)
        elif kind == "message_delta":
            assert phase == "blocks" and blocks.open is None, "message_delta with a block open"
            phase = "delta"
            message = {**message, **data["delta"], "content": blocks.blocks}
            message["usage"] = {**message["usage"], **data["usage"]}
        elif kind == "message_stop":
            assert phase == "delta", "message_stop before message_delta"
            phase = "stopped"
    assert phase == "stopped", "the stream did not end with message_stop"
    check_anthropic_message(message)
    return message


@functools.cache
def _responses_events() -> dict[str, str]:
    """Each Responses event type -> the name of its schema in OpenAI's description."""
    doc = json.loads((FIXTURES / "openai" / "schemas.json").read_text())
    schemas = doc["components"]["schemas"]
    out = {}
    for ref in schemas["ResponseStreamEvent"]["anyOf"]:
        name = ref["$ref"].rsplit("/", 1)[-1]
        for kind in schemas[name]["properties"]["type"].get("enum", ()):
            out[kind] = name
    return out


def check_responses_stream(events: list[tuple[str | None, JSON]]) -> JSON:
    """Check the events; return the final response object."""
    types = [data["type"] for _, data in events]
    assert types[:2] == ["response.created", "response.in_progress"], types[:3]
    items: dict[int, JSON] = {}
    done: list[JSON] = []
    texts: dict[int, str] = {}
    for seq, (name, data) in enumerate(events):
        assert name is None or name == data["type"]
        assert data["sequence_number"] == seq, "sequence numbers count from 0 without gaps"
        assert_valid(data, _responses_events()[data["type"]])
        kind = data["type"]
        index = data.get("output_index")
        if kind == "response.output_item.added":
            assert index == len(done) and not items, "items open one at a time, in order"
            items[index] = data["item"]
            texts[index] = ""
        elif kind in (
            "response.output_text.delta",
            "response.function_call_arguments.delta",
            "response.reasoning_text.delta",
        ):
            assert index in items and data["item_id"] == items[index]["id"]
            texts[index] += data["delta"]
        elif kind in ("response.output_text.done", "response.reasoning_text.done"):
            assert data["text"] == texts[index]
        elif kind == "response.function_call_arguments.done":
            assert data["arguments"] == texts[index]
        elif kind == "response.output_item.done":
            assert index in items and data["item"]["id"] == items.pop(index)["id"]
            done.append(data["item"])
        elif kind in ("response.completed", "response.incomplete", "response.failed"):
            assert (name, data) == events[-1], f"{kind} must be the last event"
            assert not items, "an item was left open"
            final: JSON = data["response"]
            assert_valid(final, "Response")
            assert final["id"] == events[0][1]["response"]["id"]
            assert final["output"] == done
            return final
    raise AssertionError(f"the stream did not end with a final response event: {types[-3:]}")


def check_ollama_lines(lines: list[JSON], mode: str) -> JSON:
    """Check an NDJSON stream's objects; return the last (``done`` or ``error``) one."""
    assert lines, "no lines"
    *pieces, last = lines
    piece = "ChatChunk" if mode == "chat" else "GenerateChunk"
    for obj in pieces:
        _ollama(piece).validate(obj)
        assert obj["done"] is False
    if "error" in last:
        _ollama("Error").validate(last)
        return last
    _ollama("ChatDone" if mode == "chat" else "GenerateDone").validate(last)
    assert last["done"] is True
    return last


def check_ollama(obj: JSON, name: str) -> None:
    _ollama(name).validate(obj)
