"""llama-cpp-python's calls and replies in OpenAI's shapes: request arguments, a streamed
generation ending in a usage chunk, a reply assembled from a stream, token counts, embeddings."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import orjson

from ...errors import CapabilityError, InvalidRequestError
from ...wire.openai import chunk_object, reply_body, usage_dict
from ...wire.tools import merge_deltas
from ..base import JSON, Call
from .settings import EmbeddedModel

__all__ = ["assemble", "embed", "generate", "prompt_text", "request_kwargs"]

# OpenAI request fields and the llama-cpp-python keyword each one becomes.
_CHAT_ARGS = (
    "messages", "temperature", "top_p", "top_k", "min_p", "typical_p", "stop", "seed",
    "max_tokens", "presence_penalty", "frequency_penalty", "repeat_penalty", "logit_bias",
    "grammar",
)  # fmt: skip
_COMPLETION_ARGS = (
    "prompt", "suffix", "temperature", "top_p", "top_k", "min_p", "typical_p", "stop", "seed",
    "max_tokens", "presence_penalty", "frequency_penalty", "repeat_penalty", "echo",
    "logit_bias", "grammar",
)  # fmt: skip
#: chat formats whose template has no system turn (llama-cpp-python drops system messages)
_NO_SYSTEM_TURN = frozenset({"gemma"})
#: JSON-schema grammars already built, by the schema's JSON text
_GRAMMARS: dict[bytes, Any] = {}


def generate(llm: Any, entry: EmbeddedModel, call: Call, kwargs: JSON) -> Iterator[JSON]:
    """Run one streamed generation in the worker thread; finish with a usage-only chunk."""
    create: Callable[..., Iterator[JSON]] = (
        llm.create_chat_completion if call.kind == "chat" else llm.create_completion
    )
    pieces: list[str] = []
    last: JSON = {}
    for chunk in create(**kwargs, stream=True):
        for choice in chunk.get("choices", ()):
            text = (
                choice.get("delta", {}).get("content")
                if call.kind == "chat"
                else choice.get("text")
            )
            if text:
                pieces.append(text)
        last = chunk
        yield chunk
    completion = _count(llm, "".join(pieces))
    prompt = _prompt_tokens(llm, entry, call)
    yield {
        "id": last.get("id", f"cmpl-{uuid.uuid4()}"),
        "object": last.get("object", chunk_object(call.kind)),
        "created": last.get("created", int(time.time())),
        "model": call.model,
        "choices": [],
        "usage": usage_dict(prompt, completion),
    }


def request_kwargs(provider: str, call: Call, chat_format: str | None = None) -> JSON:
    """llama-cpp-python's keyword arguments for an OpenAI request; what it cannot do is refused
    here, before the call, naming the field."""
    body = call.body
    names = _CHAT_ARGS if call.kind == "chat" else _COMPLETION_ARGS
    kwargs = {k: body[k] for k in names if body.get(k) is not None}
    if body.get("max_completion_tokens") is not None and "max_tokens" not in kwargs:
        kwargs["max_tokens"] = body["max_completion_tokens"]
    if (body.get("n") or 1) > 1:
        raise CapabilityError(
            f"The embedded engine generates one choice per request; 'n' must be 1 "
            f"(provider '{provider}').",
            param="n",
        )
    if body.get("logprobs"):  # its models are loaded without logits_all
        raise CapabilityError(
            f"The embedded engine (provider '{provider}') does not return log probabilities; "
            "leave 'logprobs' unset.",
            param="logprobs",
        )
    if call.kind == "chat":
        _reject_images(provider, call.model, body["messages"])
        kwargs["messages"] = _messages(body["messages"], chat_format)
        fmt = body.get("response_format")
        if isinstance(fmt, dict) and fmt.get("type") in ("json_object", "json_schema"):
            kwargs["grammar"] = json_grammar(provider, fmt)
    kwargs["model"] = call.model
    return kwargs


def json_grammar(provider: str, fmt: JSON) -> Any:
    """The grammar that holds a reply to ``response_format``: its JSON schema (llama.cpp's
    json-schema-to-grammar), or any JSON object for ``json_object`` without one."""
    from llama_cpp.llama_grammar import LlamaGrammar

    spec = fmt.get("json_schema") if fmt.get("type") == "json_schema" else fmt
    schema = (spec or {}).get("schema") or {"type": "object"}
    key = orjson.dumps(schema, option=orjson.OPT_SORT_KEYS)
    grammar = _GRAMMARS.get(key)
    if grammar is None:
        try:
            grammar = LlamaGrammar.from_json_schema(key.decode(), verbose=False)
        except Exception as exc:  # the converter's own words name the unsupported part
            raise InvalidRequestError(
                f"The embedded engine (provider '{provider}') cannot hold its output to this "
                f"JSON schema: {str(exc)[:200]}",
                param="response_format",
                code="invalid_value",
            ) from None
        if len(_GRAMMARS) >= 64:
            _GRAMMARS.clear()
        _GRAMMARS[key] = grammar
    return grammar


def _messages(messages: list[JSON], chat_format: str | None) -> list[JSON]:
    """Messages as the chat format reads them: ``developer`` is ``system``, and a template
    without a system turn (Gemma's) reads the system text at the head of the first user turn
    rather than losing it."""
    if not any(m.get("role") in ("system", "developer") for m in messages):
        return messages
    out = [{**m, "role": "system"} if m.get("role") == "developer" else m for m in messages]
    if chat_format not in _NO_SYSTEM_TURN:
        return out
    system = "\n\n".join(str(m.get("content") or "") for m in out if m.get("role") == "system")
    rest = [m for m in out if m.get("role") != "system"]
    for i, message in enumerate(rest):
        if message.get("role") == "user" and isinstance(message.get("content"), str):
            rest[i] = {**message, "content": f"{system}\n\n{message['content']}"}
            return rest
    return [{"role": "user", "content": system}, *rest]


def assemble(call: Call, chunks: list[JSON]) -> JSON:
    """One OpenAI reply from a stream's chunks: text joined, tool calls merged by index (id and
    name once, arguments joined), the last finish reason, and the usage chunk that `generate`
    ends with."""
    first = chunks[0]
    pieces: list[str] = []
    calls: dict[int, JSON] = {}
    finish: str | None = None
    usage: JSON | None = None
    for chunk in chunks:
        usage = chunk.get("usage") or usage
        for part_of in chunk.get("choices", ()):
            finish = part_of.get("finish_reason") or finish
            delta = part_of.get("delta") or {}
            text = delta.get("content") if call.kind == "chat" else part_of.get("text")
            if text:
                pieces.append(text)
            if delta.get("tool_calls"):
                merge_deltas(calls, delta["tool_calls"])
    text = "".join(pieces)
    if call.kind == "chat":
        message: JSON = {"role": "assistant", "content": text if text or not calls else None}
        if calls:
            message["tool_calls"] = [calls[i] for i in sorted(calls)]
        choice: JSON = {"index": 0, "message": message, "logprobs": None, "finish_reason": finish}
    else:
        choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}
    created = first.get("created", int(time.time()))
    return reply_body(call.kind, first.get("id"), created, call.model, [choice], usage)


def _reject_images(provider: str, model: str, messages: list[JSON]) -> None:
    for i, message in enumerate(messages):
        content = message.get("content")
        if not isinstance(content, list):
            continue
        for j, part in enumerate(content):
            if part.get("type") == "image_url":
                raise CapabilityError(
                    f"The model '{model}' of provider '{provider}' does not accept images.",
                    param=f"messages[{i}].content[{j}]",
                )


def _count(llm: Any, text: str) -> int:
    return len(llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)) if text else 0


def prompt_text(entry: EmbeddedModel, call: Call) -> tuple[str, bool, bool]:
    """The prompt as the model reads it (the chat template applied, where llama-cpp-python knows
    it by name), whether that text already holds the special tokens (BOS), and whether it was
    templated (its special tokens are then parsed as such)."""
    if call.kind != "chat":
        prompt = call.body.get("prompt")
        if isinstance(prompt, str):
            return prompt, False, False
        return "".join(p for p in prompt or () if isinstance(p, str)), False, False
    from llama_cpp import llama_chat_format

    name = (entry.chat_format or "").replace("-", "_")
    formatter = getattr(llama_chat_format, f"format_{name}", None)
    if formatter is None:
        return "\n".join(str(m.get("content") or "") for m in call.body["messages"]), False, False
    result = formatter(messages=_messages(call.body["messages"], entry.chat_format))
    return str(result.prompt), bool(result.added_special), True


def _prompt_tokens(llm: Any, entry: EmbeddedModel, call: Call) -> int:
    """Prompt tokens as llama-cpp-python counts them: the chat template applied, then tokenised."""
    text, has_bos, templated = prompt_text(entry, call)
    tokens = llm.tokenize(text.encode("utf-8"), add_bos=not has_bos, special=templated)
    return len(tokens)


def embed(llm: Any, call: Call) -> JSON:
    result: JSON = llm.create_embedding(input=call.body["input"], model=call.model)
    return result
