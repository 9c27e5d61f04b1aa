"""A configurable fake of the OpenAI-compatible runtimes that cannot run here, one `Profile` each.

This is a fake. vLLM, LocalAI, LM Studio, Jan, TabbyAPI, MLX, mistral.rs, FastChat,
text-generation-webui and KoboldCpp's OpenAI emulation need GPUs, desktops or binaries this
machine does not have, so turnout's OpenAI dialect is tested against this stand-in, which follows
each runtime's documented wire format as shared/reference/runtimes.md records it (section cited
per profile in `PROFILES`): its ``/v1/models`` entry shape, health endpoint, SSE framing (LF or
CRLF, comment pings, named events, the ``[DONE]`` line with or without its blank line), where
usage goes in a stream (a ``choices: []`` chunk, none, TabbyAPI's chunk that repeats the finish
choice, mistral.rs's usage on the finish chunk, KoboldCpp's hard-coded figures), which token-limit
fields it reads, and its error bodies and statuses (vLLM's 400 on ``stream_options`` without
``stream``, MLX's 411 without ``Content-Length``, Jan's plain text and mandatory key, FastChat's
always-400 ``{"object": "error"}`` and mid-stream ``{"text", "error_code"}``, mistral.rs's
``{"message"}``, MLX's ``{"error": "..."}``, Kobold's ``{"detail": {...}}``).

Its model is deterministic; a token is a whitespace-separated word. It answers ``You said: <last
user message>`` (or ``reply``), cut to the token limit (``finish_reason: "length"``) and before
the first ``stop`` string. Offered tools after a user message, it calls the first one with
``{"query": <message>}``; after a tool result it answers ``The tool said: <result>``. Tests can
make it fail (`FakeRuntime.fail`, in the runtime's own error shape) or fail mid-stream
(`fail_midstream`); `requests` records every request with its headers. The vLLM profile also
serves OpenAI's Responses API at ``/v1/responses`` (tests/fakes/openai_responses.py, which says
what wire format it follows).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

from tests.fakes.ollama import embedding_of
from tests.fakes.openai_responses import responses_handler

__all__ = [
    "BODY",
    "PROFILES",
    "FakeRuntime",
    "Profile",
    "Received",
    "run_fake_runtime",
    "serve_app",
]

JSON = dict[str, Any]
Error = Callable[[int, str], tuple[int, bytes, str]]  # (status, message) -> status, body, type
BODY = web.RequestKey("body", Any)  # the parsed request body, kept by the recording middleware


def _openai_error(status: int, message: str, *, int_code: bool = False) -> tuple[int, bytes, str]:
    kind = {400: "invalid_request_error", 404: "not_found_error", 401: "authentication_error"}
    error = {
        "message": message,
        "type": kind.get(status, "server_error"),
        "param": None,
        "code": status if int_code else None,
    }
    return status, orjson.dumps({"error": error}), "application/json"


def _json(obj: Any, status: int) -> tuple[int, bytes, str]:
    return status, orjson.dumps(obj), "application/json"


def _fastchat_error(status: int, message: str) -> tuple[int, bytes, str]:
    # FastChat: every error is HTTP 400; the kind lives in its own code (runtimes.md §13).
    code = {404: 40301, 401: 40101, 429: 42901, 400: 40001}.get(status, 50001)
    return _json({"object": "error", "message": message, "code": code}, 400)


ERRORS: dict[str, Error] = {
    "openai": _openai_error,
    "int_code": lambda s, m: _openai_error(s, m, int_code=True),  # llama.cpp, vLLM
    "tabby": lambda s, m: _json({"error": {"message": m, "trace": None}}, s),
    "plain": lambda s, m: (s, m.encode(), "text/plain; charset=utf-8"),  # Jan
    "string": lambda s, m: _json({"error": m}, s),  # MLX
    "message": lambda s, m: _json({"message": m}, s),  # mistral.rs
    "fastchat": _fastchat_error,
    "detail": lambda s, m: _json({"detail": {"msg": m, "type": "service_unavailable"}}, s),
}


@dataclass(frozen=True)
class Profile:
    """What distinguishes one runtime's OpenAI-compatible server on the wire."""

    name: str
    section: str  # runtimes.md section the profile follows
    owned_by: str | None = "organization"  # None: entries carry no owned_by (MLX)
    model_fields: JSON = field(default_factory=dict)  # extra keys of each /v1/models entry
    health: dict[str, JSON | None] = field(default_factory=dict)  # path -> 200 body (None: empty)
    sep: bytes = b"\n"  # SSE line ending; CRLF for sse-starlette's default (TabbyAPI)
    ping: bytes | None = None  # a comment line sent before the first chunk
    usage: str = "chunk"  # chunk | none | tabby | final | fixed
    usage_object: str = "chat.completion.chunk"
    done: bytes = b"data: [DONE]\n\n"
    null_string_finish: bool = False  # KoboldCpp: non-final finish_reason is the string "null"
    repeat_role: bool = False  # KoboldCpp: every chunk repeats delta.role
    named_events: bool = False  # mistral.rs: agentic events interleaved
    limit_fields: tuple[str, ...] = ("max_completion_tokens", "max_tokens")  # first wins
    default_limit: int | None = None
    error: str = "openai"
    midstream: str = "error"  # error: data {"error": {...}}; fastchat: {"text", "error_code"}
    stream_options_needs_stream: bool = False  # vLLM: 400 otherwise
    needs_content_length: bool = False  # MLX: 411 otherwise
    api_key: str | None = None  # Jan: mandatory key
    root_html: str | None = None  # Jan: GET / serves its Swagger UI, without a key
    check_host: bool = False  # Jan: Host must be a trusted host
    unknown_model: str = "ignore"  # ignore | 404 (the server routes or validates by model)
    embeddings: bool = True
    tools: bool = True
    tools_need_choice: bool = False  # KoboldCpp: tools only with tool_choice present
    tool_finish: str = "tool_calls"
    fixed_usage: tuple[int, int] | None = None  # KoboldCpp: always 100/100
    tokencount: bool = False  # KoboldCpp: POST /api/extra/tokencount {"prompt"} -> {"value"}
    responses: bool = False  # vLLM: OpenAI's Responses API too (tests/fakes/openai_responses.py)


PROFILES: dict[str, Profile] = {
    p.name: p
    for p in (
        Profile(
            "vllm",
            "§6",
            owned_by="vllm",
            model_fields={"root": "m", "parent": None, "max_model_len": 4096, "permission": []},
            health={"/health": None, "/version": {"version": "0.11.0"}},
            error="int_code",
            stream_options_needs_stream=True,
            unknown_model="404",
            responses=True,
        ),
        Profile(
            "localai",
            "§7",
            owned_by="",
            health={"/readyz": None, "/healthz": None},
            error="openai",
        ),
        Profile(
            "lmstudio",
            "§8",
            health={"/api/v0/models": {"object": "list", "data": []}},
        ),
        Profile(
            "jan",
            "§9",
            owned_by="user",
            model_fields={"created": 1},
            error="plain",
            api_key="jan-secret",
            root_html="<!doctype html><html><head><title>Swagger UI</title></head></html>",
            check_host=True,
            unknown_model="404",
        ),
        Profile(
            "tabbyapi",
            "§10",
            owned_by="tabbyAPI",
            health={"/health": {"status": "healthy", "issues": []}},
            sep=b"\r\n",
            ping=b": ping - 2025-01-01 00:00:00.000000\r\n\r\n",
            usage="tabby",
            error="tabby",
        ),
        Profile(
            "mlx",
            "§11",
            owned_by=None,
            health={"/health": {"status": "ok"}},
            usage_object="chat.completion",
            default_limit=512,
            error="string",
            needs_content_length=True,
            embeddings=False,
        ),
        Profile(
            "mistralrs",
            "§12",
            owned_by="local",
            model_fields={"status": "loaded", "tools_available": True},
            health={"/health": None},
            ping=b": keep-alive\n\n",
            usage="final",
            named_events=True,
            error="message",
        ),
        Profile(
            "fastchat",
            "§13",
            owned_by="fastchat",
            usage="none",
            limit_fields=("max_tokens",),
            error="fastchat",
            midstream="fastchat",
            unknown_model="404",
            tools=False,
        ),
        Profile(
            "textgen",
            "§14",
            owned_by="user",
            health={"/v1/internal/health": {"status": "ok"}},
            ping=b": ping - 2025-01-01 00:00:00.000000\n\n",
        ),
        Profile(
            "koboldcpp-openai",
            "§16.2",
            owned_by="koboldcpp",
            health={"/api/extra/version": {"result": "KoboldCpp", "version": "1.76"}},
            usage="none",
            done=b"data: [DONE]",
            null_string_finish=True,
            repeat_role=True,
            limit_fields=("max_tokens",),
            default_limit=400,
            error="detail",
            embeddings=False,
            tools_need_choice=True,
            tool_finish="stop",
            fixed_usage=(100, 100),
            tokencount=True,
        ),
    )
}


@dataclass(frozen=True)
class Received:
    method: str
    path: str
    body: Any  # parsed JSON, raw bytes if not JSON, None if empty
    headers: dict[str, str]


def _words(text: str) -> list[str]:
    return [w if i == 0 else " " + w for i, w in enumerate(text.split(" "))] if text else []


def _text(content: Any) -> str:
    if isinstance(content, list):
        return " ".join(p.get("text", "") for p in content if isinstance(p, dict))
    return content if isinstance(content, str) else ""


class FakeRuntime:
    """State and handlers of one fake runtime; `run_fake_runtime` serves it."""

    def __init__(self, profile: Profile, models: tuple[str, ...] = ("fake-model",)) -> None:
        self.profile = profile
        self.models = models
        self.reply: str | None = None
        self.url = ""
        self.requests: list[Received] = []
        self._failure: tuple[int, str] | None = None
        self._midstream: tuple[int, str] | None = None

    def fail(self, status: int, message: str) -> None:
        """Answer inference requests with the runtime's own error body until `reset`."""
        self._failure = (status, message)

    def fail_midstream(self, after: int = 1, message: str = "the model crashed") -> None:
        self._midstream = (after, message)

    def reset(self) -> None:
        self._failure = self._midstream = None
        self.requests.clear()

    def bodies(self, path: str) -> list[Any]:
        return [r.body for r in self.requests if r.path == path]

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._guard])
        app.router.add_get("/v1/models", self._models)
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_post("/v1/completions", self._completion)
        app.router.add_post("/v1/embeddings", self._embeddings)
        for path in self.profile.health:
            app.router.add_get(path, self._health)
        if self.profile.root_html is not None:
            app.router.add_get("/", self._root)
        if self.profile.tokencount:
            app.router.add_post("/api/extra/tokencount", self._tokencount)
        if self.profile.responses:
            app.router.add_post("/v1/responses", responses_handler(self))
        return app

    async def _tokencount(self, request: web.Request) -> web.Response:
        words = str(request[BODY].get("prompt", "")).split()
        return web.json_response({"value": len(words), "ids": list(range(len(words)))})

    async def _root(self, request: web.Request) -> web.Response:
        return web.Response(text=self.profile.root_html, content_type="text/html")

    def _error(self, status: int, message: str) -> web.Response:
        status, body, kind = ERRORS[self.profile.error](status, message)
        return web.Response(status=status, body=body, headers={"Content-Type": kind})

    @web.middleware
    async def _guard(self, request: web.Request, handler: Any) -> web.StreamResponse:
        p = self.profile
        chunked = request.headers.get("Content-Length") is None  # e.g. Transfer-Encoding: chunked
        if p.needs_content_length and request.method == "POST" and chunked:
            return self._error(411, "Content-Length header is required")
        raw = await request.read()
        body: Any = None
        if raw:
            try:
                body = orjson.loads(raw)
            except orjson.JSONDecodeError:
                body = raw
        self.requests.append(Received(request.method, request.path, body, dict(request.headers)))
        if p.check_host and request.headers.get("Host", "").split(":")[0] not in (
            "127.0.0.1",
            "localhost",
        ):
            return self._error(403, "Invalid host header")
        if p.api_key is not None and request.path.startswith("/v1/"):
            auth = request.headers.get("Authorization")
            if auth is None:
                return self._error(401, "Missing authorization header")
            if auth != f"Bearer {p.api_key}":
                return self._error(401, "Invalid or missing authorization token")
        if request.method == "POST" and not isinstance(body, dict):
            return self._error(400, "Invalid JSON body")
        request[BODY] = body
        response: web.StreamResponse = await handler(request)
        return response

    async def _health(self, request: web.Request) -> web.Response:
        body = self.profile.health[request.path]
        return web.Response() if body is None else web.json_response(body)

    async def _models(self, request: web.Request) -> web.Response:
        data = []
        for name in self.models:
            entry: JSON = {"id": name, "object": "model", "created": 1700000000}
            if self.profile.owned_by is not None:
                entry["owned_by"] = self.profile.owned_by
            data.append({**entry, **self.profile.model_fields})
        return web.json_response({"object": "list", "data": data})

    def _refusal(self, body: JSON) -> web.Response | None:
        p = self.profile
        if self._failure is not None:
            return self._error(*self._failure)
        if p.stream_options_needs_stream and body.get("stream_options") and not body.get("stream"):
            return self._error(400, "Stream options can only be defined when `stream=True`.")
        if p.unknown_model == "404" and body.get("model") not in self.models:
            name = body.get("model")
            if p.name == "fastchat":
                return self._error(
                    404, f"Only {'&&'.join(self.models)} allowed now, your model {name}"
                )
            if p.name == "jan":
                return self._error(404, f"No running session found for model '{name}'")
            return self._error(404, f"The model `{name}` does not exist.")
        return None

    def _limit(self, body: JSON) -> int | None:
        for key in self.profile.limit_fields:
            if isinstance(body.get(key), int):
                return int(body[key])
        return self.profile.default_limit

    def _generate(self, text: str, body: JSON) -> tuple[list[str], str]:
        for stop in [body["stop"]] if isinstance(body.get("stop"), str) else body.get("stop") or ():
            if stop and stop in text:
                text = text[: text.index(stop)]
        pieces = _words(self.reply if self.reply is not None else text)
        limit = self._limit(body)
        if limit is not None and 0 < limit < len(pieces):
            return pieces[:limit], "length"
        return pieces, "stop"

    def _usage(self, prompt: str, pieces: list[str]) -> JSON:
        if self.profile.fixed_usage is not None:
            prompt_tokens, completion_tokens = self.profile.fixed_usage
        else:
            prompt_tokens, completion_tokens = len(prompt.split()), len(pieces)
        return {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        }

    def _tool_call(self, body: JSON, said: str) -> JSON | None:
        p = self.profile
        tools = body.get("tools")
        if not (p.tools and tools and body.get("tool_choice") != "none"):
            return None
        if p.tools_need_choice and body.get("tool_choice") is None:
            return None
        name = tools[0]["function"]["name"]
        arguments = orjson.dumps({"query": said}).decode()
        return {
            "id": "call_1",
            "type": "function",
            "function": {"name": name, "arguments": arguments},
        }

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body: JSON = request[BODY]
        if (refused := self._refusal(body)) is not None:
            return refused
        messages = body.get("messages") or []
        last = messages[-1] if messages else {}
        said = _text(last.get("content"))
        prompt = " ".join(_text(m.get("content")) for m in messages)
        call = self._tool_call(body, said) if last.get("role") == "user" else None
        if call is not None:
            pieces: list[str] = []
            finish = self.profile.tool_finish
        else:
            lead = "The tool said: " if last.get("role") == "tool" else "You said: "
            pieces, finish = self._generate(lead + said, body)
        message: JSON = {"role": "assistant", "content": "".join(pieces)}
        if call is not None:
            message = {"role": "assistant", "content": None, "tool_calls": [call]}
        if not body.get("stream"):
            choice = {"index": 0, "message": message, "finish_reason": finish, "logprobs": None}
            return web.json_response(self._whole("chat.completion", body, choice, prompt, pieces))
        deltas: list[JSON] = [{"role": "assistant", "content": p} for p in pieces[:1]]
        deltas += [{"content": p} for p in pieces[1:]]
        if call is not None:
            deltas = [{"role": "assistant", "content": None, "tool_calls": [{"index": 0, **call}]}]
        return await self._stream(
            request, body, "chat.completion.chunk", deltas, finish, prompt, pieces
        )

    async def _completion(self, request: web.Request) -> web.StreamResponse:
        body: JSON = request[BODY]
        if (refused := self._refusal(body)) is not None:
            return refused
        prompt = body.get("prompt") if isinstance(body.get("prompt"), str) else ""
        pieces, finish = self._generate(f"You said: {prompt}", body)
        if not body.get("stream"):
            choice = {
                "index": 0,
                "text": "".join(pieces),
                "finish_reason": finish,
                "logprobs": None,
            }
            return web.json_response(self._whole("text_completion", body, choice, prompt, pieces))
        deltas = [{"text": p} for p in pieces]
        return await self._stream(request, body, "text_completion", deltas, finish, prompt, pieces)

    async def _embeddings(self, request: web.Request) -> web.StreamResponse:
        body: JSON = request[BODY]
        if not self.profile.embeddings:
            return self._error(404, "Not Found")
        if (refused := self._refusal(body)) is not None:
            return refused
        texts = body["input"] if isinstance(body.get("input"), list) else [body.get("input", "")]
        data = [
            {"object": "embedding", "index": i, "embedding": embedding_of(str(t), 8)}
            for i, t in enumerate(texts)
        ]
        tokens = sum(len(str(t).split()) for t in texts)
        usage = {"prompt_tokens": tokens, "total_tokens": tokens}
        return web.json_response(
            {"object": "list", "data": data, "model": body.get("model"), "usage": usage}
        )

    def _whole(self, obj: str, body: JSON, choice: JSON, prompt: str, pieces: list[str]) -> JSON:
        head = {
            "id": "cmpl-fake",
            "object": obj,
            "created": int(time.time()),
            "model": body.get("model"),
        }
        return {**head, "choices": [choice], "usage": self._usage(prompt, pieces)}

    async def _stream(
        self,
        request: web.Request,
        body: JSON,
        obj: str,
        deltas: list[JSON],
        finish: str,
        prompt: str,
        pieces: list[str],
    ) -> web.StreamResponse:
        p = self.profile
        chat = obj == "chat.completion.chunk"
        head = {"id": "koboldcpp" if p.repeat_role else "chatcmpl-fake", "object": obj,
                "created": int(time.time()), "model": body.get("model")}  # fmt: skip
        usage = self._usage(prompt, pieces)
        wants_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        not_yet = "null" if p.null_string_finish else None
        events: list[bytes] = [p.ping] if p.ping else []
        for i, delta in enumerate(deltas):
            if p.repeat_role and chat:
                delta = {"role": "assistant", **delta}
            choice = {"index": 0, **({"delta": delta} if chat else delta), "finish_reason": not_yet}
            if not p.repeat_role:  # KoboldCpp leaves logprobs out
                choice["logprobs"] = None
            events.append(self._event({**head, "choices": [choice]}, usage="final"))
            if p.named_events and i == 0:
                events.append(
                    b"event: agentic_tool_call_progress" + p.sep + b'data: {"step": 1}' + p.sep * 2
                )
        end = {"index": 0, **({"delta": {}} if chat else {"text": ""}), "finish_reason": finish}
        if not p.repeat_role:
            end["logprobs"] = None
        final = {**head, "choices": [end]}
        if p.usage == "final":
            final["usage"] = usage
        events.append(self._event(final))
        if wants_usage and p.usage == "chunk":
            events.append(
                self._event({**head, "object": p.usage_object, "choices": [], "usage": usage})
            )
        if wants_usage and p.usage == "tabby":
            events.append(self._event({**head, "choices": [end], "usage": usage}))
        if self._midstream is not None:
            after, message = self._midstream
            bad = {"text": message, "error_code": 50001} if p.midstream == "fastchat" else {
                "error": {"message": message, "type": "server_error"}}  # fmt: skip
            events = [
                *events[: after + (1 if p.ping else 0)],
                self._event(bad),
                b"data: [DONE]\n\n",
            ]
        else:
            events.append(p.done)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for event in events:
            await response.write(event)
        await response.write_eof()
        return response

    def _event(self, obj: JSON, usage: str = "") -> bytes:
        if self.profile.usage == "final" and usage == "final":
            obj = {**obj, "usage": None}  # mistral.rs: null until the final chunk
        return b"data: " + orjson.dumps(obj) + self.profile.sep * 2


@contextlib.contextmanager
def serve_app(app: web.Application, name: str = "fake", port: int = 0) -> Iterator[str]:
    """Serve an aiohttp app on 127.0.0.1 in a thread of its own, on ``port`` (0: a free one);
    yield its URL."""
    loop = asyncio.new_event_loop()
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    started = threading.Event()
    failure: list[BaseException] = []

    def run() -> None:
        asyncio.set_event_loop(loop)
        runner = web.AppRunner(app, shutdown_timeout=1.0, access_log=None)
        try:
            loop.run_until_complete(runner.setup())
            loop.run_until_complete(web.SockSite(runner, sock).start())
        except BaseException as exc:  # reported by the caller below
            failure.append(exc)
            return
        finally:
            started.set()
        loop.run_forever()
        loop.run_until_complete(runner.cleanup())
        loop.close()

    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()
    if not started.wait(10) or failure:
        raise RuntimeError(f"the {name} server did not start: {failure!r}")
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)


@contextlib.contextmanager
def run_fake_runtime(
    name: str, models: tuple[str, ...] = ("fake-model",), port: int = 0
) -> Iterator[FakeRuntime]:
    """Serve the fake of runtime ``name`` (a key of `PROFILES`) for the duration of the block."""
    fake = FakeRuntime(PROFILES[name], models)
    with serve_app(fake.app(), f"fake-{name}", port) as url:
        fake.url = url
        yield fake
