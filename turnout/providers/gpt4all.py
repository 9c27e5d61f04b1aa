"""The GPT4All dialect: the desktop app's API server (port 4891), an OpenAI look-alike that
refuses anything it does not implement and cannot stream.

Facts (shared/reference/runtimes.md §15, nomic-ai/gpt4all gpt4all-chat/src/server.cpp): any
unknown top-level key is a 400 ("Unrecognized request argument supplied: X"), and so are
``max_completion_tokens``, a non-zero penalty, any ``seed``, ``stop``, ``stream_options``,
``logit_bias``, ``logprobs``, ``response_format``, ``tools``, ``tool_choice``, ``stream: true``,
roles other than system/user/assistant, non-string content and extra message keys. Its default
``max_tokens`` is 16. It answers 401 with no body when no chat is available to serve requests.

So requests are rebuilt from what GPT4All accepts, never forwarded: fields that only tune
sampling (seed, penalties, ``top_k``, ``user`` ...) are dropped; ``stop`` is applied by turnout to
the reply; a stream is emulated from the whole reply (`chunks_from_response`); what cannot be
honoured (tools, images, JSON modes, log probabilities) is refused with a 400 naming the field,
and `GPT4AllProvider.default_capabilities` tells the router so beforehand.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Mapping
from typing import Any, ClassVar

from pydantic import Field

from ..config import ProviderConfig
from ..errors import BackendProtocolError, BackendUnavailableError, CapabilityError, GatewayError
from .base import JSON, Call, Capabilities, Chunk, Health, Kind, ModelInfo
from .emulation import (
    chunks_from_response,
    cut_at_stop,
    refuse_unsupported,
    single_prompt,
    unsupported,
)
from .http import HttpProvider
from .presets import ANSWER_TOKENS

__all__ = ["GPT4AllConfig", "GPT4AllProvider", "to_gpt4all"]

_RUNTIME = "GPT4All's API server"
_ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}


def _refuse(param: str, what: str) -> CapabilityError:
    return unsupported(f"{_RUNTIME} cannot {what}.", param)


def to_gpt4all(kind: Kind, body: JSON, model: str, default_max_tokens: int) -> JSON:
    """The request GPT4All accepts for an OpenAI chat or completion request (without ``stop``,
    which turnout applies to the reply)."""
    refuse_unsupported(body, _RUNTIME)
    limit = body.get("max_completion_tokens")
    limit = body.get("max_tokens") if limit is None else limit
    out: JSON = {"model": model, "max_tokens": limit or default_max_tokens}
    for key in ("temperature", "top_p", "min_p", "n"):
        if body.get(key) is not None:
            out[key] = body[key]
    if kind == "chat":
        out["messages"] = [_message(m, i) for i, m in enumerate(body["messages"])]
        return out
    prompt = single_prompt(body.get("prompt"), _RUNTIME)
    out["prompt"] = prompt
    if body.get("echo"):
        out["echo"] = True
    return out


def _message(message: JSON, i: int) -> JSON:
    role = _ROLES.get(message.get("role", ""))
    if role is None or message.get("tool_calls"):
        raise _refuse(f"messages[{i}].role", f"take '{message.get('role')}' messages or tool calls")
    content = message.get("content")
    if isinstance(content, list):
        texts = []
        for j, part in enumerate(content):
            if part.get("type") != "text":
                raise _refuse(f"messages[{i}].content[{j}]", f"take {part.get('type')} parts")
            texts.append(part.get("text") or "")
        content = "".join(texts)
    return {"role": role, "content": content or ""}


class GPT4AllConfig(ProviderConfig):
    """A provider of type ``gpt4all``."""

    default_max_tokens: int | None = Field(
        None,
        ge=1,
        description="output token limit sent when a request gives none (GPT4All's own is 16; "
        "unset: ANSWER_TOKENS)",
    )


class GPT4AllProvider(HttpProvider):
    """GPT4All desktop's local API server."""

    dialect: ClassVar[str] = "gpt4all"
    settings: ClassVar[type[ProviderConfig]] = GPT4AllConfig
    config: GPT4AllConfig
    default_port = 4891
    stream_usage = True  # the emulated stream ends with the usage GPT4All reported
    default_capabilities: ClassVar[Capabilities] = Capabilities(
        embeddings=False, tools=False, vision=False, json_schema=False
    )

    @staticmethod
    def normalise_endpoint(endpoint: str) -> str:
        return endpoint.rstrip("/").removesuffix("/v1")

    async def complete(self, call: Call) -> JSON:
        if call.kind == "embedding":
            raise _refuse("model", "compute embeddings (it has no embeddings endpoint)")
        limit = self.config.default_max_tokens or ANSWER_TOKENS
        payload = to_gpt4all(call.kind, call.body, call.model, limit)
        path = "/v1/chat/completions" if call.kind == "chat" else "/v1/completions"
        result = await self.call_json("POST", path, payload)
        if not isinstance(result, dict) or not isinstance(result.get("choices"), list):
            raise BackendProtocolError(
                f"backend '{self.name}' answered {path} without a 'choices' list",
                backend=self.name,
            )
        result["id"] = f"{'chatcmpl' if call.kind == 'chat' else 'cmpl'}-{uuid.uuid4().hex}"
        if call.body.get("stop"):
            for choice in result["choices"]:
                self._apply_stop(choice, call.body["stop"])
        return result

    @staticmethod
    def _apply_stop(choice: JSON, stop: Any) -> None:
        message = choice.get("message")
        holder, key = (message, "content") if isinstance(message, dict) else (choice, "text")
        text = holder.get(key)
        if isinstance(text, str):
            holder[key], found = cut_at_stop(text, stop)
            if found:
                choice["finish_reason"] = "stop"

    async def stream(self, call: Call) -> AsyncIterator[Chunk]:
        # GPT4All answers "stream: true" with 400: ask for the whole reply, then send it as the
        # stream the client asked for.
        result = await self.complete(call)
        for data in chunks_from_response(result, call.kind):
            yield Chunk(data)

    def error_from_reply(
        self, status: int, body: bytes, headers: Mapping[str, str]
    ) -> GatewayError:
        if status == 401 and not body.strip():
            return BackendUnavailableError(
                f"backend '{self.name}' has no chat to serve API requests with (HTTP 401 with no "
                "body): enable 'Enable Local API Server' in GPT4All and keep a model loaded",
                backend=self.name,
            )
        return super().error_from_reply(status, body, headers)

    async def list_models(self) -> list[ModelInfo]:
        result = await self.call_json("GET", "/v1/models", timeout=self.config.timeout)
        items = result.get("data") if isinstance(result, dict) else None
        if not isinstance(items, list):
            raise BackendProtocolError(
                f"backend '{self.name}' answered /v1/models without a 'data' list",
                backend=self.name,
            )
        return [
            ModelInfo(str(item["id"]), str(item.get("owned_by") or self.name))
            for item in items
            if isinstance(item, dict) and item.get("id")
        ]

    async def probe(self) -> Health:
        return await self.probe_path("/v1/models")  # GPT4All has no health endpoint
