"""A fake GPT4All API server. GPT4All is a desktop (Qt) application that cannot run here, so
turnout's GPT4All dialect is tested against this stand-in, which follows the documented wire format
of its server (shared/reference/runtimes.md §15; nomic-ai/gpt4all gpt4all-chat/src/server.cpp):

- it listens on 127.0.0.1 only; ``GET /v1/models`` (also the health check) lists entries
  ``{id, object: "model", created: 0, owned_by: "humanity", root, parent: null, permissions}``;
- ``POST /v1/chat/completions`` and ``/v1/completions`` validate strictly, as ``server.cpp``'s
  request classes do, answering 400 ``{"error": {"message", "type": "invalid_request_error",
  "param": null, "code": null}}``: an unknown top-level key ("Unrecognized request argument
  supplied: X", so ``max_completion_tokens`` too), a non-zero (or non-integer) penalty, any
  ``seed``, ``stop``, ``stream_options``, ``logit_bias``, ``logprobs``, ``response_format``,
  ``tools``, ``tool_choice``, ``functions``, ``stream: true`` ("'stream' is not supported"), roles
  other than system/user/assistant, non-string content, extra message keys;
- ``max_tokens`` defaults to **16**; ``finish_reason`` is ``length`` when the tokens generated
  equal ``max_tokens``; the reply has ``id: "placeholder"``, ``usage``, and ``references: null``
  on each chat choice; an unknown model name silently means the default (first) model;
- with no chat to serve requests, every route answers 401 with an empty body; there is no
  embeddings endpoint (404, empty body).

Its model is deterministic; a token is a whitespace-separated word; it answers ``You said: <last
message>`` (or ``reply``). `requests` records every request received.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import Any

import orjson
from aiohttp import web

from tests.fakes.openai_runtimes import BODY, Received, serve_app

__all__ = ["FakeGPT4All", "run_fake_gpt4all"]

JSON = dict[str, Any]
_ROLES = ("system", "user", "assistant")


class _Invalid(Exception):
    pass


def _take(
    obj: JSON,
    key: str,
    kind: type | tuple[type, ...] | None = None,
    *,
    required: bool = False,
    low: float | None = None,
    high: float | None = None,
) -> Any:
    """``takeValue`` of server.cpp: remove ``key``; check presence, JSON type and range."""
    value = obj.pop(key, None)
    if required and value is None:
        raise _Invalid(f"you must provide a {key} parameter")
    if value is None:
        return None
    if kind is not None and (
        not isinstance(value, kind) or isinstance(value, bool) != (kind is bool)
    ):
        names = {int: "integer", str: "string", bool: "boolean", list: "array", dict: "object"}
        name = names.get(kind, "number") if isinstance(kind, type) else "number"
        raise _Invalid(f"'{value}' is not of type '{name}' - '{key}'")
    if isinstance(value, int | float) and not isinstance(value, bool):
        if low is not None and value < low:
            raise _Invalid(f"{value} is less than the minimum of {low:g} - '{key}'")
        if high is not None and value > high:
            raise _Invalid(f"{value} is greater than the maximum of {high:g} - '{key}'")
    return value


def _zero(value: Any) -> bool:
    # Qt's CBOR view: 0 is an integer, 0.0 a double; only an integer 0 passes.
    return value is None or (isinstance(value, int) and not isinstance(value, bool) and value == 0)


class FakeGPT4All:
    def __init__(self, models: tuple[str, ...] = ("Llama 3.2 3B Instruct", "Reasoner v1")) -> None:
        self.models = models
        self.reply: str | None = None
        self.available = True  # False: no chat can serve API requests (401, empty body)
        self.url = ""
        self.requests: list[Received] = []

    def bodies(self, path: str) -> list[Any]:
        return [r.body for r in self.requests if r.path == path]

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._record])
        app.router.add_get("/v1/models", self._models)
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_post("/v1/completions", self._completion)
        app.router.add_route("*", "/{tail:.*}", self._not_found)
        return app

    @web.middleware
    async def _record(self, request: web.Request, handler: Any) -> web.StreamResponse:
        raw = await request.read()
        try:
            body: Any = orjson.loads(raw) if raw else None
        except orjson.JSONDecodeError:
            body = raw
        self.requests.append(Received(request.method, request.path, body, dict(request.headers)))
        if not self.available:
            return web.Response(status=401)
        request[BODY] = body
        try:
            response: web.StreamResponse = await handler(request)
        except _Invalid as exc:
            error = {
                "message": str(exc),
                "type": "invalid_request_error",
                "param": None,
                "code": None,
            }
            return web.json_response({"error": error}, status=400)
        return response

    async def _not_found(self, request: web.Request) -> web.Response:
        return web.Response(status=404)

    @staticmethod
    def _entry(name: str) -> JSON:
        permission = {
            "id": "placeholder", "object": "model_permission", "created": 0,
            "allow_create_engine": False, "allow_sampling": False, "allow_logprobs": False,
            "allow_search_indices": False, "allow_view": True, "allow_fine_tuning": False,
            "organization": "*", "group": None, "is_blocking": False,
        }  # fmt: skip
        return {
            "id": name, "object": "model", "created": 0, "owned_by": "humanity",
            "root": name, "parent": None, "permissions": [permission],
        }  # fmt: skip

    async def _models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [self._entry(m) for m in self.models]})

    def _body(self, request: web.Request) -> JSON:
        body = request[BODY]
        if not isinstance(body, dict):
            raise _Invalid("error parsing request JSON: not an object")
        return dict(body)

    def _base(self, req: JSON) -> JSON:
        """BaseCompletionRequest::parseImpl."""
        out: JSON = {"model": _take(req, "model", str, required=True)}
        if not _zero(_take(req, "frequency_penalty", (int, float), low=-2, high=2)):
            raise _Invalid("'frequency_penalty' is not supported")
        out["max_tokens"] = _take(req, "max_tokens", int, low=1) or 16
        out["n"] = _take(req, "n", int, low=1) or 1
        if not _zero(_take(req, "presence_penalty", (int, float))):
            raise _Invalid("'presence_penalty' is not supported")
        for key in ("seed", "stop", "stream_options"):
            if _take(req, key) is not None:
                raise _Invalid(f"'{key}' is not supported")
        if _take(req, "stream", bool):
            raise _Invalid("'stream' is not supported")
        _take(req, "temperature", (int, float), low=0, high=2)
        _take(req, "top_p", (int, float), low=0, high=1)
        _take(req, "min_p", (int, float), low=0, high=1)
        _take(req, "user", str)
        return out

    @staticmethod
    def _unrecognised(req: JSON) -> None:
        if req:
            raise _Invalid(f"Unrecognized request argument supplied: {next(iter(req))}")

    def _messages(self, req: JSON) -> list[JSON]:
        messages = _take(req, "messages", required=True)
        if not isinstance(messages, list) or not messages:
            raise _Invalid(
                "Invalid type for 'messages': expected a non-empty array of objects, "
                f"but got '{messages}' instead."
            )
        for i, message in enumerate(messages):
            if not isinstance(message, dict):
                raise _Invalid(f"Invalid type for 'messages[{i}]': expected an object")
            message = dict(message)
            role = _take(message, "role", str, required=True)
            if role not in _ROLES:
                raise _Invalid(
                    f"Invalid 'messages[{i}].role': expected one of 'system', 'assistant', or "
                    f"'user', but got '{role}' instead."
                )
            _take(message, "content", str, required=True)
            if message:
                raise _Invalid(
                    f"Invalid 'messages[{i}]': unrecognized key: '{next(iter(message))}'"
                )
        for key in ("logit_bias", "top_logprobs", "response_format", "tools", "tool_choice"):
            if _take(req, key) is not None:
                raise _Invalid(f"'{key}' is not supported")
        if _take(req, "logprobs", bool):
            raise _Invalid("'logprobs' is not supported")
        _take(req, "service_tier", str)
        _take(req, "parallel_tool_calls", bool)
        for key in ("function_call", "functions"):
            if _take(req, key) is not None:
                raise _Invalid(f"'{key}' is not supported")
        return messages

    def _run(self, text: str, limit: int) -> tuple[str, int]:
        words = (self.reply if self.reply is not None else text).split(" ")[:limit]
        return " ".join(words), len(words)

    def _model(self, name: str) -> str:
        return name if name in self.models else self.models[0]  # the default model otherwise

    async def _chat(self, request: web.Request) -> web.Response:
        req = self._body(request)
        base = self._base(req)
        messages = self._messages(req)
        self._unrecognised(req)
        text, tokens = self._run(f"You said: {messages[-1]['content']}", base["max_tokens"])
        prompt_tokens = sum(len(m["content"].split()) for m in messages)
        choices = [
            {
                "index": i,
                "message": {"role": "assistant", "content": text},
                "finish_reason": "length" if tokens * base["n"] == base["max_tokens"] else "stop",
                "logprobs": None,
                "references": None,
            }
            for i in range(base["n"])
        ]
        return self._answer("chat.completion", base, choices, prompt_tokens, tokens * base["n"])

    async def _completion(self, request: web.Request) -> web.Response:
        req = self._body(request)
        base = self._base(req)
        prompt = _take(req, "prompt", str, required=True)
        best_of = _take(req, "best_of", int) or 1
        if base["n"] > best_of or best_of > base["n"]:
            raise _Invalid("'best_of' is not supported")
        echo = bool(_take(req, "echo", bool))
        for key in ("logit_bias", "logprobs"):
            if _take(req, key) is not None:
                raise _Invalid(f"'{key}' is not supported")
        if _take(req, "suffix", str):
            raise _Invalid("'suffix' is not supported")
        self._unrecognised(req)
        text, tokens = self._run(f"You said: {prompt}", base["max_tokens"])
        choices = [
            {
                "text": (prompt + text) if echo else text,
                "index": i,
                "logprobs": None,
                "finish_reason": "length" if tokens * base["n"] == base["max_tokens"] else "stop",
            }
            for i in range(base["n"])
        ]
        return self._answer(
            "text_completion", base, choices, len(prompt.split()), tokens * base["n"]
        )

    def _answer(
        self, obj: str, base: JSON, choices: list[JSON], prompt: int, done: int
    ) -> web.Response:
        return web.json_response(
            {
                "id": "placeholder",
                "object": obj,
                "created": int(time.time()),
                "model": self._model(base["model"]),
                "choices": choices,
                "usage": {
                    "prompt_tokens": prompt,
                    "completion_tokens": done,
                    "total_tokens": prompt + done,
                },
            }
        )


@contextlib.contextmanager
def run_fake_gpt4all(**settings: Any) -> Iterator[FakeGPT4All]:
    """Serve a `FakeGPT4All` on a free port of 127.0.0.1 for the duration of the block."""
    fake = FakeGPT4All(**settings)
    with serve_app(fake.app(), "fake-gpt4all") as url:
        fake.url = url
        yield fake
