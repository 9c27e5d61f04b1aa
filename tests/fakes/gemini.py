"""A fake Google Gemini API (Generative Language API v1beta). Google's service cannot be reached
from here, so turnout's Gemini dialect is tested against this stand-in, which follows the API
reference at ai.google.dev/api (``models.generateContent``, ``models.streamGenerateContent``,
``models.list``, ``models.embedContent``, ``models.batchEmbedContents``; the ``Content``,
``Part``, ``GenerationConfig``, ``Tool``, ``ToolConfig``, ``Schema``, ``FunctionResponse`` and
``UsageMetadata`` types) and Google's error model (google.rpc.Status as JSON).

- Auth: the ``x-goog-api-key`` header (or ``?key=``). None: 403 ``PERMISSION_DENIED`` ("Method
  doesn't allow unregistered callers ..."); a wrong one: 400 ``INVALID_ARGUMENT`` "API key not
  valid. Please pass a valid API key." with an ``ErrorInfo`` detail, reason ``API_KEY_INVALID``.
- ``POST /v1beta/models/{model}:generateContent`` answers ``{candidates: [{content: {parts,
  role: "model"}, finishReason, index}], usageMetadata: {promptTokenCount, candidatesTokenCount,
  totalTokenCount, promptTokensDetails}, modelVersion, responseId}``; a blocked prompt (``block``)
  answers ``promptFeedback.blockReason`` and no candidates.
- It validates as the API does (proto3 JSON: lowerCamelCase or snake_case names; any other name
  is ``Invalid JSON payload received. Unknown name "x" at '<path>': Cannot find field.``):
  ``contents`` required, roles ``user``/``model`` ("Please use a valid role: user, model."), non-
  empty ``parts``, each one of ``text``/``inlineData {mimeType, data (base64)}``/
  ``functionCall``/``functionResponse {name, response (object)}``; function responses only from
  the user, as many as the calls of the model turn before, naming those functions; Schema
  objects (tool ``parameters``, ``responseSchema``) with Schema's fields only, an OBJECT's
  ``properties`` non-empty; ``stopSequences`` at most 5; ``temperature`` 0–2; ``toolConfig``
  modes AUTO/ANY/NONE. An unknown model, or one without the method, is 404 ``NOT_FOUND``
  ("models/x is not found for API version v1beta, or is not supported for generateContent ...").
- ``:streamGenerateContent?alt=sse`` answers ``text/event-stream`` of ``data: <GenerateContent
  Response>`` events separated by CRLF blank lines, each with the next words of the candidate and
  the usage so far; the last one has ``finishReason``; no terminator: the body just ends. Without
  ``alt=sse`` it answers one JSON array of the same objects. A failure mid-stream is a last event
  ``data: {"error": {...}}`` (the form the google-genai SDK raises on: python-genai
  ``_api_client.py`` treats a streamed chunk starting ``{"error":`` as an APIError).
- ``GET /v1beta/models`` lists ``{name: "models/…", version, displayName, inputTokenLimit,
  outputTokenLimit, supportedGenerationMethods}`` paged by ``pageSize``/``pageToken``
  (``nextPageToken``). ``:embedContent`` answers ``{embedding: {values}}``,
  ``:batchEmbedContents`` ``{embeddings: [{values}]}`` (each request's ``model`` must be the
  path's).
- Errors are ``{"error": {"code", "message", "status", "details"?}}``: 400 INVALID_ARGUMENT,
  403 PERMISSION_DENIED, 404 NOT_FOUND, 429 RESOURCE_EXHAUSTED (with ``QuotaFailure``, ``Help``
  and ``RetryInfo {retryDelay: "<n>s"}`` details), 500 INTERNAL, 503 UNAVAILABLE ("The model is
  overloaded. Please try again later.").

Deterministic model: a token is a word. It answers ``You said: <last user text>`` (as JSON
``{"answer": ...}`` when ``responseMimeType`` is application/json), cut to ``maxOutputTokens``
(``MAX_TOKENS``) or before a stop sequence; ``candidateCount`` candidates. Offered functions (mode
not NONE) after a user text, it calls the first allowed one with ``tool_arguments``; after a
function response it answers ``The tool said: <output>``.
"""

from __future__ import annotations

import base64
import binascii
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web

from .cloud import BODY, FakeCloud, Reject, cut_words, embedding_of, serve, words

__all__ = ["DEFAULT_MODELS", "FakeGemini", "GeminiModel", "run_fake_gemini"]

_STATUS = {
    400: "INVALID_ARGUMENT",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}
_REQUEST = {"contents", "systemInstruction", "generationConfig", "tools", "toolConfig"}
_REQUEST |= {"safetySettings", "cachedContent"}
_CONFIG = {
    "temperature", "topP", "topK", "candidateCount", "maxOutputTokens", "stopSequences",
    "presencePenalty", "frequencyPenalty", "seed", "responseMimeType", "responseSchema",
    "responseLogprobs", "logprobs", "thinkingConfig", "responseModalities",
}  # fmt: skip
_SCHEMA = {
    "type", "format", "title", "description", "nullable", "enum", "maxItems", "minItems",
    "properties", "required", "minProperties", "maxProperties", "minLength", "maxLength",
    "pattern", "example", "anyOf", "propertyOrdering", "default", "items", "minimum", "maximum",
}  # fmt: skip
_TYPES = {"STRING", "NUMBER", "INTEGER", "BOOLEAN", "ARRAY", "OBJECT", "NULL"}


@dataclass(frozen=True)
class GeminiModel:
    name: str
    display_name: str
    methods: tuple[str, ...] = ("generateContent", "countTokens")
    input_limit: int = 1048576
    output_limit: int = 8192


DEFAULT_MODELS = (
    GeminiModel("gemini-2.0-flash", "Gemini 2.0 Flash"),
    GeminiModel("gemini-2.5-flash", "Gemini 2.5 Flash", output_limit=65536),
    GeminiModel("text-embedding-004", "Text Embedding 004", ("embedContent",), 2048, 1),
)


def _snake(name: str) -> str:
    return re.sub(r"([A-Z])", lambda m: "_" + m[1].lower(), name)


def _get(obj: dict[str, Any], name: str) -> Any:
    """A field by its lowerCamelCase name or its snake_case one, as proto3 JSON accepts both."""
    return obj.get(name, obj.get(_snake(name)))


def _bad(message: str, status: int = 400) -> Reject:
    return Reject(
        status, {"error": {"code": status, "message": message, "status": _STATUS[status]}}
    )


def _unknown(obj: dict[str, Any], known: set[str], where: str) -> None:
    for key in obj:
        if key not in known and key not in {_snake(k) for k in known}:
            at = f" at '{where}'" if where else ""
            raise _bad(
                f'Invalid JSON payload received. Unknown name "{key}"{at}: Cannot find field.'
            )


class FakeGemini(FakeCloud):
    name = "gemini"

    def __init__(
        self,
        models: Sequence[GeminiModel] = DEFAULT_MODELS,
        *,
        tool_arguments: dict[str, Any] | None = None,
        block: str | None = None,
        api_key: str = "test-key",
    ) -> None:
        super().__init__(api_key=api_key)
        self.models = {m.name: m for m in models}
        self.tool_arguments = dict(tool_arguments or {"location": "Paris, FR"})
        self.block = block

    def error_body(self, status: int, message: str, kind: str | None) -> dict[str, Any]:
        return {
            "error": {
                "code": status,
                "message": message,
                "status": kind or _STATUS.get(status, "UNKNOWN"),
            }
        }

    def stream_error_body(self, message: str, kind: str | None) -> dict[str, Any]:
        return self.error_body(
            500, message or "An internal error has occurred.", kind or "INTERNAL"
        )

    @staticmethod
    def rate_limited(seconds: int) -> dict[str, Any]:
        """The documented 429 body: quota failure, help link and the retry delay."""
        details = [
            {
                "@type": "type.googleapis.com/google.rpc.QuotaFailure",
                "violations": [
                    {
                        "quotaMetric": "generativelanguage.googleapis.com/"
                        "generate_content_free_tier_requests",
                        "quotaId": "GenerateRequestsPerMinutePerProjectPerModel-FreeTier",
                    }
                ],
            },
            {
                "@type": "type.googleapis.com/google.rpc.Help",
                "links": [
                    {
                        "description": "Learn more about Gemini API quotas",
                        "url": "https://ai.google.dev/gemini-api/docs/rate-limits",
                    }
                ],
            },
            {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": f"{seconds}s"},
        ]
        message = "You exceeded your current quota, please check your plan and billing details."
        return {
            "error": {
                "code": 429,
                "message": message,
                "status": "RESOURCE_EXHAUSTED",
                "details": details,
            }
        }

    def routes(self, app: web.Application) -> None:
        app.router.add_get("/v1beta/models", self._list)
        app.router.add_post("/v1beta/models/{call}", self._call)

    def _auth(self, request: web.Request) -> None:
        key = request.headers.get("x-goog-api-key") or request.query.get("key")
        if not key:
            raise _bad(
                "Method doesn't allow unregistered callers (callers without established "
                "identity). Please use API Key or other form of API consumer identity to call "
                "this API.",
                403,
            )
        if key != self.api_key:
            reject = _bad("API key not valid. Please pass a valid API key.")
            info = {
                "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                "reason": "API_KEY_INVALID",
            }
            reject.body["error"]["details"] = [{**info, "domain": "googleapis.com"}]
            raise reject

    async def _list(self, request: web.Request) -> web.Response:
        self._auth(request)
        size = max(1, min(int(request.query.get("pageSize", "50")), 1000))
        start = int(request.query.get("pageToken") or 0)
        names = list(self.models.values())[start : start + size]
        entries = [
            {
                "name": f"models/{m.name}",
                "version": "001",
                "displayName": m.display_name,
                "inputTokenLimit": m.input_limit,
                "outputTokenLimit": m.output_limit,
                "supportedGenerationMethods": list(m.methods),
            }
            for m in names
        ]
        body: dict[str, Any] = {"models": entries}
        if start + size < len(self.models):
            body["nextPageToken"] = str(start + size)
        return web.json_response(body)

    async def _call(self, request: web.Request) -> web.StreamResponse:
        self._auth(request)
        model_name, _, method = request.match_info["call"].partition(":")
        model = self.models.get(model_name)
        # The list names generateContent and embedContent; their stream and batch forms follow.
        wanted = {"streamGenerateContent": "generateContent"}.get(method, method)
        wanted = {"batchEmbedContents": "embedContent"}.get(wanted, wanted)
        if model is None or wanted not in model.methods:
            raise _bad(
                f"models/{model_name} is not found for API version v1beta, or is not supported "
                f"for {method}. Call ListModels to see the list of available models and their "
                "supported methods.",
                404,
            )
        failure = self.take_failure()
        if failure is not None:
            raise Reject(failure.status, failure.body, failure.headers)
        body = request[BODY]
        if not isinstance(body, dict):
            raise _bad("Invalid JSON payload received. Expected an object.")
        if method == "embedContent":
            return web.json_response({"embedding": {"values": self._embed(body, model_name, "")}})
        if method == "batchEmbedContents":
            requests = body.get("requests") or []
            vectors = [self._embed(r, model_name, f"requests[{i}]") for i, r in enumerate(requests)]
            return web.json_response({"embeddings": [{"values": v} for v in vectors]})
        self._check(body)
        reply = self._answer(body, model_name)
        if method == "generateContent":
            self.sent.append([reply])
            return web.json_response(reply)
        return await self._stream(request, reply, request.query.get("alt") == "sse")

    def _embed(self, body: dict[str, Any], model: str, where: str) -> list[float]:
        if where and body.get("model") != f"models/{model}":
            raise _bad(
                f"* BatchEmbedContentsRequest.{where}.model: the model must be models/{model}"
            )
        parts = (_get(body, "content") or {}).get("parts") or []
        text = " ".join(p.get("text", "") for p in parts)
        if not text:
            raise _bad("* EmbedContentRequest.content: contents must not be empty")
        return embedding_of(text, _get(body, "outputDimensionality") or 768)

    # Validation, as the API reports it.

    def _check(self, body: dict[str, Any]) -> None:
        _unknown(body, _REQUEST, "")
        contents = body.get("contents")
        if not contents:
            raise _bad("* GenerateContentRequest.contents: contents is not specified\n")
        config = _get(body, "generationConfig") or {}
        _unknown(config, _CONFIG, "generation_config")
        if len(_get(config, "stopSequences") or ()) > 5:
            raise _bad("* GenerateContentRequest.generation_config.stop_sequences: at most 5")
        temperature = config.get("temperature")
        if temperature is not None and not 0 <= temperature <= 2:
            raise _bad(
                "* GenerateContentRequest.generation_config.temperature: must be in [0.0, 2.0]"
            )
        if _get(config, "responseSchema") is not None:
            _check_schema(_get(config, "responseSchema"), "generation_config.response_schema")
        for i, tool in enumerate(body.get("tools") or ()):
            for k, fn in enumerate(_get(tool, "functionDeclarations") or ()):
                where = f"tools[{i}].function_declarations[{k}]"
                _unknown(fn, {"name", "description", "parameters"}, where)
                if fn.get("parameters") is not None:
                    _check_schema(fn["parameters"], f"{where}.parameters")
        mode = ((_get(body, "toolConfig") or {}).get("functionCallingConfig") or {}).get("mode")
        if mode not in (None, "AUTO", "ANY", "NONE", "VALIDATED"):
            raise _bad(f"Invalid value at 'tool_config.function_calling_config.mode', \"{mode}\"")
        calls: list[str] = []
        for i, content in enumerate(contents):
            calls = self._check_content(i, content, calls)

    def _check_content(self, i: int, content: Any, calls: list[str]) -> list[str]:
        where = f"contents[{i}]"
        _unknown(content, {"role", "parts"}, where)
        role = content.get("role", "user")
        if role not in ("user", "model"):
            raise _bad("Please use a valid role: user, model.")
        parts = content.get("parts")
        if not parts:
            raise _bad(
                f"* GenerateContentRequest.{where}.parts: contents.parts must not be empty.\n"
            )
        made: list[str] = []
        answered: list[str] = []
        for j, part in enumerate(parts):
            at = f"{where}.parts[{j}]"
            _unknown(
                part,
                {
                    "text",
                    "inlineData",
                    "functionCall",
                    "functionResponse",
                    "fileData",
                    "thought",
                    "thoughtSignature",
                },
                at,
            )
            if _get(part, "inlineData") is not None:
                blob = _get(part, "inlineData")
                _unknown(blob, {"mimeType", "data"}, f"{at}.inline_data")
                try:
                    base64.b64decode(str(blob.get("data")), validate=True)
                except (binascii.Error, ValueError):
                    raise _bad(
                        f"Invalid value at '{at}.inline_data.data' (TYPE_BYTES), "
                        "Base64 decoding failed"
                    ) from None
            if _get(part, "functionCall") is not None:
                call = _get(part, "functionCall")
                if role != "model" or not isinstance(call.get("args", {}), dict):
                    raise _bad(
                        f"* GenerateContentRequest.{at}.function_call: only model turns "
                        "make calls, with object args"
                    )
                made.append(call.get("name"))
            if _get(part, "functionResponse") is not None:
                response = _get(part, "functionResponse")
                if role != "user" or not isinstance(response.get("response"), dict):
                    raise _bad(
                        f"* GenerateContentRequest.{at}.function_response.response: an "
                        "object, in a user turn"
                    )
                answered.append(response.get("name"))
        if calls and sorted(answered) != sorted(calls):
            raise _bad(
                "Please ensure that the number of function response parts is equal to the "
                "number of function call parts of the function call turn."
            )
        return made

    # The deterministic model.

    def _answer(self, body: dict[str, Any], model: str) -> dict[str, Any]:
        config = _get(body, "generationConfig") or {}
        usage = {"promptTokenCount": sum(words(_text(c)) for c in body["contents"])}
        if self.block:
            usage["totalTokenCount"] = usage["promptTokenCount"]
            return {
                "promptFeedback": {"blockReason": self.block},
                "usageMetadata": usage,
                "modelVersion": model,
            }
        last = body["contents"][-1]
        responses = [
            _get(p, "functionResponse") for p in last["parts"] if _get(p, "functionResponse")
        ]
        functions = [
            f for t in body.get("tools") or () for f in _get(t, "functionDeclarations") or ()
        ]
        calling = (_get(body, "toolConfig") or {}).get("functionCallingConfig") or {}
        parts: list[dict[str, Any]] = []
        finish = "STOP"
        if functions and not responses and calling.get("mode") != "NONE":
            allowed = calling.get("allowedFunctionNames") or [functions[0]["name"]]
            parts.append({"functionCall": {"name": allowed[0], "args": self.tool_arguments}})
        else:
            if responses:
                said = responses[0]["response"]
                reply = f"The tool said: {said.get('output', orjson.dumps(said).decode())}"
            else:
                reply = f"You said: {_text(last)}"
            reply, why = cut_words(
                reply, _get(config, "maxOutputTokens"), _get(config, "stopSequences")
            )
            finish = "MAX_TOKENS" if why == "length" else "STOP"
            if _get(config, "responseMimeType") == "application/json":
                reply = orjson.dumps({"answer": reply}).decode()
            parts.append({"text": reply})
        count = _get(config, "candidateCount") or 1
        candidates = [
            {"content": {"parts": parts, "role": "model"}, "finishReason": finish, "index": i}
            for i in range(count)
        ]
        output = count * sum(words(p.get("text", "")) or 3 for p in parts)
        usage |= {
            "candidatesTokenCount": output,
            "totalTokenCount": usage["promptTokenCount"] + output,
        }
        usage["promptTokensDetails"] = [
            {"modality": "TEXT", "tokenCount": usage["promptTokenCount"]}
        ]
        return {
            "candidates": candidates,
            "usageMetadata": usage,
            "modelVersion": model,
            "responseId": uuid.uuid4().hex[:22],
        }

    async def _stream(
        self, request: web.Request, reply: dict[str, Any], sse: bool
    ) -> web.StreamResponse:
        chunks = _chunks(reply)
        if self.midstream is not None:
            after, error = self.midstream
            chunks = [*chunks[:after], error]
        elif self.cut is not None:
            chunks = chunks[: self.cut]
        self.sent.append(chunks)
        response = web.StreamResponse()
        response.content_type = "text/event-stream" if sse else "application/json"
        await response.prepare(request)
        for k, chunk in enumerate(chunks):
            raw = orjson.dumps(chunk)
            frame = b"data: " + raw + b"\r\n\r\n" if sse else (b"[" if k == 0 else b",\r\n") + raw
            await response.write(frame[: len(frame) // 2])
            await response.write(frame[len(frame) // 2 :])
        if not sse:
            await response.write(b"]" if chunks else b"[]")
        await response.write_eof()
        return response


def _text(content: dict[str, Any]) -> str:
    return " ".join(p["text"] for p in content.get("parts") or () if isinstance(p.get("text"), str))


def _chunks(reply: dict[str, Any]) -> list[dict[str, Any]]:
    """``reply`` as stream chunks: two words of each candidate a chunk, usage so far on each,
    ``finishReason`` on the last."""
    if "candidates" not in reply:
        return [reply]
    first = reply["candidates"][0]
    parts = first["content"]["parts"]
    text = parts[0].get("text") if len(parts) == 1 else None
    pieces: list[list[dict[str, Any]]]
    if text:
        tokens = [w if k == 0 else " " + w for k, w in enumerate(text.split(" "))]
        pieces = [[{"text": "".join(tokens[k : k + 2])}] for k in range(0, len(tokens), 2)]
    else:
        pieces = [parts]
    out = []
    usage = reply["usageMetadata"]
    for k, piece in enumerate(pieces):
        last = k == len(pieces) - 1
        candidates = []
        for candidate in reply["candidates"]:
            entry: dict[str, Any] = {
                "content": {"parts": piece, "role": "model"},
                "index": candidate["index"],
            }
            if last:
                entry["finishReason"] = candidate["finishReason"]
            candidates.append(entry)
        so_far = (
            usage
            if last
            else {
                "promptTokenCount": usage["promptTokenCount"],
                "totalTokenCount": usage["promptTokenCount"],
            }
        )
        out.append(
            {
                "candidates": candidates,
                "usageMetadata": so_far,
                "modelVersion": reply["modelVersion"],
                "responseId": reply["responseId"],
            }
        )
    return out


def _check_schema(schema: Any, where: str) -> None:
    if not isinstance(schema, dict):
        raise _bad(f"Invalid value at '{where}': expected an object")
    _unknown(schema, _SCHEMA, where)
    kind = schema.get("type")
    if kind is not None and str(kind).upper() not in _TYPES:
        raise _bad(
            f"Invalid value at '{where}.type' "
            f'(type.googleapis.com/google.ai.generativelanguage.v1beta.Type), "{kind}"'
        )
    properties = schema.get("properties")
    if str(kind).upper() == "OBJECT" and not properties:
        raise _bad(
            f"* GenerateContentRequest.{where}.properties: should be non-empty for OBJECT type\n"
        )
    for name, sub in (properties or {}).items():
        _check_schema(sub, f"{where}.properties[{name}].value")
    if schema.get("items") is not None:
        _check_schema(schema["items"], f"{where}.items")
    for k, sub in enumerate(schema.get("anyOf") or ()):
        _check_schema(sub, f"{where}.any_of[{k}]")


def run_fake_gemini(**settings: Any) -> Any:
    """Serve a `FakeGemini` on a free port for the duration of a ``with`` block."""
    return serve(FakeGemini(**settings))
