"""A fake Anthropic Messages API. Anthropic's service cannot be reached from here, so turnout's
Anthropic dialect is tested against this stand-in, which follows the documented wire format
(shared/reference/runtimes.md §2: anthropics/anthropic-sdk-python @009b035 ``types/*``, and
Anthropic's "Messages", "Messages streaming", "Errors" and "Rate limits" docs). The official
``anthropic`` SDK parses everything it sends (tests/integration/test_cloud_gateway.py checks).

- ``POST /v1/messages`` needs ``x-api-key`` (or ``Authorization: Bearer``, which the SDK sends;
  else 401 ``authentication_error``, ``invalid x-api-key``) and ``anthropic-version`` (else
  400). It answers ``{id: "msg_…", type: "message",
  role: "assistant", model, content: [blocks], stop_reason, stop_sequence, usage: {input_tokens,
  cache_creation_input_tokens, cache_read_input_tokens, output_tokens, service_tier}}``.
- It validates as the API does, with its messages (``<field path>: <reason>``): ``model``,
  ``max_tokens`` and ``messages`` required; unknown top-level fields refused (``Extra inputs are
  not permitted``); roles ``user``/``assistant`` only (a system message inside ``messages`` is
  refused); text blocks non-empty; image sources ``base64`` (media_type jpeg/png/gif/webp, valid
  base64) or ``url``; ``tool_use`` only from the assistant, ``input`` an object; every
  ``tool_use`` answered by a ``tool_result`` in the next (user) message, first in it, and every
  ``tool_result`` matching a ``tool_use`` of the previous message; tools need ``name`` and an
  ``input_schema`` of type object; ``tool_choice`` ``auto``/``any``/``tool``(+``name``)/``none``;
  ``temperature`` 0–1. An unknown model is 404 ``not_found_error`` (``model: <name>``).
- A stream (``stream: true``) is ``text/event-stream``: ``event: <type>`` / ``data: <json>``
  pairs, in the documented order: ``message_start`` (usage with input tokens, ``output_tokens``
  1), per block ``content_block_start`` / ``content_block_delta`` (``text_delta``; for tool use
  ``input_json_delta`` starting with an empty ``partial_json``) / ``content_block_stop``, a
  ``ping`` after the first block start, ``message_delta`` (``stop_reason``, cumulative
  ``usage.output_tokens``), ``message_stop``. Bytes are written in uneven pieces.
- Errors are ``{"type": "error", "error": {"type", "message"}, "request_id"}`` with the
  documented statuses (400 ``invalid_request_error``, 401, 403 ``permission_error``, 404, 413
  ``request_too_large``, 429 ``rate_limit_error`` with ``retry-after``, 500 ``api_error``, 529
  ``overloaded_error``). Mid-stream, an error is ``event: error`` with the same body, and the
  stream ends. Every reply carries ``request-id`` and ``anthropic-ratelimit-*`` headers.
- ``GET /v1/models`` lists ``{type: "model", id, display_name, created_at}`` with ``has_more``,
  ``first_id``, ``last_id``, paged by ``limit`` and ``after_id``.

Deterministic model: a token is a word. It answers ``You said: <last user text>``, cut to
``max_tokens`` words (``max_tokens``) or before a stop sequence (``stop_sequence``). Offered
tools (and not ``tool_choice: none``) after a user text, it calls the first tool (or the one
``tool_choice`` names) with ``tool_input``, after a short text unless the tool was forced; after a
tool result it answers ``The tool said: <result>``. ``cache_read`` sets
``cache_read_input_tokens``. Tests make it fail with `fail` / `fail_midstream` / `cut_stream`.
"""

from __future__ import annotations

import base64
import binascii
import re
import time
from collections.abc import Sequence
from typing import Any

import orjson
from aiohttp import web

from .cloud import BODY, FakeCloud, Reject, cut_words, request_id, serve, words

__all__ = ["DEFAULT_MODELS", "FakeAnthropic", "run_fake_anthropic"]

DEFAULT_MODELS = (
    ("claude-sonnet-4-5-20250929", "Claude Sonnet 4.5", "2025-09-29T00:00:00Z"),
    ("claude-haiku-4-5-20251001", "Claude Haiku 4.5", "2025-10-01T00:00:00Z"),
)
_TOP_LEVEL = frozenset(
    {
        "model", "messages", "max_tokens", "system", "stop_sequences", "temperature", "top_p",
        "top_k", "stream", "metadata", "tools", "tool_choice", "thinking", "service_tier",
    }
)  # fmt: skip
_MEDIA = ("image/jpeg", "image/png", "image/gif", "image/webp")
_STATUS_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    504: "timeout_error",
    529: "overloaded_error",
}
_TAG = "Input tag '{}' found using 'type' does not match any of the expected tags"
_TOOL_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,128}$")


def _bad(message: str) -> Reject:
    return Reject(
        400, {"type": "error", "error": {"type": "invalid_request_error", "message": message}}
    )


class FakeAnthropic(FakeCloud):
    name = "anthropic"

    def __init__(
        self,
        models: Sequence[tuple[str, str, str]] = DEFAULT_MODELS,
        *,
        tool_input: dict[str, Any] | None = None,
        cache_read: int = 0,
        api_key: str = "test-key",
    ) -> None:
        super().__init__(api_key=api_key)
        self.models = list(models)
        self.tool_input = dict(tool_input or {"location": "Paris, FR", "unit": "celsius"})
        self.cache_read = cache_read

    def error_body(self, status: int, message: str, kind: str | None) -> dict[str, Any]:
        kind = kind or _STATUS_TYPES.get(status, "api_error")
        return {
            "type": "error",
            "error": {"type": kind, "message": message},
            "request_id": request_id("req_"),
        }

    def stream_error_body(self, message: str, kind: str | None) -> dict[str, Any]:
        return {
            "type": "error",
            "error": {"type": kind or "overloaded_error", "message": message or "Overloaded"},
        }

    def response_headers(self) -> dict[str, str]:
        reset = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 60))
        return {
            "request-id": request_id("req_"),
            "anthropic-ratelimit-requests-limit": "50",
            "anthropic-ratelimit-requests-remaining": "49",
            "anthropic-ratelimit-requests-reset": reset,
            "anthropic-ratelimit-tokens-limit": "50000",
            "anthropic-ratelimit-tokens-remaining": "49000",
            "anthropic-ratelimit-tokens-reset": reset,
        }

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/v1/messages", self._messages)
        app.router.add_get("/v1/models", self._list)

    def _auth(self, request: web.Request) -> None:
        bearer = request.headers.get("authorization", "").removeprefix("Bearer ")
        if self.api_key not in (request.headers.get("x-api-key"), bearer):
            raise Reject(401, self.error_body(401, "invalid x-api-key", None))
        if not request.headers.get("anthropic-version"):
            raise _bad("anthropic-version: header is required")

    async def _list(self, request: web.Request) -> web.Response:
        self._auth(request)
        limit = int(request.query.get("limit", "20"))
        if not 1 <= limit <= 1000:
            raise _bad("limit: Input should be less than or equal to 1000")
        ids = [m[0] for m in self.models]
        after = request.query.get("after_id")
        start = ids.index(after) + 1 if after in ids else 0
        page = self.models[start : start + limit]
        data = [{"type": "model", "id": i, "display_name": n, "created_at": c} for i, n, c in page]
        body = {
            "data": data,
            "has_more": start + limit < len(ids),
            "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None,
        }
        return web.json_response(body, headers=self.response_headers())

    async def _messages(self, request: web.Request) -> web.StreamResponse:
        self._auth(request)
        failure = self.take_failure()
        if failure is not None:
            raise Reject(
                failure.status, failure.body, {**self.response_headers(), **failure.headers}
            )
        body = request[BODY]
        if not isinstance(body, dict):
            raise _bad("There was an issue with your request body: it is not a JSON object")
        self._check(body)
        if body["model"] not in [m[0] for m in self.models]:
            raise Reject(404, self.error_body(404, f"model: {body['model']}", None))
        message = self._answer(body)
        if not body.get("stream"):
            self.sent.append([message])
            return web.json_response(message, headers=self.response_headers())
        return await self._stream(request, message)

    # Validation, as the API reports it.

    def _check(self, body: dict[str, Any]) -> None:
        for key in ("model", "max_tokens", "messages"):
            if key not in body:
                raise _bad(f"{key}: Field required")
        for key in body:
            if key not in _TOP_LEVEL:
                raise _bad(f"{key}: Extra inputs are not permitted")
        if not isinstance(body["max_tokens"], int) or body["max_tokens"] < 1:
            raise _bad("max_tokens: Input should be greater than or equal to 1")
        temperature = body.get("temperature")
        if temperature is not None and not 0 <= temperature <= 1:
            raise _bad("temperature: Input should be less than or equal to 1")
        system = body.get("system")
        if system is not None and not isinstance(system, str | list):
            raise _bad("system: Input should be a valid string or list of text blocks")
        stops = body.get("stop_sequences")
        if stops is not None and not (
            isinstance(stops, list) and all(isinstance(s, str) for s in stops)
        ):
            raise _bad("stop_sequences: Input should be a valid list of strings")
        self._check_tools(body)
        messages = body["messages"]
        if not isinstance(messages, list) or not messages:
            raise _bad("messages: at least one message is required")
        uses: set[str] = set()  # tool_use ids of the previous message, each to be answered
        for i, message in enumerate(messages):
            uses = self._check_message(i, message, uses, last=i == len(messages) - 1)

    def _check_message(self, i: int, message: Any, uses: set[str], *, last: bool) -> set[str]:
        where = f"messages.{i}"
        role = message.get("role") if isinstance(message, dict) else None
        if role not in ("user", "assistant"):
            raise _bad(f"{where}.role: Input should be 'user' or 'assistant'")
        for key in message:
            if key not in ("role", "content"):
                raise _bad(f"{where}.{key}: Extra inputs are not permitted")
        content = message.get("content")
        blocks = [{"type": "text", "text": content}] if isinstance(content, str) else content
        if not isinstance(blocks, list):
            raise _bad(f"{where}.content: Input should be a valid list")
        empty = not blocks or (isinstance(content, str) and not content)
        if empty and not (last and role == "assistant"):
            raise _bad(
                f"{where}: all messages must have non-empty content except for the optional "
                "final assistant message"
            )
        found_uses: set[str] = set()
        results: list[str] = []
        for j, block in enumerate(blocks):
            kind = self._check_block(f"{where}.content.{j}", role, block)
            if kind == "tool_use":
                found_uses.add(block["id"])
            elif kind == "tool_result":
                if len(results) != j:
                    raise _bad(f"{where}: tool_result blocks must come first in the content")
                results.append(block["tool_use_id"])
        _pair(where, uses, results)
        return found_uses

    def _check_block(self, where: str, role: str, block: Any) -> str:
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text":
            if not isinstance(block.get("text"), str) or not block["text"]:
                raise _bad("messages: text content blocks must be non-empty")
        elif kind == "image":
            self._check_image(f"{where}.image.source", block.get("source"))
        elif kind == "tool_use":
            if role != "assistant":
                raise _bad(f"{where}: tool_use blocks may only appear in assistant messages")
            if not isinstance(block.get("input"), dict):
                raise _bad(f"{where}.tool_use.input: Input should be a valid dictionary")
            if not isinstance(block.get("id"), str) or not re.match(
                r"^[a-zA-Z0-9_-]+$", block["id"]
            ):
                raise _bad(f"{where}.tool_use.id: String should match pattern '^[a-zA-Z0-9_-]+$'")
        elif kind == "tool_result":
            if role != "user":
                raise _bad(f"{where}: tool_result blocks may only appear in user messages")
            if not isinstance(block.get("tool_use_id"), str):
                raise _bad(f"{where}.tool_result.tool_use_id: Field required")
        else:
            raise _bad(f"{where}: " + _TAG.format(kind))
        return str(kind)

    def _check_image(self, where: str, source: Any) -> None:
        kind = source.get("type") if isinstance(source, dict) else None
        if kind == "url":
            if not str(source.get("url", "")).startswith(("http://", "https://")):
                raise _bad(f"{where}.url.url: Input should be a valid URL")
            return
        if kind != "base64":
            raise _bad(f"{where}: " + _TAG.format(kind) + ": 'base64', 'url'")
        if source.get("media_type") not in _MEDIA:
            raise _bad(
                f"{where}.base64.media_type: Input should be 'image/jpeg', 'image/png', "
                "'image/gif' or 'image/webp'"
            )
        try:
            base64.b64decode(str(source.get("data")), validate=True)
        except (binascii.Error, ValueError):
            raise _bad(f"{where}.base64.data: The image data is not valid base64") from None

    def _check_tools(self, body: dict[str, Any]) -> None:
        for i, tool in enumerate(body.get("tools") or ()):
            for key in tool:
                if key not in ("name", "description", "input_schema", "cache_control", "type"):
                    raise _bad(f"tools.{i}.custom.{key}: Extra inputs are not permitted")
            if not _TOOL_NAME.match(str(tool.get("name", ""))):
                raise _bad(
                    f"tools.{i}.custom.name: String should match pattern '^[a-zA-Z0-9_-]{{1,128}}$'"
                )
            schema = tool.get("input_schema")
            if not isinstance(schema, dict) or schema.get("type") != "object":
                raise _bad(f"tools.{i}.custom.input_schema.type: Input should be 'object'")
        choice = body.get("tool_choice")
        if choice is not None:
            kind = choice.get("type") if isinstance(choice, dict) else None
            if kind not in ("auto", "any", "tool", "none"):
                raise _bad("tool_choice: " + _TAG.format(kind) + ": 'auto', 'any', 'tool', 'none'")
            if kind == "tool" and not isinstance(choice.get("name"), str):
                raise _bad("tool_choice.tool.name: Field required")

    # The deterministic model.

    def _answer(self, body: dict[str, Any]) -> dict[str, Any]:
        last = body["messages"][-1]
        content = last["content"]
        blocks = [{"type": "text", "text": content}] if isinstance(content, str) else content
        results = [b for b in blocks if b.get("type") == "tool_result"]
        text = " ".join(b["text"] for b in blocks if b.get("type") == "text")
        choice = body.get("tool_choice") or {"type": "auto"}
        out: list[dict[str, Any]] = []
        if results:
            said = results[0].get("content")
            said = (
                said if isinstance(said, str) else " ".join(b.get("text", "") for b in said or ())
            )
            reply = f"The tool said: {said}"
        elif body.get("tools") and choice["type"] != "none":
            name = choice.get("name") or body["tools"][0]["name"]
            if choice["type"] == "auto":
                out.append({"type": "text", "text": "Let me check."})
            use = {"type": "tool_use", "id": request_id("toolu_01"), "name": name}
            out.append({**use, "input": self.tool_input})
            reply = ""
        else:
            reply = f"You said: {text}"
        stop_reason, stop_sequence = "tool_use" if out else "end_turn", None
        if reply:
            reply, why = cut_words(reply, body["max_tokens"], body.get("stop_sequences"))
            if why == "length":
                stop_reason = "max_tokens"
            elif why is not None:
                stop_reason, stop_sequence = "stop_sequence", why
            out.append({"type": "text", "text": reply})
        prompt = sum(words(_text_of(m["content"])) for m in body["messages"])
        prompt += words(body["system"] if isinstance(body.get("system"), str) else "")
        output = sum(words(b.get("text", "")) + (5 if b["type"] == "tool_use" else 0) for b in out)
        return {
            "id": request_id("msg_01"),
            "type": "message",
            "role": "assistant",
            "model": body["model"],
            "content": out,
            "stop_reason": stop_reason,
            "stop_sequence": stop_sequence,
            "usage": {
                "input_tokens": prompt,
                "cache_creation_input_tokens": 0,
                "cache_read_input_tokens": self.cache_read,
                "output_tokens": output,
                "service_tier": "standard",
            },
        }

    async def _stream(self, request: web.Request, message: dict[str, Any]) -> web.StreamResponse:
        response = web.StreamResponse(
            headers={**self.response_headers(), "Cache-Control": "no-cache"}
        )
        response.content_type = "text/event-stream"
        await response.prepare(request)
        events = _events(message)
        head, body_events, tail = events[:1], events[1:-2], events[-2:]
        sent: list[Any] = []
        self.sent.append(sent)
        content = [e for e in body_events if e["type"] == "content_block_delta"]
        if self.midstream is not None:
            after, error = self.midstream
            keep = content[after - 1] if after else None
            cut = body_events.index(keep) + 1 if keep is not None else 0
            events = [*head, *body_events[:cut], {**error, "_event": "error"}]
        elif self.cut is not None:
            keep = content[self.cut - 1] if self.cut else None
            events = [*head, *body_events[: body_events.index(keep) + 1 if keep else 0]]
        else:
            events = [*head, *body_events, *tail]
        for event in events:
            name = event.pop("_event", event["type"])
            frame = f"event: {name}\ndata: ".encode() + orjson.dumps(event) + b"\n\n"
            await response.write(frame[: len(frame) // 3])
            await response.write(frame[len(frame) // 3 :])
            sent.append(event)
        await response.write_eof()
        return response


def _pair(where: str, uses: set[str], results: list[str]) -> None:
    """Every tool_use of the previous message answered here, every tool_result asked for."""
    for j, use_id in enumerate(results):
        if use_id not in uses:
            raise _bad(
                f"{where}.content.{j}: unexpected `tool_use_id` found in `tool_result` "
                f"blocks: {use_id}. Each `tool_result` block must have a corresponding "
                "`tool_use` block in the previous message."
            )
    missing = sorted(uses - set(results))
    if missing:
        raise _bad(
            f"{where}: `tool_use` ids were found without `tool_result` blocks immediately "
            f"after: {', '.join(missing)}. Each `tool_use` block must have a corresponding "
            "`tool_result` block in the next message."
        )


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    return " ".join(str(b.get("text", "")) for b in content if isinstance(b, dict))


def _events(message: dict[str, Any]) -> list[dict[str, Any]]:
    """The documented event sequence that streams ``message``."""
    usage = message["usage"]
    start = {**message, "content": [], "stop_reason": None, "stop_sequence": None}
    start["usage"] = {**usage, "output_tokens": 1}
    events: list[dict[str, Any]] = [{"type": "message_start", "message": start}]
    for index, block in enumerate(message["content"]):
        if block["type"] == "text":
            opening: dict[str, Any] = {"type": "text", "text": ""}
            pieces = [w if k == 0 else " " + w for k, w in enumerate(block["text"].split(" "))]
            deltas = [{"type": "text_delta", "text": p} for p in pieces]
        else:
            opening = {**block, "input": {}}
            raw = orjson.dumps(block["input"]).decode()
            third = max(1, len(raw) // 3)
            pieces = ["", raw[:third], raw[third : 2 * third], raw[2 * third :]]
            deltas = [{"type": "input_json_delta", "partial_json": p} for p in pieces]
        events.append({"type": "content_block_start", "index": index, "content_block": opening})
        if index == 0:
            events.append({"type": "ping"})
        events += [{"type": "content_block_delta", "index": index, "delta": d} for d in deltas]
        events.append({"type": "content_block_stop", "index": index})
    delta = {"stop_reason": message["stop_reason"], "stop_sequence": message["stop_sequence"]}
    events.append(
        {
            "type": "message_delta",
            "delta": delta,
            "usage": {"output_tokens": usage["output_tokens"]},
        }
    )
    events.append({"type": "message_stop"})
    return events


def run_fake_anthropic(**settings: Any) -> Any:
    """Serve a `FakeAnthropic` on a free port for the duration of a ``with`` block."""
    return serve(FakeAnthropic(**settings))
