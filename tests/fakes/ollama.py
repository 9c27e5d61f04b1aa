"""A fake Ollama server. Ollama itself cannot be installed or run here, so turnout's Ollama
dialect is tested against this stand-in, which follows Ollama's documented wire format exactly:
ollama/ollama docs/api.md @fb30760, as summarised in shared/reference/runtimes.md §3.

- ``GET``/``HEAD /`` answer ``Ollama is running``; ``GET /api/version`` answers ``{"version"}``.
- ``GET /api/tags`` lists ``{name, model, modified_at, size, digest, details}``; ``POST /api/show``
  answers ``modelfile, parameters, template, details, model_info, capabilities``; ``GET /api/ps``
  lists the models earlier requests loaded, with ``expires_at`` and ``size_vram``.
- ``POST /api/chat``, ``/api/generate`` and ``/api/embed`` answer in Ollama's shapes. ``stream``
  defaults to true when absent. A stream is ``application/x-ndjson``, one JSON object per line
  (each written in two pieces, so a client must reassemble lines), the last one with
  ``done: true``, ``done_reason``, durations in nanoseconds, ``prompt_eval_count`` and
  ``eval_count``. A tool call arrives whole in one object, its ``arguments`` an object. An empty
  ``messages`` (or ``prompt``) only loads the model: ``done_reason: "load"`` (``"unload"`` with
  ``keep_alive: 0``).
- Errors are ``{"error": "..."}`` with the documented statuses: 400 for a bad request, 404 for an
  unknown model (``model "x" not found, try pulling it first``), and whatever a test injects. A
  failure mid-stream is a last line ``{"error": "..."}`` under the 200 already sent.
- ``POST /api/pull`` (``{model, insecure?, stream?}``, streaming unless ``stream: false``) sends
  NDJSON progress: ``pulling manifest``, per layer ``pulling <digest>`` with ``digest``, ``total``
  and ``completed``, ``verifying sha256 digest``, ``writing manifest``, ``removing any unused
  layers``, ``success``; the model then appears in ``/api/tags``. A name the registry
  (`FakeOllama.registry`) lacks gets ``pulling manifest`` then ``{"error": "pull model manifest:
  file does not exist"}`` (status 500 when not streamed). ``DELETE /api/delete`` (``{model}``)
  answers 200 with no body, or 404 ``{"error": "model '<name>' not found"}``.
- ``POST /api/copy`` (``{source, destination}``) answers 200 with no body (a model already called
  ``destination`` is replaced, as Ollama does), 404 ``{"error": "model \"<source>\" not found"}``,
  or 400 for a name ``model.ParseName`` refuses (``source "<x>" is invalid``).
- ``POST /api/create`` (``{model, from?, files?, adapters?, quantize?, template?, license?,
  system?, parameters?, messages?, stream?}``, streaming unless ``stream: false``) sends NDJSON
  progress: ``using existing layer sha256:<digest>`` per layer of ``from``, ``creating new layer
  sha256:<digest>`` per field set on the new model, ``writing manifest``, ``success``; the model
  then appears in ``/api/tags``. A ``from`` that is not here is pulled first (``pulling
  manifest``...), as Ollama does, and one the registry lacks ends the stream with
  ``{"error": "pull model manifest: file does not exist"}``. Neither ``from`` nor ``files`` is 400
  ``{"error": "neither 'from' or 'files' was specified"}`` before any line; ``files`` name blobs,
  which the fake never holds (400 ``blob <digest> not found``).
- ``POST /api/push`` (``{model, insecure?, stream?}``) sends ``retrieving manifest``, per layer
  ``pushing <digest[7:19]>`` with ``digest``, ``total`` and ``completed``, ``pushing manifest``,
  ``success`` (`FakeOllama.pushed` records it). A model that is not here ends with ``couldn't
  retrieve manifest`` and an error line; one without a namespace (the library's) with
  ``{"error": "unauthorized: access denied"}``.
- Pull, create and push with ``stream: false`` answer the last object alone
  (``{"status": "success"}``), or the error with status 500 when it failed after it began.
  docs/api.md documents the shapes, the framing and the statuses; the words of failures it does
  not show (an invalid name, a refused push) are modelled on Ollama's server, not copied from a
  capture.
- It checks what it receives as Ollama's Go decoder would: ``content`` must be a string, images
  bare base64 (a ``data:`` prefix is ``illegal base64 data at input byte 4``), tool call
  ``arguments`` objects, options of the right JSON type; a model must have the capability asked
  of it (``tools``, ``vision``, ``completion``).

Stricter than Ollama, so that a mistranslation cannot slip through: an option name that
``api.Options`` does not know is refused with 400 (Ollama logs ``invalid option provided`` and
ignores it), and so is a message role other than system, user, assistant or tool.

Its model is deterministic; a token is a whitespace-separated word. It answers ``You said: <last
message>`` (or ``reply``) one word per stream object, cut to ``num_predict`` words (``done_reason:
"length"``) and before the first ``stop`` string. Offered tools after a user message, it calls the
first tool with ``tool_arguments``; after a tool result it answers ``The tool said: <result>``.
Tests can make it fail (`FakeOllama.fail`), break a stream with an error line (`fail_midstream`)
or end one early (`cut_stream`). `requests` records every request received, `sent` every object
answered.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import dataclasses
import hashlib
import math
import re
import string
import struct
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web

from tests.support.aioserver import serve_app

__all__ = [
    "DEFAULT_MODELS",
    "OPTION_TYPES",
    "FakeModel",
    "FakeOllama",
    "Received",
    "embedding_of",
    "run_fake_ollama",
]

VERSION = "0.12.6"
MIDSTREAM_ERROR = "an error was encountered while running the model"  # docs/api/errors.mdx

#: ``api.Options`` at fb30760 (runtimes.md §3): each option and the JSON type Go decodes it from
OPTION_TYPES: dict[str, str] = {
    **dict.fromkeys(
        ["num_keep", "seed", "num_predict", "top_k", "repeat_last_n", "num_ctx", "num_batch",
         "num_gpu", "main_gpu", "num_thread", "draft_num_predict"], "integer"),
    **dict.fromkeys(
        ["top_p", "min_p", "typical_p", "temperature", "repeat_penalty", "presence_penalty",
         "frequency_penalty"], "float32"),
    "use_mmap": "boolean",
    "stop": "array",
}  # fmt: skip
_ROLES = ("system", "user", "assistant", "tool")
_BODY = web.RequestKey("body", object)
_BASE64 = frozenset(string.ascii_letters + string.digits + "+/=")
_NAME_PART = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*\Z")


@dataclass(frozen=True)
class FakeModel:
    name: str
    family: str = "llama"
    parameter_size: str = "3.2B"
    quantization_level: str = "Q4_K_M"
    capabilities: tuple[str, ...] = ("completion", "tools")
    context_length: int = 131072
    embedding_length: int = 3072
    size: int = 2019393189
    modified_at: str = "2024-09-25T14:12:43.212335093-07:00"

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.name.encode()).hexdigest()

    def details(self) -> dict[str, Any]:
        return {
            "parent_model": "",
            "format": "gguf",
            "family": self.family,
            "families": [self.family],
            "parameter_size": self.parameter_size,
            "quantization_level": self.quantization_level,
        }

    def entry(self) -> dict[str, Any]:
        """The model as ``/api/tags`` lists it."""
        return {
            "name": self.name,
            "model": self.name,
            "modified_at": self.modified_at,
            "size": self.size,
            "digest": self.digest,
            "details": self.details(),
        }


DEFAULT_MODELS = (
    FakeModel("llama3.2:latest"),
    FakeModel(
        "llava:7b",
        parameter_size="7B",
        quantization_level="Q4_0",
        capabilities=("completion", "vision"),
        context_length=32768,
        embedding_length=4096,
        size=4733363377,
        modified_at="2024-02-01T09:12:44.02512-08:00",
    ),
    FakeModel(
        "all-minilm:latest",
        family="bert",
        parameter_size="23M",
        quantization_level="F16",
        capabilities=("embedding",),
        context_length=512,
        embedding_length=384,
        size=45960996,
        modified_at="2024-05-13T10:01:02Z",
    ),
)


@dataclass(frozen=True)
class Received:
    method: str
    path: str
    body: Any  # the parsed JSON; the raw bytes if they were not JSON; None if there were none


class _Reject(Exception):
    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


def embedding_of(text: str, dimensions: int) -> list[float]:
    """The fake's embedding of ``text``: deterministic, unit length, exact in float32."""
    seed = hashlib.sha256(text.encode()).digest()
    raw = [((seed[i % 32] + 31 * i) % 256) / 127.5 - 1.0 for i in range(dimensions)]
    norm = math.sqrt(sum(v * v for v in raw)) or 1.0
    return [struct.unpack("<f", struct.pack("<f", v / norm))[0] for v in raw]


def _now() -> str:
    """RFC 3339 with nanoseconds, as Go writes ``time.Time``."""
    ns = time.time_ns()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ns // 10**9)) + f".{ns % 10**9:09d}Z"


def _go_type(value: Any) -> str:
    names = {str: "string", bool: "bool", list: "array", dict: "object", type(None): "null"}
    return names.get(type(value), "number")


def _base64_error(value: Any) -> str | None:
    """Go's base64.StdEncoding error for an image that is not bare base64, or None."""
    if not isinstance(value, str):
        return f"json: cannot unmarshal {_go_type(value)} into Go value of type []uint8"
    for i, ch in enumerate(value):
        if ch not in _BASE64:
            return f"illegal base64 data at input byte {i}"
    try:
        base64.b64decode(value, validate=True)
    except binascii.Error:
        return f"illegal base64 data at input byte {len(value)}"
    return None


def _fits(value: Any, kind: str) -> bool:
    if value is None:
        return True  # Go skips a null option
    if kind == "boolean":
        return isinstance(value, bool)
    if kind == "array":
        return isinstance(value, list) and all(isinstance(v, str) for v in value)
    return isinstance(value, int | float) and not isinstance(value, bool)


def _words(text: str, options: dict[str, Any]) -> tuple[list[str], str]:
    """The reply as stream pieces (one word each) and its done_reason."""
    for stop in options.get("stop") or ():
        if stop and stop in text:
            text = text[: text.index(stop)]
    pieces = [w if i == 0 else " " + w for i, w in enumerate(text.split(" "))] if text else []
    limit = options.get("num_predict")
    if isinstance(limit, int | float) and 0 < limit < len(pieces):
        return pieces[: int(limit)], "length"
    return pieces, "stop"


def _full_name(name: str) -> str:
    """A model name as Ollama stores it: ``:latest`` when it gives no tag (docs/api.md, "Model
    names"; the tag follows the last "/", since a registry host may carry a ":port")."""
    return name if ":" in name.rpartition("/")[2] else name + ":latest"


def _valid_name(name: str) -> bool:
    """Whether ``model.ParseName`` takes the name: ``[host[:port]/][namespace/]model[:tag]``,
    each part letters, digits, ``_``, ``-`` and ``.``, not starting with ``-`` or ``.``."""
    rest, _, last = name.rpartition("/")
    model, colon, tag = last.partition(":")
    parts = [*(rest.split("/") if rest else []), model, *([tag] if colon else [])]
    if len(parts) - bool(colon) >= 3:  # a registry host may carry a port
        parts[0] = parts[0].partition(":")[0] + parts[0].partition(":")[2]
    return len(parts) - bool(colon) <= 3 and all(_NAME_PART.match(p) for p in parts)


def _go_quote(value: str) -> str:
    """A string as Go's ``%q`` writes it (for the names in Ollama's messages)."""
    return orjson.dumps(value).decode()


def _registry_path(name: str) -> list[str]:
    """``host/namespace/model/tag`` of a full name, with Ollama's defaults."""
    rest, _, tag = name.rpartition(":")
    parts = rest.split("/")
    if len(parts) == 1:
        parts = ["library", *parts]
    if len(parts) == 2:
        parts = ["registry.ollama.ai", *parts]
    return [*parts, tag]


def _metrics(prompt_tokens: int, eval_tokens: int) -> dict[str, int]:
    load, prompt, evaluation = 1_250_000, 120_000 * prompt_tokens, 15_000_000 * eval_tokens
    return {
        "total_duration": load + prompt + evaluation,
        "load_duration": load,
        "prompt_eval_count": prompt_tokens,
        "prompt_eval_duration": prompt,
        "eval_count": eval_tokens,
        "eval_duration": evaluation,
    }


class FakeOllama:
    """State and handlers of one fake server; `run_fake_ollama` serves it."""

    def __init__(
        self,
        models: Sequence[FakeModel] = DEFAULT_MODELS,
        *,
        reply: str | None = None,
        tool_arguments: dict[str, Any] | None = None,
        version: str = VERSION,
    ) -> None:
        self.models = {m.name: m for m in models}
        #: what /api/pull can fetch: the models given, and one that is not installed yet
        self.registry = {**self.models, "qwen2.5:0.5b": FakeModel("qwen2.5:0.5b", "qwen2")}
        self.reply = reply
        self.tool_arguments = dict(tool_arguments or {"location": "Paris, FR", "format": "celsius"})
        self.version = version
        self.url = ""
        self.requests: list[Received] = []
        self.sent: list[list[dict[str, Any]]] = []  # per answered request, the objects sent
        self.loaded: dict[str, float] = {}
        #: what /api/push uploaded: the registry's copy of each model pushed, by full name
        self.pushed: dict[str, FakeModel] = {}
        self._failure: _Reject | None = None
        self._midstream: tuple[int, str] | None = None
        self._cut: int | None = None

    # What tests control.

    def fail(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        """Answer every inference request with ``{"error": message}`` until `reset`."""
        self._failure = _Reject(status, message, headers)

    def fail_midstream(self, after: int = 2, message: str = MIDSTREAM_ERROR) -> None:
        """Streams send ``after`` objects, then the error line, and end."""
        self._midstream = (after, message)

    def cut_stream(self, after: int = 2) -> None:
        """Streams send ``after`` objects and end without the ``done: true`` object."""
        self._cut = after

    def reset(self) -> None:
        self._failure = self._midstream = self._cut = None
        self.requests.clear()
        self.sent.clear()

    def bodies(self, path: str) -> list[Any]:
        """The bodies of the requests received on ``path``, oldest first."""
        return [r.body for r in self.requests if r.path == path]

    # The application.

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._record])
        app.router.add_get("/", self._root)
        app.router.add_get("/api/version", self._version)
        app.router.add_get("/api/tags", self._tags)
        app.router.add_get("/api/ps", self._ps)
        app.router.add_post("/api/show", self._show)
        app.router.add_post("/api/chat", self._chat)
        app.router.add_post("/api/generate", self._generate)
        app.router.add_post("/api/embed", self._embed)
        app.router.add_post("/api/pull", self._pull)
        app.router.add_delete("/api/delete", self._delete)
        app.router.add_post("/api/copy", self._copy)
        app.router.add_post("/api/create", self._create)
        app.router.add_post("/api/push", self._push)
        app.router.add_route("*", "/{tail:.*}", self._not_found)  # Gin's 404, any method
        return app

    @web.middleware
    async def _record(self, request: web.Request, handler: Any) -> web.StreamResponse:
        raw = await request.read()
        body: Any = None
        if raw:
            try:
                body = orjson.loads(raw)
            except orjson.JSONDecodeError:
                body = raw
        request[_BODY] = body
        self.requests.append(Received(request.method, request.path, body))
        try:
            response: web.StreamResponse = await handler(request)
        except _Reject as exc:
            return web.json_response({"error": exc.message}, status=exc.status, headers=exc.headers)
        return response

    async def _root(self, request: web.Request) -> web.Response:
        return web.Response(text="Ollama is running")

    async def _not_found(self, request: web.Request) -> web.Response:
        return web.Response(status=404, text="404 page not found")

    async def _version(self, request: web.Request) -> web.Response:
        return web.json_response({"version": self.version})

    async def _tags(self, request: web.Request) -> web.Response:
        return web.json_response({"models": [m.entry() for m in self.models.values()]})

    async def _ps(self, request: web.Request) -> web.Response:
        running = []
        for name, since in self.loaded.items():
            model = self.models[name]
            expires = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(since + 300))
            entry = {k: v for k, v in model.entry().items() if k != "modified_at"}
            running.append({**entry, "expires_at": expires, "size_vram": model.size})
        return web.json_response({"models": running})

    async def _show(self, request: web.Request) -> web.Response:
        body = self._body(request)
        model = self._lookup(body.get("model"))
        if model is None:
            raise _Reject(404, f"model '{body.get('model')}' not found")
        arch = model.family
        return web.json_response(
            {
                "modelfile": f'# Modelfile generated by "ollama show"\nFROM {model.name}\n'
                'TEMPLATE """{{ .Prompt }}"""\nPARAMETER num_ctx 4096',
                "parameters": "num_ctx                        4096\n"
                'stop                           "<|eot_id|>"',
                "template": "{{ .Prompt }}",
                "details": model.details(),
                "model_info": {
                    "general.architecture": arch,
                    "general.file_type": 15,
                    f"{arch}.context_length": model.context_length,
                    f"{arch}.embedding_length": model.embedding_length,
                },
                "capabilities": list(model.capabilities),
                "modified_at": model.modified_at,
            }
        )

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body = self._body(request)
        messages = body.get("messages") or []
        images = self._check_messages(messages)
        tools = self._check_tools(body.get("tools"))
        stream, options = self._check_common(body)
        model = self._model(body, "completion", "chat")
        if tools:
            self._model(body, "tools", "tools")
        if images:
            self._model(body, "vision", "images")
        if not messages:
            return self._load(body, model, {"message": {"role": "assistant", "content": ""}})
        self._ran(model)
        name, last = body["model"], messages[-1]
        calls: list[dict[str, Any]] = []
        if tools and last.get("role") == "user":
            pieces, reason = [], "stop"
            calls = [self._tool_call(tools[0]["function"]["name"])]
            eval_tokens = 1 + len(self.tool_arguments)
        else:
            said = last.get("content", "")
            text = f"The tool said: {said}" if last["role"] == "tool" else f"You said: {said}"
            pieces, reason = _words(text if self.reply is None else self.reply, options)
            eval_tokens = len(pieces)
        prompt_tokens = sum(len(m.get("content", "").split()) for m in messages) + 64 * images
        parts = [self._head(name, {"message": {"role": "assistant", "content": p}}) for p in pieces]
        if calls:
            call_message = {"role": "assistant", "content": "", "tool_calls": calls}
            parts.append(self._head(name, {"message": call_message}))
        end = {"done": True, "done_reason": reason, **_metrics(prompt_tokens, eval_tokens)}
        final = self._head(name, {"message": {"role": "assistant", "content": ""}, **end})
        whole: dict[str, Any] = {"role": "assistant", "content": "".join(pieces)}
        if calls:
            whole["tool_calls"] = calls
        return await self._answer(request, stream, parts, final, {**final, "message": whole})

    async def _generate(self, request: web.Request) -> web.StreamResponse:
        body = self._body(request)
        prompt = body.get("prompt", "")
        for key in ("prompt", "suffix", "system", "template"):
            if not isinstance(body.get(key, ""), str):
                raise _Reject(400, self._unmarshal(body[key], f"GenerateRequest.{key}", "string"))
        images = body.get("images") or []
        for image in images:
            self._check_image(image)
        if body.get("raw") and (body.get("template") or body.get("system")):
            raise _Reject(400, "raw mode does not support template, system, or context")
        stream, options = self._check_common(body)
        model = self._model(body, "completion", "generate")
        if images:
            self._model(body, "vision", "images")
        if not prompt:
            return self._load(body, model, {"response": ""})
        self._ran(model)
        name = body["model"]
        text = f"You said: {prompt}" if self.reply is None else self.reply
        pieces, reason = _words(text, options)
        parts = [self._head(name, {"response": p}) for p in pieces]
        prompt_tokens = len(prompt.split()) + 64 * len(images)
        end = {"done": True, "done_reason": reason, "context": [1, 2, 3]}
        final = self._head(name, {"response": "", **end, **_metrics(prompt_tokens, len(pieces))})
        whole = {**final, "response": "".join(pieces)}
        return await self._answer(request, stream, parts, final, whole)

    async def _embed(self, request: web.Request) -> web.Response:
        body = self._body(request)
        value = body.get("input")
        texts = [value] if isinstance(value, str) else value
        if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
            raise _Reject(400, "invalid input type")
        if not isinstance(body.get("truncate", True), bool):
            raise _Reject(400, self._unmarshal(body["truncate"], "EmbedRequest.truncate", "bool"))
        dimensions = body.get("dimensions")
        if dimensions is not None and (not isinstance(dimensions, int) or dimensions < 1):
            raise _Reject(400, "dimensions must be a positive integer")
        self._check_options(body)
        model = self._model(body)
        self._ran(model)
        size = min(dimensions or model.embedding_length, model.embedding_length)
        tokens = sum(max(1, len(t.split())) for t in texts)
        metrics = _metrics(tokens, 0)
        answer = {
            "model": body["model"],
            "embeddings": [embedding_of(t, size) for t in texts],
            "total_duration": metrics["total_duration"],
            "load_duration": metrics["load_duration"],
            "prompt_eval_count": tokens,
        }
        self.sent.append([answer])
        return web.json_response(answer)

    async def _pull(self, request: web.Request) -> web.StreamResponse:
        body = self._body(request)
        name = body.get("model")
        if not isinstance(name, str) or not name:
            raise _Reject(400, "model is required")
        stream = body.get("stream", True)
        if not isinstance(stream, bool):
            raise _Reject(400, self._unmarshal(stream, "PullRequest.stream", "bool"))
        full = name if ":" in name.rpartition("/")[2] else name + ":latest"
        model = self.registry.get(full)
        if model is None:
            missing = "pull model manifest: file does not exist"
            if not stream:
                raise _Reject(500, missing)
            return await self._ndjson(request, [{"status": "pulling manifest"}, {"error": missing}])
        lines: list[dict[str, Any]] = [{"status": "pulling manifest"}]
        for size in (model.size, 487):  # the weights layer and the params layer
            digest = "sha256:" + hashlib.sha256(f"{full}/{size}".encode()).hexdigest()
            status = f"pulling {digest[7:19]}"
            lines.append({"status": status, "digest": digest, "total": size})
            for part in (1, 2, 3, 4):
                lines.append(
                    {"status": status, "digest": digest, "total": size,
                     "completed": size * part // 4}
                )  # fmt: skip
        lines += [{"status": s} for s in ("verifying sha256 digest", "writing manifest")]
        lines += [{"status": "removing any unused layers"}, {"status": "success"}]
        self.models[full] = model
        if not stream:
            self.sent.append([lines[-1]])
            return web.json_response(lines[-1])
        return await self._ndjson(request, lines)

    async def _delete(self, request: web.Request) -> web.Response:
        body = self._body(request)
        name = body.get("model")
        model = self._lookup(name)
        if model is None:
            raise _Reject(404, f"model '{name}' not found")
        del self.models[model.name]
        self.loaded.pop(model.name, None)
        return web.Response(status=200)

    async def _copy(self, request: web.Request) -> web.Response:
        body = self._body(request)
        source, destination = body.get("source"), body.get("destination")
        for key, value in (("source", source), ("destination", destination)):
            if not isinstance(value, str):
                raise _Reject(400, self._unmarshal(value, f"CopyRequest.{key}", "string"))
            if not _valid_name(value):
                raise _Reject(400, f"{key} {_go_quote(value)} is invalid")
        model = self._lookup(source)
        if model is None:
            raise _Reject(404, f"model {_go_quote(source)} not found")
        target = _full_name(str(destination))
        self._check_case(target)
        self.models[target] = dataclasses.replace(model, name=target, modified_at=_now())
        return web.Response(status=200)

    async def _create(self, request: web.Request) -> web.StreamResponse:
        body = self._body(request)
        stream = self._stream_flag(body, "CreateRequest")
        name = body.get("model")
        if not isinstance(name, str) or not _valid_name(name):
            raise _Reject(400, "invalid model name")
        for key in ("from", "quantize", "template", "system"):
            if not isinstance(body.get(key, ""), str):
                raise _Reject(400, self._unmarshal(body[key], f"CreateRequest.{key}", "string"))
        for key in ("files", "adapters", "parameters"):
            if not isinstance(body.get(key) or {}, dict):
                raise _Reject(400, self._unmarshal(body[key], f"CreateRequest.{key}", "map"))
        target = _full_name(name)
        self._check_case(target)
        source = body.get("from") or ""
        if not source:
            if body.get("files"):
                missing = next(iter(body["files"].values()))
                raise _Reject(400, f"blob {missing} not found")  # the fake holds no blobs
            raise _Reject(400, "neither 'from' or 'files' was specified")
        if not _valid_name(source):
            raise _Reject(400, "invalid model name")
        lines, base = self._create_base(source)
        if base is not None:
            for key in ("system", "template", "parameters", "license", "messages"):
                if body.get(key):
                    layer = hashlib.sha256(orjson.dumps(body[key])).hexdigest()
                    lines.append({"status": f"creating new layer sha256:{layer}"})
            lines += [{"status": "writing manifest"}, {"status": "success"}]
            self.models[target] = dataclasses.replace(base, name=target, modified_at=_now())
        return await self._progress(request, stream, lines)

    def _create_base(self, source: str) -> tuple[list[dict[str, Any]], FakeModel | None]:
        """The lines of a create before its own layers, and the model it builds on: one that is
        here, else pulled from the registry first (as Ollama does), else an error line."""
        model = self._lookup(source)
        lines: list[dict[str, Any]] = []
        if model is None:
            model = self.registry.get(_full_name(source))
            lines.append({"status": "pulling manifest"})
            if model is None:
                lines.append({"error": "pull model manifest: file does not exist"})
                return lines, None
            self.models[model.name] = model
        for layer in self._layers(model):
            lines.append({"status": f"using existing layer {layer}"})
        return lines, model

    async def _push(self, request: web.Request) -> web.StreamResponse:
        body = self._body(request)
        stream = self._stream_flag(body, "PushRequest")
        name = body.get("model")
        if not isinstance(name, str) or not name:
            raise _Reject(400, "model is required")
        if not isinstance(body.get("insecure", False), bool):
            raise _Reject(400, self._unmarshal(body["insecure"], "PushRequest.insecure", "bool"))
        full = _full_name(name)
        lines: list[dict[str, Any]] = [{"status": "retrieving manifest"}]
        model = self._lookup(full)
        if model is None:
            path = "/".join(_registry_path(full))
            lines.append({"status": "couldn't retrieve manifest"})
            lines.append({"error": f"open /root/.ollama/models/manifests/{path}: no such file "
                                   "or directory"})  # fmt: skip
            return await self._progress(request, stream, lines)
        if "/" not in full:  # the library namespace is ollama's own
            lines.append({"error": "unauthorized: access denied"})
            return await self._progress(request, stream, lines)
        for layer, size in zip(self._layers(model), (model.size, 487), strict=True):
            status = f"pushing {layer[7:19]}"
            lines.append({"status": status, "digest": layer, "total": size})
            for part in (1, 2):
                lines.append(
                    {"status": status, "digest": layer, "total": size,
                     "completed": size * part // 2}
                )  # fmt: skip
        lines += [{"status": "pushing manifest"}, {"status": "success"}]
        self.pushed[full] = model
        return await self._progress(request, stream, lines)

    @staticmethod
    def _layers(model: FakeModel) -> list[str]:
        """The digests of a model's two layers, the weights and the params (as /api/pull
        reports them)."""
        return [
            "sha256:" + hashlib.sha256(f"{model.name}/{size}".encode()).hexdigest()
            for size in (model.size, 487)
        ]

    def _stream_flag(self, body: dict[str, Any], kind: str) -> bool:
        stream = body.get("stream", True)  # streamed unless told otherwise
        if not isinstance(stream, bool):
            raise _Reject(400, self._unmarshal(stream, f"{kind}.stream", "bool"))
        return stream

    def _check_case(self, name: str) -> None:
        """Ollama refuses a name that differs from an existing one only in case."""
        for existing in self.models:
            if existing != name and existing.lower() == name.lower():
                raise _Reject(400, "a model with that name already exists")

    async def _progress(
        self, request: web.Request, stream: bool, lines: list[dict[str, Any]]
    ) -> web.StreamResponse:
        """Progress as Ollama answers it: NDJSON (an error after the first line is a last line
        ``{"error"}`` under the 200), or with ``stream: false`` the last object alone (an error
        as ``{"error"}`` with status 500)."""
        if stream:
            return await self._ndjson(request, lines)
        last = lines[-1]
        self.sent.append([last])
        if "error" in last:
            return web.json_response({"error": last["error"]}, status=500)
        return web.json_response(last)

    async def _ndjson(
        self, request: web.Request, lines: list[dict[str, Any]]
    ) -> web.StreamResponse:
        self.sent.append(lines)
        response = web.StreamResponse()
        response.content_type = "application/x-ndjson"
        await response.prepare(request)
        for obj in lines:
            line = orjson.dumps(obj) + b"\n"
            await response.write(line[: len(line) // 2])
            await response.write(line[len(line) // 2 :])
        await response.write_eof()
        return response

    # Checks, as Ollama's decoder and handlers make them.

    def _body(self, request: web.Request) -> dict[str, Any]:
        body = request[_BODY]
        if body is None:
            raise _Reject(400, "missing request body")
        if isinstance(body, bytes):
            first = body[:1].decode(errors="replace")
            raise _Reject(400, f"invalid character {first!r} looking for beginning of value")
        if not isinstance(body, dict):
            raise _Reject(400, f"json: cannot unmarshal {_go_type(body)} into Go value")
        return body

    @staticmethod
    def _unmarshal(value: Any, field: str, kind: str) -> str:
        return (
            f"json: cannot unmarshal {_go_type(value)} into Go struct field {field} of type {kind}"
        )

    def _lookup(self, name: Any) -> FakeModel | None:
        if not isinstance(name, str) or not name:
            return None
        # A name without a tag means ":latest" (docs/api.md, "Model names").
        return self.models.get(name if ":" in name.rpartition("/")[2] else name + ":latest")

    def _model(self, body: dict[str, Any], capability: str = "", what: str = "") -> FakeModel:
        name = body.get("model")
        if not isinstance(name, str) or not name:
            raise _Reject(400, "model is required")
        model = self._lookup(name)
        if model is None:
            raise _Reject(404, f'model "{name}" not found, try pulling it first')
        if capability and capability not in model.capabilities:
            raise _Reject(400, f'"{name}" does not support {what}')
        if self._failure is not None:
            raise self._failure
        return model

    def _check_common(self, body: dict[str, Any]) -> tuple[bool, dict[str, Any]]:
        stream = body.get("stream", True)  # Ollama streams unless told otherwise
        if not isinstance(stream, bool):
            raise _Reject(400, self._unmarshal(stream, "ChatRequest.stream", "bool"))
        fmt = body.get("format")
        if fmt not in (None, "", "json") and not isinstance(fmt, dict):
            raise _Reject(400, f'invalid format: {fmt!r}; expected "json" or a JSON schema')
        think = body.get("think")
        if not (
            think is None or isinstance(think, bool) or think in ("low", "medium", "high", "max")
        ):
            raise _Reject(400, f"invalid think value: {think!r}")
        keep_alive = body.get("keep_alive")
        if isinstance(keep_alive, bool) or not isinstance(keep_alive, str | int | float | None):
            raise _Reject(400, self._unmarshal(keep_alive, "keep_alive", "api.Duration"))
        return stream, self._check_options(body)

    def _check_options(self, body: dict[str, Any]) -> dict[str, Any]:
        options = body.get("options") or {}
        if not isinstance(options, dict):
            raise _Reject(400, self._unmarshal(options, "options", "map[string]interface {}"))
        for key, value in options.items():
            kind = OPTION_TYPES.get(key)
            if kind is None:
                raise _Reject(400, f'invalid option provided: "{key}"')
            if not _fits(value, kind):
                raise _Reject(400, f'option "{key}" must be of type {kind}')
        return options

    def _check_messages(self, messages: Any) -> int:
        """Check the messages; return how many images they carry."""
        if not isinstance(messages, list):
            raise _Reject(400, self._unmarshal(messages, "ChatRequest.messages", "[]api.Message"))
        images = 0
        for message in messages:
            if not isinstance(message, dict):
                raise _Reject(400, self._unmarshal(message, "messages", "api.Message"))
            if message.get("role") not in _ROLES:
                raise _Reject(400, f"invalid role {message.get('role')!r}")
            for key in ("content", "thinking", "tool_name", "tool_call_id"):
                if not isinstance(message.get(key, ""), str):
                    field = f"Message.messages.{key}"
                    raise _Reject(400, self._unmarshal(message[key], field, "string"))
            for image in message.get("images") or ():
                self._check_image(image)
                images += 1
            for call in message.get("tool_calls") or ():
                self._check_call(call)
        return images

    @staticmethod
    def _check_image(image: Any) -> None:
        error = _base64_error(image)
        if error:
            raise _Reject(400, error)

    def _check_call(self, call: Any) -> None:
        fn = call.get("function") if isinstance(call, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            raise _Reject(400, "a tool call needs function.name")
        if not isinstance(fn.get("arguments", {}), dict):
            field = "ToolCallFunction.messages.tool_calls.function.arguments"
            kind = "api.ToolCallFunctionArguments"
            raise _Reject(400, self._unmarshal(fn["arguments"], field, kind))

    def _check_tools(self, tools: Any) -> list[dict[str, Any]]:
        if tools is None:
            return []
        if not isinstance(tools, list):
            raise _Reject(400, self._unmarshal(tools, "ChatRequest.tools", "api.Tools"))
        for tool in tools:
            fn = tool.get("function") if isinstance(tool, dict) else None
            if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
                raise _Reject(400, "a tool needs type 'function' and function.name")
        return tools

    # Answers.

    def _ran(self, model: FakeModel) -> None:
        self.loaded[model.name] = time.time()

    def _tool_call(self, name: str) -> dict[str, Any]:
        call_id = f"call_{hashlib.sha256(str(len(self.requests)).encode()).hexdigest()[:8]}"
        function = {"index": 0, "name": name, "arguments": dict(self.tool_arguments)}
        return {"id": call_id, "function": function}

    @staticmethod
    def _head(name: str, fields: dict[str, Any]) -> dict[str, Any]:
        return {"model": name, "created_at": _now(), **fields, "done": fields.get("done", False)}

    def _load(self, body: dict[str, Any], model: FakeModel, empty: dict[str, Any]) -> web.Response:
        """An empty conversation or prompt only loads the model (or unloads it)."""
        unload = body.get("keep_alive") in (0, "0", "0s")
        if unload:
            self.loaded.pop(model.name, None)
        else:
            self._ran(model)
        reason = "unload" if unload else "load"
        answer = {**self._head(body["model"], empty), "done_reason": reason, "done": True}
        self.sent.append([answer])
        return web.json_response(answer)

    async def _answer(
        self,
        request: web.Request,
        stream: bool,
        parts: list[dict[str, Any]],
        final: dict[str, Any],
        whole: dict[str, Any],
    ) -> web.StreamResponse:
        sent: list[dict[str, Any]] = []
        self.sent.append(sent)
        if not stream:
            sent.append(whole)
            return web.json_response(whole)
        response = web.StreamResponse()
        response.content_type = "application/x-ndjson"
        await response.prepare(request)
        objects = [*parts, final]
        if self._midstream is not None:
            after, message = self._midstream
            objects = [*parts[:after], {"error": message}]
        elif self._cut is not None:
            objects = parts[: self._cut]
        for obj in objects:
            line = orjson.dumps(obj) + b"\n"
            await response.write(line[: len(line) // 2])
            await response.write(line[len(line) // 2 :])
            sent.append(obj)
        await response.write_eof()
        return response


@contextlib.contextmanager
def run_fake_ollama(
    models: Sequence[FakeModel] = DEFAULT_MODELS, **settings: Any
) -> Iterator[FakeOllama]:
    """Serve a `FakeOllama` on a free port for the duration of the block."""
    fake = FakeOllama(models, **settings)
    with serve_app(fake.app(), "Ollama") as (url,):
        fake.url = url
        yield fake
