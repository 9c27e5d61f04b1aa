"""Google's Gemini API (Generative Language API v1beta) ⇄ OpenAI's chat completions, as pure
functions: requests out (`to_gemini`), replies back (`from_gemini`), stream chunks back
(`GeminiStream`). Embeddings are translated in `gemini`.

What differs, and must never reach the client: turns are ``contents`` with roles ``user`` and
``model``, each a list of ``parts`` (``text``, ``inlineData {mimeType, data}``, ``functionCall
{name, args}``, ``functionResponse {name, response}``); system and developer messages become
``systemInstruction``; sampling settings live in ``generationConfig`` (``maxOutputTokens``,
``temperature``, ``topP``, ``topK``, ``stopSequences``, ``candidateCount``, ``responseMimeType``
and ``responseSchema`` for JSON); tools are ``[{functionDeclarations}]`` with ``toolConfig``;
function calls carry no id and answers are matched by name; schemas are Gemini's OpenAPI subset
(``additionalProperties``, ``$schema``, ``strict``... are dropped, local ``$ref``s inlined, types
upper-cased); a stream is SSE ``data:`` lines each holding a whole ``GenerateContentResponse``,
with no terminator: the stream ends when the connection does, after a ``finishReason``.

JSON field names are sent in lowerCamelCase, the canonical proto3 JSON form that the API
reference (ai.google.dev/api) documents and answers in; the API also accepts snake_case.
Held against documented examples in tests/fixtures/gemini/.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import orjson

from ..errors import BackendError, BackendRateLimitedError, BackendUnavailableError, CapabilityError
from ..wire.openai import ChunkMaker, reply_body, usage_dict
from .base import JSON
from .cloud import (
    call_id,
    inline_image,
    invalid,
    output_limit,
    refuse_unsupported,
    stop_list,
    system_text,
    tool_arguments,
)

__all__ = [
    "GeminiStream",
    "from_gemini",
    "gemini_schema",
    "stream_error",
    "to_gemini",
]

_FILTERED = frozenset(
    {"SAFETY", "RECITATION", "BLOCKLIST", "PROHIBITED_CONTENT", "SPII", "IMAGE_SAFETY"}
)
#: the fields of Gemini's ``Schema`` (an OpenAPI 3.0 subset); any other key is a 400 there
_SCHEMA_KEYS = frozenset(
    {
        "type", "format", "title", "description", "nullable", "enum", "maxItems", "minItems",
        "properties", "required", "minProperties", "maxProperties", "minLength", "maxLength",
        "pattern", "example", "anyOf", "propertyOrdering", "default", "items", "minimum",
        "maximum",
    }
)  # fmt: skip
_CONFIG = {
    "temperature": "temperature",
    "top_p": "topP",
    "top_k": "topK",
    "presence_penalty": "presencePenalty",
    "frequency_penalty": "frequencyPenalty",
    "seed": "seed",
}


def to_gemini(body: JSON) -> JSON:
    """An OpenAI chat request as the body of ``models/{model}:generateContent`` (the model is in
    the path, not the body)."""
    refuse_unsupported(body, "Gemini", several_choices=True)
    system, contents = _contents(body["messages"])
    out: JSON = {"contents": contents}
    if system:
        out["systemInstruction"] = {"parts": [{"text": system}]}
    config = _generation_config(body)
    if config:
        out["generationConfig"] = config
    tools = body.get("tools") or []
    if tools:
        out["tools"] = [{"functionDeclarations": [_declaration(t, i) for i, t in enumerate(tools)]}]
        mode = _tool_config(body.get("tool_choice"))
        if mode:
            out["toolConfig"] = {"functionCallingConfig": mode}
    return out


def _generation_config(body: JSON) -> JSON:
    config: JSON = {api: body[key] for key, api in _CONFIG.items() if body.get(key) is not None}
    limit = output_limit(body)
    if limit is not None:
        config["maxOutputTokens"] = limit
    stops = stop_list(body)
    if stops:
        config["stopSequences"] = stops
    if (body.get("n") or 1) > 1:
        config["candidateCount"] = body["n"]
    fmt = body.get("response_format") or {}
    if fmt.get("type") in ("json_object", "json_schema"):
        config["responseMimeType"] = "application/json"
        schema = (fmt.get("json_schema") or {}).get("schema")
        if isinstance(schema, dict):
            config["responseSchema"] = gemini_schema(schema, "response_format.json_schema.schema")
    return config


def _contents(messages: list[JSON]) -> tuple[str, list[JSON]]:
    system: list[str] = []
    contents: list[JSON] = []
    names: dict[str, str] = {}  # tool call id -> function name: Gemini matches answers by name
    for i, message in enumerate(messages):
        role, where = message["role"], f"messages[{i}]"
        if role in ("system", "developer"):
            system.append(system_text(message.get("content"), f"{where}.content"))
            continue
        if role == "tool":
            parts, role = [_function_response(message, where, names)], "user"
        elif role == "assistant":
            parts, role = _parts(message.get("content"), f"{where}.content"), "model"
            for k, call in enumerate(message.get("tool_calls") or ()):
                fn, at = call["function"], f"{where}.tool_calls[{k}].function.arguments"
                args = tool_arguments(fn.get("arguments"), at, "Gemini")
                names[call.get("id") or ""] = fn["name"]
                parts.append({"functionCall": {"name": fn["name"], "args": args}})
            if not parts:
                continue  # no text and no calls: a turn that says nothing
        elif role == "user":
            parts = _parts(message.get("content"), f"{where}.content")
        else:
            raise CapabilityError(
                "The deprecated 'function' role cannot be sent to Gemini; use tools.",
                param=f"{where}.role",
            )
        if contents and contents[-1]["role"] == role:
            # One turn per role change: every function response of one model turn must arrive
            # together, in the one user turn that answers it.
            contents[-1]["parts"].extend(parts)
        else:
            contents.append({"role": role, "parts": parts})
    return "\n\n".join(system), contents


def _parts(content: Any, where: str) -> list[JSON]:
    if content is None:
        return []
    if isinstance(content, str):
        return [{"text": content}] if content else []
    parts: list[JSON] = []
    for j, part in enumerate(content):
        kind = part.get("type")
        if kind in ("text", "refusal"):
            if part.get(kind):
                parts.append({"text": part[kind]})
        elif kind == "image_url":
            image = part["image_url"]
            url = str(image.get("url") if isinstance(image, dict) else image)
            mime, data = inline_image(url, f"{where}[{j}].image_url.url", "Gemini")
            parts.append({"inlineData": {"mimeType": mime, "data": data}})
        else:
            raise CapabilityError(
                f"turnout sends Gemini text and image parts; a '{kind}' part cannot be sent.",
                param=f"{where}[{j}]",
            )
    return parts


def _function_response(message: JSON, where: str, names: dict[str, str]) -> JSON:
    name = names.get(message.get("tool_call_id") or "") or message.get("name")
    if not name:
        raise invalid(
            f"{where}.tool_call_id",
            "no earlier assistant tool call has this id, and Gemini needs the function's name",
        )
    content = message.get("content")
    text = content if isinstance(content, str) else system_text(content, f"{where}.content")
    try:
        parsed = orjson.loads(text) if text.strip() else None
    except orjson.JSONDecodeError:
        parsed = None
    # The API reference: "Use 'output' key to specify function output ... If 'output' and 'error'
    # keys are not specified, then whole 'response' is treated as function output."
    response = parsed if isinstance(parsed, dict) else {"output": text}
    return {"functionResponse": {"name": name, "response": response}}


def _declaration(tool: JSON, i: int) -> JSON:
    if tool.get("type", "function") != "function":
        raise CapabilityError("Gemini takes function tools only.", param=f"tools[{i}].type")
    fn = tool["function"]
    out: JSON = {"name": fn["name"]}
    if fn.get("description"):
        out["description"] = fn["description"]
    params = fn.get("parameters")
    # Gemini refuses an OBJECT without properties ("should be non-empty for OBJECT type"): a
    # function without arguments is declared without parameters.
    if isinstance(params, dict) and params.get("properties"):
        out["parameters"] = gemini_schema(params, f"tools[{i}].function.parameters")
    return out


def _tool_config(choice: Any) -> JSON | None:
    if choice in (None, "auto"):
        return None  # AUTO is Gemini's default
    if choice in ("required", "none"):
        return {"mode": "ANY" if choice == "required" else "NONE"}
    if isinstance(choice, dict) and choice.get("type") == "function":
        return {"mode": "ANY", "allowedFunctionNames": [choice["function"]["name"]]}
    raise CapabilityError("Gemini cannot take this 'tool_choice'.", param="tool_choice")


def gemini_schema(schema: JSON, param: str) -> JSON:
    """A JSON Schema as Gemini's ``Schema``: keys it lacks dropped, local ``$ref``s inlined,
    ``type: [t, "null"]`` as ``nullable``, ``const`` and ``oneOf`` as ``enum`` and ``anyOf``."""
    defs = {**(schema.get("definitions") or {}), **(schema.get("$defs") or {})}
    out: JSON = _schema(schema, defs, param, frozenset())
    return out


def _schema(node: Any, defs: JSON, param: str, seen: frozenset[str]) -> Any:
    if not isinstance(node, dict):
        return node
    if isinstance(node.get("$ref"), str):
        return _inline(node, defs, param, seen)
    out: JSON = {}
    for key, value in node.items():
        if key == "type":
            out.update(_types(value))
        elif key == "properties" and isinstance(value, dict):
            out[key] = {k: _schema(v, defs, param, seen) for k, v in value.items()}
        elif key == "items":
            out[key] = _schema(value, defs, param, seen)
        elif key in ("anyOf", "oneOf") and isinstance(value, list):
            out.update(_union([_schema(v, defs, param, seen) for v in value], out))
        elif key in ("enum", "const"):
            out["enum"] = [str(v) for v in (value if key == "enum" else [value])]
        elif key in _SCHEMA_KEYS:
            out[key] = value
    return out


def _inline(node: JSON, defs: JSON, param: str, seen: frozenset[str]) -> Any:
    ref = node["$ref"]
    name = ref.rpartition("/")[2]
    if not ref.startswith(("#/$defs/", "#/definitions/")) or name not in defs:
        raise invalid(param, f"Gemini takes no $ref; turnout cannot inline {ref!r}")
    if name in seen:
        raise CapabilityError(f"Gemini cannot take a recursive schema ({ref}).", param=param)
    merged = {**defs[name], **{k: v for k, v in node.items() if k != "$ref"}}
    return _schema(merged, defs, param, seen | {name})


def _union(options: list[Any], out: JSON) -> JSON:
    """``anyOf``/``oneOf``: a ``{"type": "null"}`` option is ``nullable``, and a single remaining
    option is the schema itself (pydantic writes ``Optional[str]`` that way)."""
    real = [o for o in options if o != {"nullable": True}]
    merged: JSON = {"nullable": True} if len(real) < len(options) else {}
    if len(real) == 1 and isinstance(real[0], dict):
        return {**merged, **real[0]}
    return {**merged, "anyOf": [*(out.get("anyOf") or ()), *real]}


def _types(value: Any) -> JSON:
    """JSON Schema's ``type`` (a name or a list) as Gemini's upper-case ``type``/``nullable``."""
    kinds = [value] if isinstance(value, str) else list(value)
    real = [str(k).upper() for k in kinds if k != "null"]
    out: JSON = {"nullable": True} if len(real) < len(kinds) else {}
    if len(real) == 1:
        out["type"] = real[0]
    elif real:
        out["anyOf"] = [{"type": k} for k in real]
    return out


def _finish(reason: Any, called: bool) -> str:
    if reason == "MAX_TOKENS":
        return "length"
    if reason in _FILTERED:
        return "content_filter"
    return "tool_calls" if called else "stop"


def _usage(meta: JSON | None) -> JSON:
    meta = meta or {}
    thoughts = int(meta.get("thoughtsTokenCount") or 0)
    completion = int(meta.get("candidatesTokenCount") or 0) + thoughts
    cached = int(meta.get("cachedContentTokenCount") or 0)
    prompt = int(meta.get("promptTokenCount") or 0)
    return usage_dict(prompt, completion, cached=cached, reasoning=thoughts)


def _read_parts(parts: Any) -> tuple[str, str, list[JSON]]:
    """(text, thought text, OpenAI tool calls) of a candidate's parts."""
    text: list[str] = []
    thought: list[str] = []
    calls: list[JSON] = []
    for part in parts or ():
        call = part.get("functionCall") or part.get("function_call")
        if isinstance(call, dict):
            arguments = orjson.dumps(call.get("args") or {}).decode()
            function = {"name": call.get("name", ""), "arguments": arguments}
            calls.append(
                {"id": call.get("id") or call_id(), "type": "function", "function": function}
            )
        elif isinstance(part.get("text"), str):
            (thought if part.get("thought") else text).append(part["text"])
    return "".join(text), "".join(thought), calls


def _blocked(obj: JSON) -> str:
    reason = (obj.get("promptFeedback") or {}).get("blockReason") or "no candidate"
    return f"Gemini blocked the prompt ({reason})."


def from_gemini(obj: JSON, model: str) -> JSON:
    """A ``GenerateContentResponse`` as an OpenAI ``chat.completion``, a choice per candidate."""
    choices = []
    for position, candidate in enumerate(obj.get("candidates") or ()):
        text, thought, calls = _read_parts((candidate.get("content") or {}).get("parts"))
        message: JSON = {"role": "assistant", "content": text or (None if calls else "")}
        message["refusal"] = None
        if calls:
            message["tool_calls"] = calls
        if thought:
            message["reasoning_content"] = thought
        finish = _finish(candidate.get("finishReason"), bool(calls))
        index = candidate.get("index", position)
        choices.append(
            {"index": index, "message": message, "logprobs": None, "finish_reason": finish}
        )
    if not choices:  # the prompt itself was blocked: say so rather than answer nothing
        message = {"role": "assistant", "content": "", "refusal": _blocked(obj)}
        choices = [
            {"index": 0, "message": message, "logprobs": None, "finish_reason": "content_filter"}
        ]
    return reply_body(
        "chat",
        f"chatcmpl-{obj.get('responseId') or uuid.uuid4().hex}",
        int(time.time()),
        obj.get("modelVersion") or model,
        choices,
        _usage(obj.get("usageMetadata")),
    )


class GeminiStream:
    """Gemini's stream chunks in, OpenAI chunks out, for one chat stream.

    Each chunk is a whole ``GenerateContentResponse`` holding the next piece of each candidate;
    a function call arrives whole, in one part. The chunk with a ``finishReason`` gives the finish
    chunk; `close` (the end of the HTTP body) gives the usage-only chunk from the last
    ``usageMetadata``, or an error if no candidate ever finished (a cut stream).
    """

    def __init__(self, model: str, backend: str) -> None:
        self.chunks = ChunkMaker("chat", model)
        self.backend = backend
        self.usage: JSON | None = None
        self.calls: dict[int, int] = {}  # candidate index -> tool calls so far
        self.started: set[int] = set()
        self.finished = False

    def feed(self, obj: JSON) -> list[JSON]:
        if "error" in obj:
            raise stream_error(obj, self.backend)
        if not self.started and obj.get("responseId"):
            self.chunks.id = f"chatcmpl-{obj['responseId']}"
        self.chunks.model = obj.get("modelVersion") or self.chunks.model
        self.usage = obj.get("usageMetadata") or self.usage
        out: list[JSON] = []
        for position, candidate in enumerate(obj.get("candidates") or ()):
            index = int(candidate.get("index", position))
            text, thought, calls = _read_parts((candidate.get("content") or {}).get("parts"))
            delta: JSON = {"content": text} if text else {}
            if thought:
                delta["reasoning_content"] = thought
            for call in calls:  # each whole, each the next index
                call["index"] = self.calls.get(index, 0)
                self.calls[index] = call["index"] + 1
            if calls:
                delta["tool_calls"] = calls
            if index not in self.started:
                self.started.add(index)
                delta = {"role": "assistant", **(delta or {"content": ""})}
            if delta:
                out.append(self.chunks.choice(delta, None, index))
            if candidate.get("finishReason"):
                self.finished = True
                finish = _finish(candidate["finishReason"], self.calls.get(index, 0) > 0)
                out.append(self.chunks.choice({}, finish, index))
        if not obj.get("candidates") and (obj.get("promptFeedback") or {}).get("blockReason"):
            self.finished = True
            delta = {"role": "assistant", "content": "", "refusal": _blocked(obj)}
            out.append(self.chunks.choice(delta, "content_filter"))
        return out

    def close(self) -> list[JSON]:
        if not self.finished:
            raise BackendUnavailableError(
                f"backend '{self.backend}' ended the stream before any candidate finished",
                backend=self.backend,
            )
        return [self.chunks.usage(_usage(self.usage))]


def stream_error(obj: JSON, backend: str) -> BackendError:
    """A ``{"error": {code, message, status}}`` chunk as the turnout error its status means."""
    error = obj["error"] if isinstance(obj.get("error"), dict) else {}
    status = str(error.get("status") or error.get("code") or "INTERNAL")
    text = f"backend '{backend}' failed mid-stream ({status}): {error.get('message') or ''}"
    if status in ("UNAVAILABLE", "503"):
        return BackendUnavailableError(text.strip(), backend=backend)
    if status in ("RESOURCE_EXHAUSTED", "429"):
        return BackendRateLimitedError(text.strip(), backend=backend)
    return BackendError(text.strip(), backend=backend)
