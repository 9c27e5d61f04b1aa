"""CPU cost of one request through the whole pipeline, in process (no HTTP, no sockets): the
ASGI app (trace, stages, route, front, gateway, router, telemetry) over a provider whose call
answers at once, so what is timed is turnout's own work per request.

    python bench/pipeline_cpu.py [--n 20000]

Rows: a valid non-streamed chat request (200), a streamed one of 8 chunks (200), an invalid one
(400, refused by validation), one too large (413, refused by the guard). Figures are this
process's CPU time per request in microseconds, the fastest of seven repeats.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import orjson

from turnout.config import Config
from turnout.gateway import Gateway
from turnout.server.app import create_app
from turnout.wire.types import Call, Chunk

REPLY = {
    "id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "m",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello."},
                 "finish_reason": "stop", "logprobs": None}],
    "usage": {"prompt_tokens": 12, "completion_tokens": 5, "total_tokens": 17},
}  # fmt: skip
CHUNK = {
    "id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "m",
    "choices": [{"index": 0, "delta": {"content": "tok"}, "logprobs": None, "finish_reason": None}],
}  # fmt: skip
ASK = [{"role": "user", "content": "Say hello."}]
CASES = {
    "valid": {"model": "m", "messages": ASK},
    "stream": {"model": "m", "messages": ASK, "stream": True},
    "invalid": {"model": "m", "messages": "not a list"},
    "too large": {"model": "m", "messages": ASK, "pad": "x" * 2048},
}


async def _complete(call: Call) -> Any:
    return REPLY


async def _stream(call: Call) -> AsyncIterator[Chunk]:
    for _ in range(8):
        yield Chunk(CHUNK)


def _scope(body: bytes) -> dict[str, Any]:
    headers = [
        (b"host", b"127.0.0.1"),
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
    ]
    return {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
        "scheme": "http", "path": "/v1/chat/completions", "raw_path": b"/v1/chat/completions",
        "query_string": b"", "root_path": "", "headers": headers,
        "client": ("127.0.0.1", 5000), "server": ("127.0.0.1", 8400),
    }  # fmt: skip


async def main(n: int) -> None:
    config = Config.model_validate(
        {
            "providers": {
                "fast": {"type": "openai", "endpoint": "http://127.0.0.1:9", "models": ["m"]}
            },
            "health": {"enabled": False},
            "discovery": {"enabled": False},
            "server": {"max_body_bytes": 1024},
        }
    )
    gateway = Gateway(config)
    provider: Any = gateway.providers["fast"]
    provider.complete, provider.stream = _complete, _stream
    app = create_app(gateway)
    await gateway.start()
    gateway.telemetry.capacity = 10**9  # every record kept; folded between repeats, untimed
    statuses: list[int] = []

    async def send(message: Any) -> None:
        if message["type"] == "http.response.start":
            statuses.append(message["status"])

    for name, body in CASES.items():
        raw = orjson.dumps(body)
        scope = _scope(raw)
        message = {"type": "http.request", "body": raw, "more_body": False}

        async def receive() -> Any:
            await asyncio.sleep(3600)  # after the body: the client never leaves
            return {}

        best = float("inf")
        for _ in range(7):
            statuses.clear()
            start = time.process_time()
            for _ in range(n):
                got = [False]

                async def rx(got: list[bool] = got, message: Any = message) -> Any:
                    if got[0]:
                        return await receive()
                    got[0] = True
                    return message

                await app(dict(scope), rx, send)
            best = min(best, time.process_time() - start)
            gateway.telemetry.flush()
        print(f"{name:10s} {best / n * 1e6:8.1f} us/request  status {sorted(set(statuses))}")
    stats = gateway.stats()
    print("requests:", stats["requests"])
    await gateway.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=20000)
    asyncio.run(main(parser.parse_args().n))
