"""The OpenAI-compatible dialect: llama.cpp, llama-cpp-python, vLLM, LocalAI, LM Studio, Jan,
TabbyAPI, MLX, mistral.rs, FastChat and text-generation-webui are presets of it, and so is OpenAI's
own API (``openai-cloud``: https://api.openai.com, ``max_completion_tokens``, an API key).

Requests go out nearly as they came in; responses and stream chunks are forwarded as the backend
sent them, re-serialised only where a quirk had to be mended.
"""

from __future__ import annotations

import contextlib
import dataclasses
import re
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import ClassVar

import orjson
from pydantic import Field

from ..config import ProviderConfig
from ..errors import (
    BackendError,
    BackendProtocolError,
    BackendRejectedError,
    BackendUnavailableError,
    GatewayError,
    clean_upstream_message,
)
from ..wire.openai import count_usage, prompt_text, reply_text
from ..wire.sse import SSEEvent
from ..wire.types import Native
from .base import JSON, Call, Capabilities, Chunk, Health, ModelInfo
from .emulation import unsupported
from .http import HttpProvider, error_message, json_or_none, parse_retry_after
from .openai_quirks import (
    StreamMender,
    fastchat_status,
    mend_response,
    pool_token_embeddings,
)
from .presets import PRESETS, Preset
from .relay import relay, relay_stream
from .tool_schema import ToolPlan, has_tool_history, plan_tools

__all__ = ["OpenAICompatConfig", "OpenAICompatProvider"]


class BackendBusyError(BackendUnavailableError):
    """A serialised backend is busy; turnout did not send a request of its own."""


# pydantic's error as FastAPI servers print it: {'type': ..., 'loc': ('body', 'top_k'), 'msg': ...}
_PYDANTIC_ERROR = re.compile(
    r"'loc': \('body', (?P<loc>[^)]*)\), 'msg': (?P<msg>'[^']*'|\"[^\"]*\")"
)


def _pydantic_field_error(text: str) -> tuple[str, str] | None:
    """(field, reason) of the first error in a pydantic "validation error" text, or None."""
    if "validation error" not in text:
        return None
    match = _PYDANTIC_ERROR.search(text)
    if match is None:
        return None
    param = ""
    for part in (p.strip() for p in match["loc"].split(",")):
        if part.isdigit():
            param += f"[{part}]"
        elif part:
            param += ("." if param else "") + part.strip("'\"")
    return (param, match["msg"][1:-1]) if param else None


_DEFAULT_PATHS = {
    "chat": "/v1/chat/completions",
    "completion": "/v1/completions",
    "embedding": "/v1/embeddings",
    "models": "/v1/models",
}


class OpenAICompatConfig(ProviderConfig):
    """A provider of the OpenAI-compatible dialect (``openai`` or a runtime preset)."""

    default_max_tokens: int | None = Field(
        None,
        ge=1,
        description="output token limit sent when a request gives none (unset: the preset's)",
    )


class OpenAICompatProvider(HttpProvider):
    dialect: ClassVar[str] = "openai"
    settings: ClassVar[type[ProviderConfig]] = OpenAICompatConfig
    config: OpenAICompatConfig
    default_port = 8000

    def __init__(self, name: str, config: ProviderConfig) -> None:
        preset = PRESETS.get(config.type, Preset("openai", 8000))
        self.preset = preset
        self.default_port = preset.port
        if config.max_concurrency is None and preset.max_concurrency is not None:
            config = config.model_copy(update={"max_concurrency": preset.max_concurrency})
        if config.endpoint is None and preset.endpoint is not None:
            config = config.model_copy(update={"endpoint": preset.endpoint})
        super().__init__(name, config)
        self.stream_usage = preset.stream_usage
        paths = config.paths
        self.paths = {
            "chat": paths.chat or _DEFAULT_PATHS["chat"],
            "completion": paths.completions or _DEFAULT_PATHS["completion"],
            "embedding": paths.embeddings or _DEFAULT_PATHS["embedding"],
            "models": paths.models or _DEFAULT_PATHS["models"],
        }
        self.health_path = paths.health or preset.health_path or self.paths["models"]
        self.tokenize_path = paths.tokenize or preset.tokenize_path
        self._schema_tools = False  # llama-server without --jinja: tools held to a schema
        self.set_native(preset.native)

    @staticmethod
    def normalise_endpoint(endpoint: str) -> str:
        # Users paste the SDK's base URL (".../v1"); paths already carry /v1.
        return endpoint.rstrip("/").removesuffix("/v1")

    def payload(self, call: Call) -> JSON:
        body = dict(call.body)
        body["model"] = call.model
        if self.preset.token_field == "max_completion_tokens":
            # OpenAI's reasoning models refuse the deprecated name; the current one wins.
            limit = body.pop("max_tokens", None)
            if body.get("max_completion_tokens") is None and limit is not None:
                body["max_completion_tokens"] = limit
        elif "max_completion_tokens" in body:
            # Every OpenAI-compatible runtime reads max_tokens; some ignore or reject the new name.
            limit = body.pop("max_completion_tokens")
            if body.get("max_tokens") is None:
                body["max_tokens"] = limit
        if call.kind == "embedding":
            return body
        if call.kind == "chat":
            self._chat_fields(body)
        field = self.preset.token_field
        if body.get(field) is None:  # the runtime's own default may be tiny (GPT4All: 16)
            default = self.config.default_max_tokens or self.preset.default_max_tokens.get(
                call.kind
            )
            if default:
                body[field] = default
        if call.stream:
            body["stream"] = True
            if self.stream_usage:
                body["stream_options"] = {"include_usage": True}
            else:
                body.pop("stream_options", None)
        else:
            body.pop("stream", None)
            body.pop("stream_options", None)
        return body

    def _chat_fields(self, body: JSON) -> None:
        """The chat fields this runtime spells its own way: ``developer`` messages as
        ``system`` (only OpenAI's own API has the role), and a JSON schema as llama-cpp-python's
        ``json_object`` with a ``schema``."""
        if "developer_role" not in self.preset.quirks and any(
            m.get("role") == "developer" for m in body["messages"]
        ):
            body["messages"] = [
                {**m, "role": "system"} if m.get("role") == "developer" else m
                for m in body["messages"]
            ]
        fmt = body.get("response_format")
        quirks = self.preset.quirks
        if "json_object_schema" in quirks and isinstance(fmt, dict) and "json_schema" in fmt:
            schema = (fmt.get("json_schema") or {}).get("schema") or {}
            body["response_format"] = {"type": "json_object", "schema": schema}
        if "tools_need_tool_choice" in quirks and body.get("tools"):
            body.setdefault("tool_choice", "auto")  # KoboldCpp ignores tools without it

    def _tool_plan(self, call: Call) -> tuple[Call, ToolPlan | None]:
        """Tools held to a JSON schema by turnout (`tool_schema`) for a runtime that cannot call
        them itself: the preset says so, or llama-server said it runs without ``--jinja``."""
        if (
            call.kind != "chat"
            or not ("schema_tools" in self.preset.quirks or self._schema_tools)
            or not has_tool_history(call.body)
        ):
            return call, None
        plan = plan_tools(call.body)
        return dataclasses.replace(call, body=plan.body), plan

    def _no_native_tools(self, error: GatewayError, call: Call) -> bool:
        """Whether ``error`` is llama-server refusing tools for want of ``--jinja`` ("tools param
        requires --jinja flag": HTTP 500 ``server_error`` from current llama-server, 400 from
        older ones); if so, tools are held to a schema by turnout from now on. A request sent
        before that was learned (a concurrent one) is asked again too."""
        if "jinja_tools" not in self.preset.quirks or not call.body.get("tools"):
            return False
        if "--jinja" not in error.message:
            return False
        self._schema_tools = True
        return True

    def relays(self, call: Call, native: Native) -> bool:
        # tools to a llama-server known to run without --jinja are held to a schema by turnout
        return native.dialect in self.native_paths and not (
            self._schema_tools and call.body.get("tools")
        )

    async def complete(self, call: Call) -> JSON:
        if call.native is not None:
            return await self._relay(call)
        try:
            return await self._complete(call)
        except BackendError as exc:  # its refusal is a 500: not only a BackendRejectedError
            if not self._no_native_tools(exc, call):
                raise
        return await self._complete(call)

    async def _complete(self, call: Call) -> JSON:
        call, plan = self._tool_plan(call)
        result = await self.call_json("POST", self.paths[call.kind], self.payload(call))
        if not isinstance(result, dict):
            raise BackendProtocolError(
                f"backend '{self.name}' answered with JSON that is not an object",
                backend=self.name,
            )
        if "error" in result and "choices" not in result and "data" not in result:
            message = clean_upstream_message(error_message(orjson.dumps(result)))
            raise BackendError(f"backend '{self.name}' failed: {message}", backend=self.name)
        if call.kind == "embedding":
            return pool_token_embeddings(result)
        if "fixed_usage" in self.preset.quirks:  # KoboldCpp: always 100/100/200
            result["usage"] = await count_usage(  # an estimate beats a made-up figure
                self.count_tokens, call.model, prompt_text(call.kind, call.body), reply_text(result)
            )
        return plan.reply(result) if plan is not None else mend_response(result)

    async def _relay(self, call: Call) -> JSON:
        try:
            return await relay(self, call)
        except BackendError as exc:
            self._relay_refused(exc, call)
            raise

    def _relay_refused(self, exc: BackendError, call: Call) -> None:
        """llama-server refused the tools for want of ``--jinja``: the router asks again (a 400
        from older servers too), and `relays` then says no: translated, the tools held to a
        schema by turnout."""
        if self._no_native_tools(exc, call):
            exc.retryable = True

    def stream(self, call: Call) -> AsyncIterator[Chunk]:
        if call.native is not None:
            if "jinja_tools" in self.preset.quirks and call.body.get("tools"):
                return self._relay_learning(call)
            return relay_stream(self, call)
        if "jinja_tools" in self.preset.quirks and call.body.get("tools"):
            return self._stream_learning(call)
        return self._stream(call)

    async def _stream_learning(self, call: Call) -> AsyncGenerator[Chunk, None]:
        """A stream with tools to llama-server, asked again with the tools held to a schema
        when it answers that it runs without ``--jinja``."""
        chunks = self._stream(call)
        try:
            first = await anext(chunks)
        except StopAsyncIteration:
            return
        except BackendError as exc:
            if not self._no_native_tools(exc, call):
                raise
            chunks = self._stream(call)
            retried = await anext(chunks, None)  # an empty stream ends here, not in an error
            if retried is None:
                return
            first = retried
        yield first
        async with contextlib.aclosing(chunks):
            async for chunk in chunks:
                yield chunk

    async def _relay_learning(self, call: Call) -> AsyncGenerator[Chunk, None]:
        chunks = relay_stream(self, call)
        try:
            first = await anext(chunks)
        except BackendError as exc:
            self._relay_refused(exc, call)
            raise
        yield first
        async with contextlib.aclosing(chunks):
            async for chunk in chunks:
                yield chunk

    async def _stream(self, call: Call) -> AsyncGenerator[Chunk, None]:
        call, plan = self._tool_plan(call)
        held = plan.stream() if plan is not None else None
        mend = StreamMender(call.kind)
        finished = False
        events = self.sse_events(self.paths[call.kind], self.payload(call))
        async with contextlib.aclosing(events):
            async for event in events:
                if event.data == b"[DONE]":
                    return
                if (chunk := self._event(event)) is not None:
                    for mended in mend(chunk):
                        finished = finished or _finishes(mended)
                        if held is None:
                            yield mended
                        else:
                            for data in held(mended.data):
                                yield Chunk(data)
            if not finished:
                # A clean end of body with neither [DONE] nor a finish reason is a reply cut
                # short (a crashed worker, a proxy timeout): say so rather than pass it as whole.
                raise BackendUnavailableError(
                    f"backend '{self.name}' ended the stream before it finished "
                    "(no finish_reason and no [DONE])",
                    backend=self.name,
                )

    def _event(self, event: SSEEvent) -> Chunk | None:
        if event.event == "error":
            raise self._stream_error(error_message(event.data))
        if event.event not in (None, "message"):
            return None  # named events of other protocols (mistral.rs agents, LM Studio)
        return self._chunk(event.data)

    def _stream_error(self, message: str) -> BackendError:
        return BackendError(
            f"backend '{self.name}' failed mid-stream: {clean_upstream_message(message)}",
            backend=self.name,
        )

    def _chunk(self, data: bytes) -> Chunk:
        try:
            obj = orjson.loads(data)
        except orjson.JSONDecodeError:
            raise BackendProtocolError(
                f"backend '{self.name}' sent a malformed stream event: {data[:120]!r}",
                backend=self.name,
            ) from None
        if not isinstance(obj, dict):
            raise BackendProtocolError(
                f"backend '{self.name}' sent a stream event that is not an object",
                backend=self.name,
            )
        if "error" in obj:
            raise self._stream_error(error_message(data))
        if obj.get("error_code"):  # FastChat: {"text": "...", "error_code": 50001}
            raise self._stream_error(str(obj.get("text") or f"error code {obj['error_code']}"))
        raw: bytes | None = data
        for choice in obj.get("choices") or ():
            if choice.get("finish_reason") == "null":  # KoboldCpp sends the string
                choice["finish_reason"] = None
                raw = None
        return Chunk(obj, raw)

    def error_from_reply(
        self, status: int, body: bytes, headers: Mapping[str, str]
    ) -> GatewayError:
        text = error_message(body)
        if status >= 500 and ("--embedding" in text or "embedding=True" in text):
            # llama-server without --embeddings (501), llama-cpp-python without embedding=True
            refused = unsupported(
                f"Backend '{self.name}' does not serve embeddings (its server was started "
                "without them).",
                "model",
            )
            refused.backend = self.name
            return refused
        if status in (422, 500):
            # A FastAPI server (llama-cpp-python's, behind its preset or the generic type)
            # answers a field it cannot parse with pydantic's error, and a traceback: that is
            # the client's mistake, so a 400 naming the field, not retried.
            invalid = _pydantic_field_error(text)
            if invalid is not None:
                param, why = invalid
                return BackendRejectedError(
                    f"backend '{self.name}' rejected the request: invalid value for "
                    f"'{param}': {why}",
                    param=param,
                    code="invalid_value",
                    backend=self.name,
                )
        if "fastchat_error_codes" in self.preset.quirks:
            status = fastchat_status(status, body)  # FastChat says 400 whatever went wrong
        error = super().error_from_reply(status, body, headers)
        if status == 429 and _error_code(body) == "insufficient_quota":
            # OpenAI's "You exceeded your current quota": billing, not a window that passes, so
            # asking again is futile while another backend may well answer.
            error.retryable = False
            error.retry_after = None
            error.code = "insufficient_quota"
        elif error.retryable and error.retry_after is None:
            error.retry_after = rate_limit_wait(headers)
        return error

    def configured_capabilities(self, model: str, reported: Capabilities) -> Capabilities:
        caps = super().configured_capabilities(model, reported)
        declared = any(
            e.name == model and e.supports_vision is not None for e in self.config.models
        )
        if self.preset.vision and not declared:
            caps = dataclasses.replace(caps, vision=True)
        return self._without_lacking(model, caps)

    def _without_lacking(self, model: str, caps: Capabilities) -> Capabilities:
        """The preset's ``lacks`` switched off, except what the configuration declared."""
        declared = {"streaming"} if self.config.streaming is not None else set()
        if any(e.name == model and e.supports_tools is not None for e in self.config.models):
            declared.add("tools")
        off = {name: False for name in self.preset.lacks - declared}
        return dataclasses.replace(caps, **off) if off else caps

    @asynccontextmanager
    async def _when_idle(self) -> AsyncIterator[None]:
        """Hold a concurrency slot for a call of turnout's own (the model list) to a backend that
        ends the stream it is serving when any other request arrives (llama-cpp-python, even for
        ``GET /v1/models``); raise `BackendBusyError` rather than wait behind a busy one."""
        if "interrupts_streams" not in self.preset.quirks or self._slots is None:
            yield
            return
        if self._slots.locked():
            raise BackendBusyError(
                f"backend '{self.name}' is serving a request, which any other request would cut "
                "short; not asked",
                backend=self.name,
            )
        await self._slots.acquire()
        try:
            yield
        finally:
            self._slots.release()

    async def list_models(self) -> list[ModelInfo]:
        async with self._when_idle():  # busy: the catalog keeps the list it has
            result = await self.call_json("GET", self.paths["models"], timeout=self.config.timeout)
        items = result.get("data") if isinstance(result, dict) else None
        if not isinstance(items, list):
            raise BackendProtocolError(
                f"backend '{self.name}' answered {self.paths['models']} without a 'data' list",
                backend=self.name,
            )
        return [
            ModelInfo(
                id=str(item["id"]),
                owned_by=str(item.get("owned_by") or self.name),
                created=int(item.get("created") or 0),
            )
            for item in items
            if isinstance(item, dict) and "id" in item
        ]

    async def probe(self) -> Health:
        try:
            async with self._when_idle():
                return await self.probe_path(self.health_path)
        except BackendBusyError:
            return Health(True, None, "busy serving a request")

    async def count_tokens(self, model: str, text: str) -> int | None:
        if not self.tokenize_path:
            return None
        # llama.cpp reads "content", llama-cpp-python "input", KoboldCpp "prompt"; each ignores
        # the others.
        payload = {"model": model, "input": text, "content": text, "prompt": text}
        result = await self.call_json("POST", self.tokenize_path, payload)
        tokens = result.get("tokens") if isinstance(result, dict) else None
        if not isinstance(tokens, list):
            value = result.get("value") if isinstance(result, dict) else None  # KoboldCpp
            return value if isinstance(value, int) and not isinstance(value, bool) else None
        return max(0, len(tokens) - 1) if "tokenize_adds_bos" in self.preset.quirks else len(tokens)


def _error_code(body: bytes) -> str | None:
    error = (json_or_none(body) or {}).get("error")
    code = error.get("code") if isinstance(error, dict) else None
    return code if isinstance(code, str) else None


_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")
_UNIT_SECONDS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}


def duration_seconds(text: str) -> float | None:
    """Seconds in a Go-style duration as OpenAI's ``x-ratelimit-reset-*`` headers write it
    (``"1s"``, ``"6m0s"``, ``"20ms"``, ``"1h2m3.5s"``); None if it is not one."""
    parts = _DURATION.findall(text.strip())
    if not parts or "".join(n + u for n, u in parts) != text.strip():
        return None
    return sum(float(n) * _UNIT_SECONDS[u] for n, u in parts)


def rate_limit_wait(headers: Mapping[str, str]) -> float | None:
    """How long OpenAI asks a client to wait, from its documented headers: ``retry-after-ms``
    first, then ``retry-after`` (seconds or an HTTP date), as the official SDK reads them; failing
    both, the reset time of whichever ``x-ratelimit-remaining-*`` budget is spent."""
    ms = headers.get("retry-after-ms")
    if ms is not None:
        try:
            return max(0.0, float(ms) / 1000.0)
        except ValueError:
            pass
    seconds = parse_retry_after(headers.get("retry-after"))
    if seconds is not None:
        return seconds
    waits = [
        duration_seconds(headers.get(f"x-ratelimit-reset-{kind}") or "")
        for kind in ("requests", "tokens")
        if headers.get(f"x-ratelimit-remaining-{kind}") == "0"
    ]
    found = [w for w in waits if w is not None]
    return max(found) if found else None


def _finishes(chunk: Chunk) -> bool:
    return any(choice.get("finish_reason") for choice in chunk.data.get("choices") or ())
