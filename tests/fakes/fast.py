"""A fake OpenAI-compatible backend that answers everything at once, for the fuzzing and load
tests (what is tested is turnout under many or odd requests, not a model).

This is a fake: no runtime here answers thousands of requests a second. It follows OpenAI's
documented wire format: ``GET /v1/models``; ``POST /v1/chat/completions`` and
``POST /v1/completions`` answering a ``chat.completion`` / ``text_completion`` or, when
``stream`` is true, an SSE stream of three chunks ending with ``data: [DONE]``;
``POST /v1/embeddings`` answering a ``list`` of ``embedding`` objects. It never fails on a body
it can parse, whatever its fields, so that any 5xx a client sees is turnout's own.
`Fast.requests` counts the requests.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import orjson
from aiohttp import web

from tests.support.aioserver import serve_app

__all__ = ["MODEL", "Fast", "run_fast"]

MODEL = "fast"
_USAGE = {"prompt_tokens": 3, "completion_tokens": 3, "total_tokens": 6}


class Fast:
    def __init__(self) -> None:
        self.url = ""
        self.requests = 0
        self.app = web.Application(client_max_size=64 * 1024 * 1024)
        self.app.router.add_get("/v1/models", self._models)
        self.app.router.add_post("/v1/chat/completions", self._chat)
        self.app.router.add_post("/v1/completions", self._completion)
        self.app.router.add_post("/v1/embeddings", self._embeddings)

    async def _models(self, request: web.Request) -> web.Response:
        model = {"id": MODEL, "object": "model", "created": 0, "owned_by": "test"}
        return web.json_response({"object": "list", "data": [model]})

    async def _body(self, request: web.Request) -> dict[str, Any]:
        self.requests += 1
        try:
            body = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            body = {}
        return body if isinstance(body, dict) else {}

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body = await self._body(request)
        if body.get("stream") is True:
            return await self._stream(request, "chat.completion.chunk", chat=True)
        message = {"role": "assistant", "content": "tok tok tok"}
        choice = {"index": 0, "message": message, "finish_reason": "stop", "logprobs": None}
        return _json(_envelope("chat.completion", choice, usage=True))

    async def _completion(self, request: web.Request) -> web.StreamResponse:
        body = await self._body(request)
        if body.get("stream") is True:
            return await self._stream(request, "text_completion", chat=False)
        choice = {"index": 0, "text": "tok tok tok", "finish_reason": "stop", "logprobs": None}
        return _json(_envelope("text_completion", choice, usage=True))

    async def _embeddings(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        given = body.get("input")
        n = len(given) if isinstance(given, list) and given else 1
        data = [{"object": "embedding", "index": i, "embedding": [0.5, -0.25]} for i in range(n)]
        return _json({"object": "list", "model": MODEL, "data": data, "usage": _USAGE})

    async def _stream(self, request: web.Request, kind: str, chat: bool) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for i in range(4):
            last = i == 3
            if chat:
                delta = {} if last else {"content": "tok "}
                choice: dict[str, Any] = {"index": 0, "delta": delta}
            else:
                choice = {"index": 0, "text": "" if last else "tok "}
            choice["finish_reason"] = "stop" if last else None
            choice["logprobs"] = None
            await response.write(b"data: " + orjson.dumps(_envelope(kind, choice)) + b"\n\n")
        await response.write(b"data: [DONE]\n\n")
        return response


def _envelope(kind: str, choice: dict[str, Any], usage: bool = False) -> dict[str, Any]:
    out = {"id": "fast-1", "object": kind, "created": 0, "model": MODEL, "choices": [choice]}
    if usage:
        out["usage"] = _USAGE
    return out


def _json(body: Any) -> web.Response:
    return web.Response(body=orjson.dumps(body), content_type="application/json")


@contextlib.contextmanager
def run_fast() -> Iterator[Fast]:
    fast = Fast()
    with serve_app(fast.app, "fast") as urls:
        fast.url = urls[0]
        yield fast
