"""A streaming chat-completions upstream for bench/run.py: N chunks as OpenAI SSE, paced.

Usage: python bench/stream_upstream.py --port P [--chunks 100] [--delay-ms 5] [--max-tokens-chunks]

`POST /v1/chat/completions` answers every request with a stream in OpenAI's wire format
(`data: <chat.completion.chunk>` events, a usage chunk when `stream_options.include_usage` asks
for it, then `data: [DONE]`), sending chunk k+1 `--delay-ms` after chunk k. Each chunk's content
is `tok<k>@<ns>;`, where ns is `time.monotonic_ns()` just before the chunk was written: the
monotonic clock is shared by every process on the machine, so a client can tell how long each
chunk spent in whatever sits between it and this server. A request without `"stream": true`
gets the whole reply at once (one JSON body with the same content). `GET /v1/models` lists the
one model, so gateways that ask what a backend serves get an answer. With
`--max-tokens-chunks`, a request's `max_tokens` (when given) is its number of chunks instead
(the soak's streams to be cut by the client are long, the others short).
"""

from __future__ import annotations

import argparse
import asyncio
import time

import orjson
import uvloop
from aiohttp import web

HOST = "127.0.0.1"
MODEL = "gpt-4o-mini"
CREATED = 1700000000


def chunk(k: int, *, role: bool = False, finish: str | None = None) -> bytes:
    """One SSE event carrying chunk k's content and its send time."""
    delta: dict[str, str] = {"role": "assistant"} if role else {}
    if finish is None:
        delta["content"] = f"tok{k}@{time.monotonic_ns()};"
    event = {
        "id": "chatcmpl-stream0001",
        "object": "chat.completion.chunk",
        "created": CREATED,
        "model": MODEL,
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
    }
    return b"data: " + orjson.dumps(event) + b"\n\n"


def usage_chunk(n: int) -> bytes:
    event = {
        "id": "chatcmpl-stream0001",
        "object": "chat.completion.chunk",
        "created": CREATED,
        "model": MODEL,
        "choices": [],
        "usage": {"prompt_tokens": 14, "completion_tokens": n, "total_tokens": 14 + n},
    }
    return b"data: " + orjson.dumps(event) + b"\n\n"


def make_app(chunks: int, delay_s: float, from_max_tokens: bool = False) -> web.Application:
    default = chunks

    async def chat(request: web.Request) -> web.StreamResponse:
        body = orjson.loads(await request.read())
        asked = body.get("max_tokens")
        chunks = asked if from_max_tokens and isinstance(asked, int) and asked > 0 else default
        if not body.get("stream"):
            content = "".join(f"tok{k}@{time.monotonic_ns()};" for k in range(chunks))
            return web.json_response(
                {
                    "id": "chatcmpl-stream0001",
                    "object": "chat.completion",
                    "created": CREATED,
                    "model": MODEL,
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": content},
                            "logprobs": None,
                            "finish_reason": "stop",
                        }
                    ],
                    "usage": {"prompt_tokens": 14, "completion_tokens": chunks},
                },
                dumps=lambda o: orjson.dumps(o).decode(),
            )
        resp = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await resp.prepare(request)
        for k in range(chunks):
            if k:
                await asyncio.sleep(delay_s)
            await resp.write(chunk(k, role=k == 0))
        await resp.write(chunk(chunks, finish="stop"))
        if (body.get("stream_options") or {}).get("include_usage"):
            await resp.write(usage_chunk(chunks))
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp

    async def models(request: web.Request) -> web.Response:
        return web.json_response(
            {"object": "list", "data": [{"id": MODEL, "object": "model", "owned_by": "bench"}]}
        )

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_get("/v1/models", models)
    return app


async def serve(port: int, chunks: int, delay_s: float, from_max_tokens: bool) -> None:
    runner = web.AppRunner(make_app(chunks, delay_s, from_max_tokens), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, HOST, port, backlog=4096).start()
    await asyncio.Event().wait()


def main() -> None:
    parser = argparse.ArgumentParser(description="Paced OpenAI SSE upstream for bench/run.py.")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--chunks", type=int, default=100)
    parser.add_argument("--delay-ms", type=float, default=5.0)
    parser.add_argument(
        "--max-tokens-chunks", action="store_true", help="a request's max_tokens sets its chunks"
    )
    args = parser.parse_args()
    uvloop.run(serve(args.port, args.chunks, args.delay_ms / 1000, args.max_tokens_chunks))


if __name__ == "__main__":
    main()
