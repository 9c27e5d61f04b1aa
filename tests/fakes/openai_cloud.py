"""A fake of OpenAI's own API (api.openai.com). OpenAI's service cannot be reached from here, so
turnout's ``openai-cloud`` preset is tested against this stand-in, which follows OpenAI's
documented wire format: the OpenAPI description (shared/reference/openai-openapi.json, summarised
in runtimes.md §1), the "Error codes" and "Rate limits" guides, and what the official
``openai`` SDK parses (``_base_client.py`` reads ``retry-after-ms`` and ``retry-after``;
``_streaming.py`` the SSE framing).

- Auth: ``Authorization: Bearer <key>``; none or a wrong one is 401 ``invalid_request_error``
  (code ``invalid_api_key`` for a wrong key).
- ``POST /v1/chat/completions`` answers ``chat.completion`` (``id: chatcmpl-…``,
  ``system_fingerprint``, ``service_tier``, a message with ``refusal: null`` and
  ``annotations: []``, usage with ``prompt_tokens_details`` and ``completion_tokens_details``).
  With ``stream: true`` it answers ``text/event-stream``: ``data: <chunk>`` events (the first
  delta ``{role, content: "", refusal: null}``, every chunk with an ``obfuscation`` string and,
  when ``stream_options.include_usage``, ``usage: null`` until a last ``choices: []`` chunk with
  the usage), then ``data: [DONE]``.
- It validates as OpenAI does: an unknown top-level argument is 400 "Unrecognized request
  argument supplied: <name>"; a reasoning model (``o*``, ``gpt-5*``) refuses ``max_tokens``
  (400 ``unsupported_parameter``, param ``max_tokens``: "Use 'max_completion_tokens' instead.");
  a ``tool`` message must answer a preceding ``tool_calls``; an unknown model is 404
  ``model_not_found`` ("The model `x` does not exist or you do not have access to it.").
- ``POST /v1/embeddings`` and ``GET /v1/models`` answer OpenAI's list shapes.
- Every reply carries ``x-request-id``, ``openai-processing-ms`` and the ``x-ratelimit-limit-*``,
  ``x-ratelimit-remaining-*`` and ``x-ratelimit-reset-*`` headers (durations like ``6m0s``).
  Errors are ``{"error": {"message", "type", "param", "code"}}``; `rate_limited` builds the
  documented 429 (``rate_limit_exceeded``, "Please try again in 20s."), `quota_exceeded` the
  ``insufficient_quota`` one. A failure mid-stream is a ``data: {"error": {...}}`` event (which
  the SDK raises as ``APIError``), and the stream ends.

Deterministic model: a token is a word. It answers ``You said: <last user text>``, cut to the
output limit (``length``) or before a ``stop`` string; offered tools after a user message, it
calls the first one with ``tool_arguments``; after a tool result it answers ``The tool said:
<result>``.
"""

from __future__ import annotations

import secrets
import time
import uuid
from typing import Any

import orjson
from aiohttp import web

from .cloud import BODY, FakeCloud, Reject, cut_words, embedding_of, serve, words

__all__ = ["FakeOpenAI", "run_fake_openai"]

MODELS = ("gpt-4o-mini", "o3-mini", "text-embedding-3-small")
_ARGUMENTS = {
    "model", "messages", "max_tokens", "max_completion_tokens", "temperature", "top_p", "n",
    "stream", "stream_options", "stop", "presence_penalty", "frequency_penalty", "logit_bias",
    "logprobs", "top_logprobs", "user", "seed", "tools", "tool_choice", "parallel_tool_calls",
    "response_format", "reasoning_effort", "metadata", "store", "service_tier", "modalities",
    "audio", "prediction", "web_search_options", "verbosity", "safety_identifier",
    "prompt_cache_key",
}  # fmt: skip


def _error(
    status: int, message: str, kind: str, param: str | None = None, code: str | None = None
) -> Reject:
    return Reject(
        status, {"error": {"message": message, "type": kind, "param": param, "code": code}}
    )


class FakeOpenAI(FakeCloud):
    name = "openai"

    def __init__(
        self, *, tool_arguments: dict[str, Any] | None = None, api_key: str = "sk-test"
    ) -> None:
        super().__init__(api_key=api_key)
        self.tool_arguments = dict(tool_arguments or {"location": "Paris, FR"})

    def error_body(self, status: int, message: str, kind: str | None) -> dict[str, Any]:
        return {
            "error": {
                "message": message,
                "type": kind or "server_error",
                "param": None,
                "code": None,
            }
        }

    def stream_error_body(self, message: str, kind: str | None) -> dict[str, Any]:
        text = message or "The server had an error while processing your request. Sorry about that!"
        return self.error_body(500, text, kind)

    @staticmethod
    def rate_limited(seconds: int) -> dict[str, Any]:
        message = (
            "Rate limit reached for gpt-4o-mini in organization org-fake on requests per min "
            f"(RPM): Limit 3, Used 3, Requested 1. Please try again in {seconds}s. Visit "
            "https://platform.openai.com/account/rate-limits to learn more."
        )
        return {
            "error": {
                "message": message,
                "type": "requests",
                "param": None,
                "code": "rate_limit_exceeded",
            }
        }

    @staticmethod
    def quota_exceeded() -> dict[str, Any]:
        message = "You exceeded your current quota, please check your plan and billing details."
        return {
            "error": {
                "message": message,
                "type": "insufficient_quota",
                "param": None,
                "code": "insufficient_quota",
            }
        }

    def response_headers(self) -> dict[str, str]:
        return {
            "x-request-id": f"req_{uuid.uuid4().hex}",
            "openai-processing-ms": "42",
            "x-ratelimit-limit-requests": "500",
            "x-ratelimit-limit-tokens": "200000",
            "x-ratelimit-remaining-requests": "499",
            "x-ratelimit-remaining-tokens": "199950",
            "x-ratelimit-reset-requests": "120ms",
            "x-ratelimit-reset-tokens": "15ms",
        }

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_post("/v1/embeddings", self._embeddings)
        app.router.add_get("/v1/models", self._models)

    def _auth(self, request: web.Request) -> None:
        header = request.headers.get("authorization", "")
        if not header.startswith("Bearer "):
            raise _error(
                401,
                "You didn't provide an API key. You need to provide your API key in an "
                "Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
                "invalid_request_error",
            )
        if header.removeprefix("Bearer ") != self.api_key:
            raise _error(
                401,
                "Incorrect API key provided: sk-wr***ng.",
                "invalid_request_error",
                None,
                "invalid_api_key",
            )

    def _begin(self, request: web.Request) -> dict[str, Any]:
        self._auth(request)
        failure = self.take_failure()
        if failure is not None:
            raise Reject(
                failure.status, failure.body, {**self.response_headers(), **failure.headers}
            )
        body = request[BODY]
        if not isinstance(body, dict):
            raise _error(
                400, "We could not parse the JSON body of your request.", "invalid_request_error"
            )
        if body.get("model") not in MODELS:
            raise _error(
                404,
                f"The model `{body.get('model')}` does not exist or you do not have access to it.",
                "invalid_request_error",
                None,
                "model_not_found",
            )
        return body

    async def _models(self, request: web.Request) -> web.Response:
        self._auth(request)
        data = [
            {"id": m, "object": "model", "created": 1715367049, "owned_by": "system"}
            for m in MODELS
        ]
        return web.json_response({"object": "list", "data": data}, headers=self.response_headers())

    async def _embeddings(self, request: web.Request) -> web.Response:
        body = self._begin(request)
        texts = [body["input"]] if isinstance(body["input"], str) else body["input"]
        size = body.get("dimensions") or 1536
        data = [
            {"object": "embedding", "index": i, "embedding": embedding_of(t, size)}
            for i, t in enumerate(texts)
        ]
        tokens = sum(words(t) for t in texts)
        usage = {"prompt_tokens": tokens, "total_tokens": tokens}
        reply = {"object": "list", "data": data, "model": body["model"], "usage": usage}
        return web.json_response(reply, headers=self.response_headers())

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body = self._begin(request)
        for key in body:
            if key not in _ARGUMENTS:
                raise _error(
                    400, f"Unrecognized request argument supplied: {key}", "invalid_request_error"
                )
        reasoning = body["model"].startswith(("o", "gpt-5"))
        if reasoning and "max_tokens" in body:
            raise _error(
                400,
                "Unsupported parameter: 'max_tokens' is not supported with this model. Use "
                "'max_completion_tokens' instead.",
                "invalid_request_error",
                "max_tokens",
                "unsupported_parameter",
            )
        asked: set[str] = set()
        for i, message in enumerate(body["messages"]):
            if message.get("role") == "tool" and message.get("tool_call_id") not in asked:
                raise _error(
                    400,
                    "Invalid parameter: messages with role 'tool' must be a response to a "
                    "preceeding message with 'tool_calls'.",
                    "invalid_request_error",
                    f"messages.[{i}].role",
                )
            asked |= {c["id"] for c in message.get("tool_calls") or ()}
        message, finish = self._answer(body)
        prompt = sum(words(_text(m.get("content"))) for m in body["messages"])
        output = words(message.get("content") or "") + 5 * len(message.get("tool_calls") or ())
        usage = {
            "prompt_tokens": prompt,
            "completion_tokens": output,
            "total_tokens": prompt + output,
            "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
            "completion_tokens_details": {
                "reasoning_tokens": 0,
                "audio_tokens": 0,
                "accepted_prediction_tokens": 0,
                "rejected_prediction_tokens": 0,
            },
        }
        head = {
            "id": f"chatcmpl-{secrets.token_urlsafe(21)}",
            "created": int(time.time()),
            "model": f"{body['model']}-2024-07-18",
            "service_tier": "default",
            "system_fingerprint": "fp_0ba0d124f1",
        }
        if not body.get("stream"):
            choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": finish}
            reply = {**head, "object": "chat.completion", "choices": [choice], "usage": usage}
            self.sent.append([reply])
            return web.json_response(reply, headers=self.response_headers())
        with_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        return await self._stream(request, head, message, finish, usage if with_usage else None)

    def _answer(self, body: dict[str, Any]) -> tuple[dict[str, Any], str]:
        last = body["messages"][-1]
        base = {"role": "assistant", "refusal": None, "annotations": []}
        if body.get("tools") and last["role"] == "user" and body.get("tool_choice") != "none":
            fn = body["tools"][0]["function"]["name"]
            arguments = orjson.dumps(self.tool_arguments).decode()
            call = {
                "id": f"call_{secrets.token_urlsafe(18)}",
                "type": "function",
                "function": {"name": fn, "arguments": arguments},
            }
            return {**base, "content": None, "tool_calls": [call]}, "tool_calls"
        said = (
            f"The tool said: {_text(last.get('content'))}"
            if last["role"] == "tool"
            else f"You said: {_text(last.get('content'))}"
        )
        stop = body.get("stop")
        limit = body.get("max_completion_tokens", body.get("max_tokens"))
        text, why = cut_words(said, limit, [stop] if isinstance(stop, str) else stop)
        return {**base, "content": text}, "length" if why == "length" else "stop"

    async def _stream(
        self,
        request: web.Request,
        head: dict[str, Any],
        message: dict[str, Any],
        finish: str,
        usage: dict[str, Any] | None,
    ) -> web.StreamResponse:
        def chunk(delta: dict[str, Any], reason: str | None = None) -> dict[str, Any]:
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": reason}
            out = {**head, "object": "chat.completion.chunk", "choices": [choice]}
            out["obfuscation"] = secrets.token_urlsafe(6)
            return {**out, "usage": None} if usage is not None else out

        chunks = [chunk({"role": "assistant", "content": "", "refusal": None})]
        if message.get("tool_calls"):
            call = message["tool_calls"][0]
            opening = {
                **call,
                "index": 0,
                "function": {"name": call["function"]["name"], "arguments": ""},
            }
            chunks.append(chunk({"tool_calls": [opening]}))
            arguments = call["function"]["arguments"]
            for k in range(0, len(arguments), 8):
                chunks.append(
                    chunk(
                        {
                            "tool_calls": [
                                {"index": 0, "function": {"arguments": arguments[k : k + 8]}}
                            ]
                        }
                    )
                )
        else:
            pieces = message["content"].split(" ")
            chunks += [chunk({"content": w if k == 0 else " " + w}) for k, w in enumerate(pieces)]
        chunks.append(chunk({}, finish))
        if usage is not None:
            chunks.append(
                {
                    **head,
                    "object": "chat.completion.chunk",
                    "choices": [],
                    "usage": usage,
                    "obfuscation": "x",
                }
            )
        if self.midstream is not None:
            after, error = self.midstream
            chunks = [*chunks[: after + 1], error]
        elif self.cut is not None:
            chunks = chunks[: self.cut + 1]
        self.sent.append(chunks)
        response = web.StreamResponse(headers=self.response_headers())
        response.content_type = "text/event-stream"
        await response.prepare(request)
        for item in chunks:
            frame = b"data: " + orjson.dumps(item) + b"\n\n"
            await response.write(frame[: len(frame) // 2])
            await response.write(frame[len(frame) // 2 :])
        if self.midstream is None and self.cut is None:
            await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    return " ".join(
        p.get("text", "") for p in content or () if isinstance(p, dict) and p.get("type") == "text"
    )


def run_fake_openai(**settings: Any) -> Any:
    """Serve a `FakeOpenAI` on a free port for the duration of a ``with`` block."""
    return serve(FakeOpenAI(**settings))
