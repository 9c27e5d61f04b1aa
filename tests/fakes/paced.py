"""A fake OpenAI-compatible backend whose pace the test sets, for shutdown, timeouts, slow clients
and breaker tests.

This is a fake: what is tested is turnout under time (a stream of exactly N chunks at a set
interval, a backend that stalls, one that never ends, one that fails for some prompts), which no
real runtime produces on demand. It follows OpenAI's documented wire format: ``GET /v1/models``,
``POST /v1/chat/completions`` answering a ``chat.completion`` or an SSE stream of
``chat.completion.chunk`` events ending with ``data: [DONE]``, errors as
``{"error": {"message", "type", "param", "code"}}``.

The behaviour is chosen per request by the last user message, so one backend serves every case:

- ``chunks=N every=S``: N chunks, S seconds apart (defaults 5 and 0), each ``tok `` (padded to
  ``pad=B`` bytes of content when asked); a non-streamed request waits N*S then answers.
- ``stall``: accept the request and send nothing, ever (headers included).
- ``stall-after-first``: stream one chunk, then nothing.
- ``endless every=S``: stream chunks forever.
- ``fail``: HTTP 500 (the backend's own failure).

`Paced.requests` counts the requests; `Paced.active` the ones being answered now.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import Iterator
from typing import Any

import orjson
from aiohttp import web

from tests.support.aioserver import serve_app

__all__ = ["Paced", "run_paced"]

_ARG = re.compile(r"(\w+)=([\d.]+)")


class Paced:
    def __init__(self) -> None:
        self.url = ""
        self.requests = 0
        self.active = 0
        self.most_active = 0
        self.app = web.Application()
        self.app.router.add_get("/v1/models", self._models)
        self.app.router.add_post("/v1/chat/completions", self._chat)

    async def _models(self, request: web.Request) -> web.Response:
        model = {"id": "paced", "object": "model", "created": 0, "owned_by": "test"}
        return web.json_response({"object": "list", "data": [model]})

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.requests += 1
        self.active += 1
        self.most_active = max(self.most_active, self.active)
        try:
            return await self._answer(request, body)
        finally:
            self.active -= 1

    async def _answer(self, request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        text = str(body["messages"][-1]["content"])
        args = {k: float(v) for k, v in _ARG.findall(text)}
        n, every = int(args.get("chunks", 5)), args.get("every", 0.0)
        piece = "tok " + "x" * max(0, int(args.get("pad", 0)) - 4)
        if text.startswith("fail"):
            error = {"message": "the model crashed", "type": "server_error", "param": None,
                     "code": None}  # fmt: skip
            return web.json_response({"error": error}, status=500)
        if text.startswith("stall") and not text.startswith("stall-after-first"):
            await asyncio.sleep(3600)
        if not body.get("stream"):
            await asyncio.sleep(n * every)
            return web.json_response(_reply(piece * n))
        endless = text.startswith("endless")
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        i = 0
        while endless or i < n:
            if i and every:
                await asyncio.sleep(every)
            await response.write(b"data: " + orjson.dumps(_chunk(piece, None)) + b"\n\n")
            i += 1
            if text.startswith("stall-after-first"):
                await asyncio.sleep(3600)
        await response.write(b"data: " + orjson.dumps(_chunk("", "stop")) + b"\n\n")
        await response.write(b"data: [DONE]\n\n")
        return response


def _chunk(text: str, finish: str | None) -> dict[str, Any]:
    delta = {"content": text} if text else {}
    return {
        "id": "chatcmpl-paced",
        "object": "chat.completion.chunk",
        "created": 0,
        "model": "paced",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}],
    }


def _reply(text: str) -> dict[str, Any]:
    return {
        "id": "chatcmpl-paced",
        "object": "chat.completion",
        "created": 0,
        "model": "paced",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "finish_reason": "stop",
                "logprobs": None,
            }
        ],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    }


@contextlib.contextmanager
def run_paced() -> Iterator[Paced]:
    paced = Paced()
    with serve_app(paced.app, "paced") as urls:
        paced.url = urls[0]
        yield paced
