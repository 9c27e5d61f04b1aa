"""A fake OpenAI-compatible runtime that takes a set time per request, for tests/access: counting
and timing tests (limits, the ledger, fair queueing), where the answer's content does not matter
but its wire format does (OpenAI's chat completion and chunk objects, SSE framing, ``[DONE]``,
usage in the last chunk when ``stream_options.include_usage`` asks)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator
from typing import Any

import orjson
from aiohttp import web

from tests.support.aioserver import serve_app

__all__ = ["Paced", "run_paced"]


class Paced:
    def __init__(self, delay: float = 0.0, chunk_delay: float = 0.0, chunks: int = 5) -> None:
        self.delay, self.chunk_delay, self.chunks = delay, chunk_delay, chunks
        self.url = ""
        self.served = 0
        self.active = 0
        self.peak = 0

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/v1/models", self._models)
        app.router.add_post("/v1/chat/completions", self._chat)
        return app

    async def _models(self, request: web.Request) -> web.Response:
        data = [{"id": "paced", "object": "model", "created": 0, "owned_by": "fake"}]
        return web.json_response({"object": "list", "data": data})

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body: dict[str, Any] = await request.json()
        self.active += 1
        self.peak = max(self.peak, self.active)
        try:
            if self.delay:
                await asyncio.sleep(self.delay)
            self.served += 1
            if body.get("stream"):
                return await self._stream(request, body)
            usage = {
                "prompt_tokens": 7,
                "completion_tokens": self.chunks,
                "total_tokens": 7 + self.chunks,
            }
            return web.json_response(
                {
                    "id": "chatcmpl-paced",
                    "object": "chat.completion",
                    "created": int(time.time()),
                    "model": "paced",
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": "ok " * self.chunks},
                            "finish_reason": "stop",
                        }
                    ],
                    "usage": usage,
                }
            )
        finally:
            self.active -= 1

    async def _stream(self, request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)

        def chunk(delta: dict[str, Any], finish: str | None) -> bytes:
            obj = {
                "id": "chatcmpl-paced",
                "object": "chat.completion.chunk",
                "created": 0,
                "model": "paced",
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            }
            return b"data: " + orjson.dumps(obj) + b"\n\n"

        for i in range(self.chunks):
            if i and self.chunk_delay:
                await asyncio.sleep(self.chunk_delay)
            await resp.write(chunk({"content": "ok "}, None))
        await resp.write(chunk({}, "stop"))
        if (body.get("stream_options") or {}).get("include_usage"):
            usage = {
                "prompt_tokens": 7,
                "completion_tokens": self.chunks,
                "total_tokens": 7 + self.chunks,
            }
            obj = {"id": "chatcmpl-paced", "object": "chat.completion.chunk", "created": 0,
                   "model": "paced", "choices": [], "usage": usage}  # fmt: skip
            await resp.write(b"data: " + orjson.dumps(obj) + b"\n\n")
        await resp.write(b"data: [DONE]\n\n")
        return resp


@contextlib.contextmanager
def run_paced(delay: float = 0.0, chunk_delay: float = 0.0, chunks: int = 5) -> Iterator[Paced]:
    fake = Paced(delay, chunk_delay, chunks)
    with serve_app(fake.app(), "fake-paced") as urls:
        fake.url = urls[0]
        yield fake
