"""Tool calls for backends that cannot call tools themselves but can hold their output to a JSON
schema (the embedded engine's grammar, llama.cpp's ``json_schema``, llama-cpp-python's
``json_object`` schema, Ollama's ``format``).

`plan_tools` turns a request with ``tools`` into one without: the tools are described in a
system message, earlier calls and their results are written into the conversation as text, and
``response_format`` holds the answer to a JSON schema of what ``tool_choice`` allows:

- ``required``: ``{"name": <one of the tools>, "arguments": <that tool's parameters>}``;
- a named function: the same for that function alone;
- ``auto``: either of those, or ``{"content": <text>}`` for an answer without a call;
- ``none``: no schema; the tools are not offered.

The grammar, not the model's skill, makes a call valid. `ToolPlan.reply` and
`ToolPlan.stream` turn the JSON the model wrote back into OpenAI's ``tool_calls`` (a stream is
held until the answer is whole, then sent as a call's deltas or as text).
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from typing import Any

import orjson

from ..errors import InvalidRequestError
from ..wire.tools import call_id
from .base import JSON

__all__ = ["ToolPlan", "has_tool_history", "plan_tools"]

_ROLE_BY_ROLE = {"developer": "system", "function": "tool"}


def has_tool_history(body: JSON) -> bool:
    """Whether a chat request offers tools or carries earlier calls or their results."""
    if body.get("tools"):
        return True
    for message in body.get("messages") or ():
        if isinstance(message, dict) and (
            message.get("tool_calls") or message.get("role") == "tool"
        ):
            return True
    return False


@dataclass(slots=True)
class ToolPlan:
    """A request rewritten for schema-held tool calls, and how to read its answer."""

    body: JSON
    names: frozenset[str] = field(default_factory=frozenset)
    schema: JSON | None = None  # None: no tools offered (``none``), the answer is text

    def reply(self, result: JSON) -> JSON:
        """A whole reply's JSON answer as OpenAI's tool calls or text, in place."""
        if self.schema is None:
            return result
        for choice in result.get("choices") or ():
            message = choice.get("message") if isinstance(choice, dict) else None
            if not isinstance(message, dict):
                continue
            call, text = self._read(message.get("content") or "")
            if call is not None:
                message.update(content=None, tool_calls=[call])
                choice["finish_reason"] = "tool_calls"
            else:
                message["content"] = text
        return result

    def stream(self) -> ToolStream:
        return ToolStream(self)

    def _read(self, text: str) -> tuple[JSON | None, str]:
        """(a call, None) when ``text`` is a call of an offered tool, else (None, the text)."""
        try:
            answer = orjson.loads(text)
        except orjson.JSONDecodeError:  # cut short (max_tokens)
            started = _PARTIAL_TEXT.match(text)
            return None, _partial_string(started[1]) if started else text
        if isinstance(answer, dict) and answer.get("name") in self.names:
            arguments = answer.get("arguments")
            call = {
                "id": call_id(),
                "type": "function",
                "function": {
                    "name": answer["name"],
                    "arguments": orjson.dumps(arguments if arguments is not None else {}).decode(),
                },
            }
            return call, ""
        if isinstance(answer, dict) and isinstance(answer.get("content"), str):
            return None, answer["content"]
        return None, text


class ToolStream:
    """One stream of a `ToolPlan`: text is held until the choice finishes, then sent as a
    call (a delta with id, type and name, then one with the arguments) or as the text."""

    __slots__ = ("_pieces", "_plan", "_role_sent")

    def __init__(self, plan: ToolPlan) -> None:
        self._plan = plan
        self._pieces: list[str] = []
        self._role_sent = False

    def __call__(self, data: JSON) -> list[JSON]:
        choices = data.get("choices")
        if self._plan.schema is None or not choices:
            return [data]
        choice = choices[0]
        delta = choice.get("delta") or {}
        if isinstance(delta.get("content"), str):
            self._pieces.append(delta["content"])
        out: list[JSON] = []
        if not self._role_sent:
            self._role_sent = True
            out.append(_piece(data, {"role": "assistant"}, None))
        finish = choice.get("finish_reason")
        if not finish:
            return out
        call, text = self._plan._read("".join(self._pieces))
        if call is None:
            out.append(_piece(data, {"content": text}, None))
            out.append(_piece(data, {}, finish))
            return out
        fn = call["function"]
        head = {"index": 0, "id": call["id"], "type": "function"}
        out.append(
            _piece(
                data,
                {"tool_calls": [{**head, "function": {"name": fn["name"], "arguments": ""}}]},
                None,
            )
        )
        out.append(
            _piece(
                data,
                {"tool_calls": [{"index": 0, "function": {"arguments": fn["arguments"]}}]},
                None,
            )
        )
        out.append(_piece(data, {}, "tool_calls"))
        return out


#: an answer without a call, cut short: {"content": "the text so fa
_PARTIAL_TEXT = re.compile(r'\A\s*\{\s*"content"\s*:\s*"(.*)\Z', re.DOTALL)


def _partial_string(body: str) -> str:
    """The text of a JSON string cut short (its closing quote, or an escape, missing)."""
    for end in range(len(body), max(len(body) - 7, -1), -1):
        try:
            text = orjson.loads(f'"{body[:end]}"')
        except orjson.JSONDecodeError:
            continue
        return text if isinstance(text, str) else body
    return body


def _piece(data: JSON, delta: JSON, finish: str | None) -> JSON:
    head: JSON = {k: data[k] for k in ("id", "object", "created", "model") if k in data}
    head.setdefault("created", int(time.time()))
    choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
    return {**head, "choices": [choice]}


def plan_tools(body: JSON) -> ToolPlan:
    """The request rewritten for schema-held tool calls (see the module's docstring)."""
    tools = [
        t["function"] for t in body.get("tools") or () if t.get("type", "function") == "function"
    ]
    choice = body.get("tool_choice") or ("auto" if tools else "none")
    out = {
        k: v for k, v in body.items() if k not in ("tools", "tool_choice", "parallel_tool_calls")
    }
    out["messages"] = _conversation(body["messages"])
    if choice == "none" or not tools:
        return ToolPlan(out)
    if isinstance(choice, dict):
        name = (choice.get("function") or {}).get("name")
        tools = [t for t in tools if t["name"] == name]
        if not tools:
            raise InvalidRequestError(
                f"tool_choice names the function {name!r}, which is not among 'tools'.",
                param="tool_choice.function.name",
                code="invalid_value",
            )
    calls = [_call_schema(t) for t in tools]
    options = calls if choice != "auto" else [*calls, _TEXT_SCHEMA]
    schema = options[0] if len(options) == 1 else {"anyOf": options}
    out["messages"] = [
        {"role": "system", "content": _instructions(tools, choice == "auto")},
        *out["messages"],
    ]
    out["response_format"] = {
        "type": "json_schema",
        "json_schema": {"name": "tool_call", "schema": schema, "strict": True},
    }
    return ToolPlan(out, frozenset(t["name"] for t in tools), schema)


_TEXT_SCHEMA: JSON = {
    "type": "object",
    "properties": {"content": {"type": "string"}},
    "required": ["content"],
    "additionalProperties": False,
}


def _call_schema(tool: JSON) -> JSON:
    parameters = tool.get("parameters") or {"type": "object", "properties": {}}
    return {
        "type": "object",
        "properties": {"name": {"enum": [tool["name"]]}, "arguments": parameters},
        "required": ["name", "arguments"],
        "additionalProperties": False,
    }


def _instructions(tools: list[JSON], auto: bool) -> str:
    lines = ["You can call these tools:"]
    for tool in tools:
        params = orjson.dumps(tool.get("parameters") or {}).decode()
        lines.append(f"- {tool['name']}: {tool.get('description') or ''} Parameters: {params}")
    lines.append('To call a tool, answer with {"name": <tool name>, "arguments": <its arguments>}.')
    if auto:
        lines.append('To answer without a tool, answer with {"content": <your answer>}.')
    return "\n".join(lines)


def _conversation(messages: list[JSON]) -> list[JSON]:
    """Earlier calls and their results as text the model reads: an assistant's calls as the JSON
    it would write, a tool's result as a user turn naming the tool."""
    names: dict[str, str] = {}
    out: list[JSON] = []
    for message in messages:
        role = _ROLE_BY_ROLE.get(message.get("role", ""), message.get("role"))
        calls = message.get("tool_calls") or ()
        if calls:
            written = []
            for call in calls:
                fn = call.get("function") or {}
                names[call.get("id") or ""] = fn.get("name") or ""
                try:
                    arguments = orjson.loads(fn.get("arguments") or "{}")
                except orjson.JSONDecodeError:
                    arguments = fn.get("arguments")
                written.append(
                    orjson.dumps({"name": fn.get("name"), "arguments": arguments}).decode()
                )
            text = message.get("content") or ""
            out.append({"role": "assistant", "content": "\n".join(filter(None, [text, *written]))})
        elif role == "tool":
            name = names.get(message.get("tool_call_id") or "") or message.get("name") or "the tool"
            out.append(
                {"role": "user", "content": f"Result of {name}: {_text(message.get('content'))}"}
            )
        else:
            out.append({**message, "role": role})
    return out


def _text(content: Any) -> str:
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return str(content or "")
