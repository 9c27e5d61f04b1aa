"""The Ollama native dialect: OpenAI requests in, Ollama's ``/api/*`` calls out, OpenAI shapes back.

Ollama's own API differs from OpenAI's in ways a client must never see: sampling settings live
under ``options`` (``max_tokens`` is ``num_predict``), images are bare base64 strings, tool call
arguments are JSON objects rather than strings, streams are NDJSON ending in a ``done: true``
object that carries the token counters, and errors are ``{"error": "..."}`` (mapped to OpenAI's by
`HttpProvider.error_from_reply`). The translations are pure module-level functions, so the unit
tests hold each one against Ollama's documented examples (tests/fixtures/ollama/);
`OllamaProvider` only moves bytes. Facts: shared/reference/runtimes.md §3 (ollama/ollama
docs/api.md @fb30760).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
import uuid
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any, ClassVar

import orjson

from ..config import ProviderConfig
from ..errors import (
    BackendError,
    BackendUnavailableError,
    CapabilityError,
    InvalidRequestError,
    clean_upstream_message,
)
from ..wire.openai import (
    ChunkMaker,
    embedding_list,
    embedding_usage,
    reply_body,
    reply_id,
    usage_dict,
)
from ..wire.screen import bound_keep_alive
from ..wire.validate import encode_body
from .base import JSON, Call, Capabilities, Chunk, Health, Kind, ModelInfo
from .ollama_store import OllamaStore
from .presets import DIALECT_NATIVE
from .relay import relay, relay_stream
from .tool_schema import ToolPlan, plan_tools

__all__ = [
    "OllamaProvider", "StreamTranslator", "from_ollama_chat", "from_ollama_embed",
    "from_ollama_generate", "model_info", "to_ollama_chat", "to_ollama_embed", "to_ollama_generate",
]  # fmt: skip

# Request fields that are Ollama options under the same name: OpenAI's own, and the extras that
# clients of local runtimes send at the top level (top_k, min_p, num_ctx...).
_OPTIONS = (
    "temperature", "top_p", "top_k", "seed", "presence_penalty", "frequency_penalty",
    "repeat_penalty", "min_p", "typical_p", "num_ctx",
)  # fmt: skip
_ROLES = {"developer": "system", "function": "tool"}


def _invalid(param: str, message: str) -> InvalidRequestError:
    return InvalidRequestError(
        f"Invalid value for '{param}': {message}", param=param, code="invalid_value"
    )


def _envelope(body: JSON, model: str, stream: bool) -> JSON:
    """What /api/chat and /api/generate share: model, an explicit stream, options, extras."""
    if (body.get("n") or 1) > 1:
        raise CapabilityError("Ollama generates one choice per request; 'n' must be 1.", param="n")
    if body.get("logprobs"):
        raise CapabilityError(
            "turnout does not translate Ollama's log probabilities yet; leave 'logprobs' unset.",
            param="logprobs",
        )
    options: JSON = {k: body[k] for k in _OPTIONS if body.get(k) is not None}
    # max_completion_tokens is OpenAI's current name for the deprecated max_tokens, so it wins.
    limit = body.get("max_completion_tokens")
    limit = body.get("max_tokens") if limit is None else limit
    if limit is not None:
        options["num_predict"] = limit
    if isinstance(body.get("stop"), str | list):
        options["stop"] = [body["stop"]] if isinstance(body["stop"], str) else body["stop"]
    extra = body.get("options") or {}
    if not isinstance(extra, dict):
        raise _invalid("options", "expected an object of Ollama options")
    # Ollama streams unless told otherwise, so "stream" is always sent.
    out: JSON = {"model": model, "stream": stream}
    if options or extra:
        out["options"] = {**options, **extra}
    for key in ("keep_alive", "think"):
        if body.get(key) is not None:
            out[key] = body[key]
    return out


def to_ollama_chat(body: JSON, model: str, *, stream: bool = False) -> JSON:
    """An OpenAI chat request as the body of Ollama's ``POST /api/chat``."""
    out = _envelope(body, model, stream)
    out["messages"] = _messages(body["messages"])
    tools = body.get("tools") or []
    for i, tool in enumerate(tools):
        if tool.get("type", "function") != "function":
            raise CapabilityError("Ollama takes function tools only.", param=f"tools[{i}].type")
    # Ollama cannot force a call itself ("required" or a named function): the provider holds
    # those to a JSON schema (`forced_tools`). "none" is honoured by not offering them.
    if tools and body.get("tool_choice") != "none":
        out["tools"] = tools
    fmt = body.get("response_format") or {}
    if fmt.get("type") == "json_object":
        out["format"] = "json"
    elif fmt.get("type") == "json_schema":
        schema = (fmt.get("json_schema") or {}).get("schema")
        out["format"] = schema if isinstance(schema, dict) else "json"
    return out


def _messages(messages: list[JSON]) -> list[JSON]:
    names: dict[str, str] = {}  # tool call id -> function name, to name the tool results
    out: list[JSON] = []
    for i, message in enumerate(messages):
        role = _ROLES.get(message["role"], message["role"])
        text, images = _content(message.get("content"), f"messages[{i}].content")
        item: JSON = {"role": role, "content": text}
        if images:
            item["images"] = images
        if isinstance(message.get("reasoning_content"), str):
            item["thinking"] = message["reasoning_content"]
        calls = message.get("tool_calls") or ()
        if calls:
            where = f"messages[{i}].tool_calls"
            item["tool_calls"] = [
                _tool_call(c, f"{where}[{k}]", names) for k, c in enumerate(calls)
            ]
        if role == "tool":
            call_id = message.get("tool_call_id")
            name = names.get(call_id or "") or message.get("name")
            item.update({"tool_name": name} if name else {})
            item.update({"tool_call_id": call_id} if call_id else {})
        out.append(item)
    return out


def _content(content: Any, where: str) -> tuple[str, list[str]]:
    if content is None or isinstance(content, str):
        return content or "", []
    texts: list[str] = []
    images: list[str] = []
    for j, part in enumerate(content):
        kind = part.get("type")
        if kind in ("text", "refusal"):
            texts.append(part.get(kind) or "")
        elif kind == "image_url":
            images.append(_bare_base64(part["image_url"], f"{where}[{j}].image_url.url"))
        else:
            raise CapabilityError(
                f"Ollama's native API takes text and images; a '{kind}' part cannot be sent.",
                param=f"{where}[{j}]",
            )
    return "\n".join(texts), images


def _bare_base64(image: Any, param: str) -> str:
    url = str(image.get("url") if isinstance(image, dict) else image)
    head, comma, data = url.partition(",")
    if url.startswith("data:") and comma and head.endswith(";base64"):
        return data  # Ollama rejects the "data:<mime>;base64," prefix as illegal base64
    if url.startswith("data:"):
        raise CapabilityError("Ollama needs base64 images; this data: URI is not.", param=param)
    if url.startswith(("http://", "https://", "file://")):
        # Fetching a client-supplied URL on the hot path would be slow and an SSRF hole.
        raise CapabilityError(
            f"Ollama needs images inline as base64 and cannot fetch {url[:80]!r}; send the image "
            "as a data:<mime>;base64,<data> URI.",
            param=param,
        )
    return url  # already bare base64, which OpenAI's schema also allows


def _tool_call(call: JSON, param: str, names: dict[str, str]) -> JSON:
    fn = call["function"]
    raw = fn.get("arguments")
    try:
        args = orjson.loads(raw) if isinstance(raw, str) and raw.strip() else raw or {}
    except orjson.JSONDecodeError:
        args = None
    if not isinstance(args, dict):
        raise _invalid(
            f"{param}.function.arguments",
            f"Ollama takes tool call arguments as a JSON object, got {str(raw)[:80]!r}",
        )
    out: JSON = {"function": {"name": fn["name"], "arguments": args}}
    if call.get("id"):
        names[call["id"]] = fn["name"]
        out["id"] = call["id"]
    return out


def to_ollama_generate(body: JSON, model: str, *, stream: bool = False) -> JSON:
    """An OpenAI (legacy) completion request as the body of Ollama's ``POST /api/generate``."""
    if body.get("echo"):
        raise CapabilityError("Ollama cannot echo the prompt; leave 'echo' unset.", param="echo")
    prompt = body["prompt"]
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise CapabilityError(
            "Ollama's /api/generate takes one text prompt per request: send one string "
            "(not several, nor token ids).",
            param="prompt",
        )
    out = _envelope(body, model, stream)
    out["prompt"] = prompt
    if body.get("suffix") is not None:
        out["suffix"] = body["suffix"]
    return out


def to_ollama_embed(body: JSON, model: str) -> JSON:
    """An OpenAI embeddings request as the body of Ollama's ``POST /api/embed``."""
    value = body["input"]
    if not isinstance(value, str) and not all(isinstance(v, str) for v in value):
        raise CapabilityError("Ollama embeds text; token ids cannot be sent.", param="input")
    out: JSON = {"model": model, "input": value}
    for key in ("dimensions", "truncate", "keep_alive", "options"):
        if body.get(key) is not None:
            out[key] = body[key]
    return out


def _unix(stamp: Any) -> int:
    """Unix seconds of an RFC 3339 time as Ollama writes it (nanoseconds, offset); 0 if none."""
    try:
        return int(datetime.fromisoformat(str(stamp)).timestamp())
    except ValueError:
        return 0


def _finish(done_reason: Any, tool_calls: bool) -> str:
    if tool_calls:
        return "tool_calls"
    return "length" if done_reason == "length" else "stop"


def _usage(obj: JSON) -> JSON:
    prompt, completion = (int(obj.get(k) or 0) for k in ("prompt_eval_count", "eval_count"))
    return usage_dict(prompt, completion)


def _openai_calls(calls: Any) -> list[JSON]:
    out = []
    for call in calls or ():
        fn = call.get("function") or {}
        args = fn.get("arguments")
        if not isinstance(args, str):  # Ollama's object; OpenAI carries a JSON string
            args = orjson.dumps(args or {}).decode()
        call_id = call.get("id") or f"call_{uuid.uuid4().hex[:24]}"
        function = {"name": fn.get("name", ""), "arguments": args}
        out.append({"id": call_id, "type": "function", "function": function})
    return out


def _response(obj: JSON, model: str, kind: Kind, choice: JSON, finish: str) -> JSON:
    return reply_body(
        kind,
        reply_id(kind),
        _unix(obj.get("created_at")) or int(time.time()),
        obj.get("model") or model,
        [{"index": 0, **choice, "logprobs": None, "finish_reason": finish}],
        _usage(obj),
    )


def from_ollama_chat(obj: JSON, model: str) -> JSON:
    """Ollama's ``/api/chat`` reply (``stream: false``) as an OpenAI ``chat.completion``."""
    message = obj.get("message") or {}
    calls = _openai_calls(message.get("tool_calls"))
    text = message.get("content") or ""
    reply: JSON = {"role": "assistant", "content": text or (None if calls else ""), "refusal": None}
    if calls:
        reply["tool_calls"] = calls
    if message.get("thinking"):
        reply["reasoning_content"] = message["thinking"]
    finish = _finish(obj.get("done_reason"), bool(calls))
    return _response(obj, model, "chat", {"message": reply}, finish)


def from_ollama_generate(obj: JSON, model: str) -> JSON:
    """Ollama's ``/api/generate`` reply (``stream: false``) as an OpenAI ``text_completion``."""
    finish = _finish(obj.get("done_reason"), False)
    return _response(obj, model, "completion", {"text": obj.get("response") or ""}, finish)


def from_ollama_embed(obj: JSON, model: str) -> JSON:
    """Ollama's ``/api/embed`` reply as OpenAI's embedding list (floats; the gateway encodes
    base64 when the client asks for it, whichever backend answered)."""
    vectors = obj.get("embeddings") or ()
    tokens = int(obj.get("prompt_eval_count") or 0)
    return embedding_list(vectors, obj.get("model") or model, embedding_usage(tokens))


def model_info(entry: JSON, owner: str) -> ModelInfo:
    """One ``/api/tags`` entry as turnout's `ModelInfo`."""
    name = str(entry.get("name") or entry.get("model"))
    details = dict(entry.get("details") or {})
    return ModelInfo(name, owner, created=_unix(entry.get("modified_at")), meta=details)


class StreamTranslator:
    """Ollama's stream objects in, OpenAI chunks out, for one chat or completion stream.

    Every chunk carries the same id, created and model; the first chat chunk carries the role.
    The ``done: true`` object becomes a finish chunk, then a usage-only chunk (``choices: []``)
    from Ollama's counters, which the gateway drops when the client did not ask for usage.
    """

    def __init__(self, kind: Kind, model: str, backend: str) -> None:
        self.chat = kind == "chat"
        self.chunks = ChunkMaker(kind, model)
        self.backend = backend
        self.started = self.done = False
        self.tool_calls = 0

    def feed(self, obj: JSON) -> list[JSON]:
        if "error" in obj:  # the documented mid-stream failure: {"error": "..."} on its own line
            message = clean_upstream_message(str(obj["error"]))
            raise BackendError(
                f"backend '{self.backend}' failed mid-stream: {message}", backend=self.backend
            )
        first, self.started = not self.started, True
        chunks = self.chunks
        if first:
            chunks.created = _unix(obj.get("created_at")) or chunks.created
            chunks.model = obj.get("model") or chunks.model
        out: list[JSON] = []
        if self.chat:
            delta = self._delta(obj.get("message") or {}, first)
            if delta:
                out.append(chunks.choice(delta))
        elif obj.get("response"):
            out.append(chunks.text(obj["response"]))
        if obj.get("done"):
            self.done = True
            finish = _finish(obj.get("done_reason"), self.tool_calls > 0)
            out.append(chunks.choice({}, finish) if self.chat else chunks.text("", finish))
            out.append(chunks.usage(_usage(obj)))
        return out

    def _delta(self, message: JSON, first: bool) -> JSON:
        delta: JSON = {"role": "assistant"} if first else {}
        if message.get("content") or (first and not message.get("tool_calls")):
            delta["content"] = message.get("content") or ""
        if message.get("thinking"):
            delta["reasoning_content"] = message["thinking"]
        calls = _openai_calls(message.get("tool_calls"))
        for call in calls:  # Ollama sends each call whole, so each takes the next index
            call["index"] = self.tool_calls
            self.tool_calls += 1
        return {**delta, "tool_calls": calls} if calls else delta


def forced_tools(call: Call) -> tuple[Call, ToolPlan | None]:
    """A chat that must call a tool (``tool_choice`` ``required`` or a named function), which
    Ollama cannot force, held to the JSON schema of a call through ``format`` instead."""
    choice = call.body.get("tool_choice")
    if call.kind != "chat" or not call.body.get("tools") or choice in (None, "auto", "none"):
        return call, None
    plan = plan_tools(call.body)
    return dataclasses.replace(call, body=plan.body), plan


class OllamaProvider(OllamaStore):
    """A server speaking Ollama's native API: chat, completions and embeddings; its model
    endpoints (tags, show, ps, pull, delete, copy, create, push) are `OllamaStore`'s."""

    dialect: ClassVar[str] = "ollama"
    default_port = 11434
    stream_usage = True  # the final stream object always carries the counters
    # Until /api/show has answered, Ollama itself decides (it refuses what a model cannot do).
    default_capabilities: ClassVar[Capabilities] = Capabilities(vision=True)

    def __init__(self, name: str, config: ProviderConfig) -> None:
        super().__init__(name, config)
        self._shown: dict[str, frozenset[str]] = {}  # model -> /api/show "capabilities"
        # model -> (the "capabilities" it was made from, the answer): one object per refresh,
        # so that `Provider.capabilities` can keep its answer until a refresh changes it
        self._reported: dict[str, tuple[frozenset[str], Capabilities]] = {}
        self.set_native(DIALECT_NATIVE["ollama"])

    def relay_body(self, call: Call) -> bytes:
        """The client's own request, its ``keep_alive`` within this backend's range too."""
        native = call.native
        assert native is not None
        body = {**native.body, "model": call.model, "stream": call.stream}
        if "keep_alive" in body:
            low, high = self.config.request_keep_alive_min, self.config.request_keep_alive_max
            body["keep_alive"] = bound_keep_alive(body["keep_alive"], low, high)
        return encode_body(body)

    def reported_capabilities(self, model: str) -> Capabilities:
        shown = self._shown.get(model)
        if shown is None:
            return self.default_capabilities
        made = self._reported.get(model)
        if made is not None and made[0] is shown:
            return made[1]
        # Embeddings stay Ollama's call: /api/embed serves generative models too in some versions.
        generates = "completion" in shown
        caps = Capabilities(
            chat=generates,
            completion=generates,
            tools="tools" in shown,
            vision="vision" in shown,
        )
        self._reported[model] = (shown, caps)
        return caps

    @staticmethod
    def normalise_endpoint(endpoint: str) -> str:
        # Users paste Ollama's documented base URL (".../api") or its OpenAI one (".../v1").
        return endpoint.rstrip("/").removesuffix("/api").removesuffix("/v1")

    def _plan(self, call: Call, stream: bool) -> tuple[str, JSON]:
        if call.kind == "chat":
            path, payload = "/api/chat", to_ollama_chat(call.body, call.model, stream=stream)
        elif call.kind == "completion":
            path = "/api/generate"
            payload = to_ollama_generate(call.body, call.model, stream=stream)
        else:
            path, payload = "/api/embed", to_ollama_embed(call.body, call.model)
        if "keep_alive" in payload:  # within this backend's own range, if it has one
            low, high = self.config.request_keep_alive_min, self.config.request_keep_alive_max
            payload["keep_alive"] = bound_keep_alive(payload["keep_alive"], low, high)
        return path, payload

    async def complete(self, call: Call) -> JSON:
        if call.native is not None:
            return await relay(self, call)
        call, plan = forced_tools(call)
        if plan is not None:
            return plan.reply(await self.complete(call))
        path, payload = self._plan(call, stream=False)
        obj = self._object(await self.call_json("POST", path, payload), path)
        if "error" in obj:
            message = clean_upstream_message(str(obj["error"]))
            raise BackendError(f"backend '{self.name}' failed: {message}", backend=self.name)
        if call.kind == "chat":
            return from_ollama_chat(obj, call.model)
        if call.kind == "completion":
            return from_ollama_generate(obj, call.model)
        self._field(obj, "embeddings", list, path)
        return from_ollama_embed(obj, call.model)

    def stream(self, call: Call) -> AsyncIterator[Chunk]:
        return self._stream(call) if call.native is None else relay_stream(self, call)

    async def _stream(self, call: Call) -> AsyncIterator[Chunk]:
        call, plan = forced_tools(call)
        if plan is not None:
            held = plan.stream()
            async with contextlib.aclosing(self._stream(call)) as chunks:  # type: ignore[type-var]
                async for chunk in chunks:
                    for data in held(chunk.data):
                        yield Chunk(data)
            return
        path, payload = self._plan(call, stream=True)
        translator = StreamTranslator(call.kind, call.model, self.name)
        async with (
            self.request("POST", path, payload) as resp,
            contextlib.aclosing(self._lines(resp)) as lines,
        ):
            async for line in lines:
                try:
                    obj = orjson.loads(line)
                except orjson.JSONDecodeError:
                    obj = line.decode("utf-8", "replace")[:120]
                for data in translator.feed(self._object(obj, path)):
                    yield Chunk(data)
                if translator.done:
                    return
        raise BackendUnavailableError(
            f"backend '{self.name}' closed the stream before it was done", backend=self.name
        )

    async def list_models(self) -> list[ModelInfo]:
        """``GET /api/tags``; each model's capabilities are asked of ``/api/show`` here, in the
        background refresh, so requests never wait on it."""
        result = await self.call_json("GET", "/api/tags", timeout=self.config.timeout)
        entries = self._field(result, "models", list, "/api/tags")
        models = [
            model_info(e, self.name) for e in entries if isinstance(e, dict) and e.get("name")
        ]
        shown = await asyncio.gather(*(self.show(m.id) for m in models), return_exceptions=True)
        for info, reply in zip(models, shown, strict=True):
            caps = reply.get("capabilities") if isinstance(reply, dict) else None
            if isinstance(caps, list):
                self._shown[info.id] = frozenset(str(c) for c in caps)
        return models

    async def probe(self) -> Health:
        return await self.probe_path("/api/version")

    def matches(self, requested: str, served: str) -> bool:
        # A name without a tag means ":latest" to Ollama (docs/api.md, "Model names"). The tag
        # follows the last "/", since a registry host may carry a ":port".
        if requested == served:
            return True
        return ":" not in requested.rpartition("/")[2] and served == requested + ":latest"
