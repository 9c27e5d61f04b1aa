"""What passthrough saves: turnout's CPU per Anthropic Messages and per OpenAI Responses
request, translated against relayed, to the same upstream.

    python bench/passthrough_cpu.py [--n 2000] [--front messages|responses|both]

(From a git worktree, with ``PYTHONPATH=.``: a script under bench/ imports the installed turnout
otherwise.)

The upstream is a small aiohttp server in a process of its own (its CPU is not counted) that
answers ``/v1/chat/completions`` (OpenAI's shapes), ``/v1/messages`` (Anthropic's, as
llama-server writes them) and ``/v1/responses`` (OpenAI's Responses events, as vLLM serves them)
with the same answer: 8 tokens, streamed or not. turnout (the whole ASGI app, in this process, no
client sockets) serves it as two providers per front, of the preset that declares its dialect
(``llamacpp`` for Messages, ``vllm`` for Responses): one with ``passthrough: false`` (the request
is translated to a chat completion and the reply back) and one as preset (relayed as it came,
usage read on the way). Figures are this process's CPU time per request in microseconds (time
waiting for the upstream or for a shared CPU is not counted), the fastest of seven repeats, the
two providers alternating.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import socket
import time
from typing import Any

import orjson
from aiohttp import web

from turnout.config import Config
from turnout.gateway import Gateway
from turnout.server.app import create_app

TOKENS = ["Hello", " there", ",", " friend", ".", " How", " are", " you"]
ASK = [{"role": "user", "content": "Say hello in one short sentence."}]


def _sse(event: str | None, data: Any) -> bytes:
    head = f"event: {event}\n".encode() if event else b""
    return head + b"data: " + orjson.dumps(data) + b"\n\n"


def _chat(stream: bool) -> bytes:
    usage = {"prompt_tokens": 12, "completion_tokens": 8, "total_tokens": 20}
    if not stream:
        return orjson.dumps({
            "id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "m",
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": "".join(TOKENS)}}],
            "usage": usage,
        })  # fmt: skip
    head = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "m"}
    out = [_sse(None, {**head, "choices": [{"index": 0, "delta": {"role": "assistant",
                                            "content": ""}, "finish_reason": None}]})]  # fmt: skip
    for t in TOKENS:
        choice = {"index": 0, "delta": {"content": t}, "finish_reason": None}
        out.append(_sse(None, {**head, "choices": [choice]}))
    out.append(
        _sse(None, {**head, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
    )
    out.append(_sse(None, {**head, "choices": [], "usage": usage}))
    return b"".join(out) + b"data: [DONE]\n\n"


def _messages(stream: bool) -> bytes:
    usage = {"cache_read_input_tokens": 0, "input_tokens": 12, "output_tokens": 8}
    message = {"id": "chatcmpl-1", "type": "message", "role": "assistant", "model": "m",
               "stop_reason": "end_turn", "stop_sequence": None}  # fmt: skip
    if not stream:
        text = [{"type": "text", "text": "".join(TOKENS)}]
        return orjson.dumps({**message, "content": text, "usage": usage})
    start = {**message, "content": [], "stop_reason": None, "usage": {**usage, "output_tokens": 0}}
    out = [
        _sse("message_start", {"type": "message_start", "message": start}),
        _sse("content_block_start", {"type": "content_block_start", "index": 0,
                                     "content_block": {"type": "text", "text": ""}}),
    ]  # fmt: skip
    for t in TOKENS:
        delta = {"type": "text_delta", "text": t}
        out.append(_sse("content_block_delta", {"type": "content_block_delta", "index": 0,
                                                "delta": delta}))  # fmt: skip
    out += [
        _sse("content_block_stop", {"type": "content_block_stop", "index": 0}),
        _sse("message_delta", {"type": "message_delta", "usage": {"output_tokens": 8},
                               "delta": {"stop_reason": "end_turn", "stop_sequence": None}}),
        _sse("message_stop", {"type": "message_stop"}),
    ]  # fmt: skip
    return b"".join(out)


def _responses(stream: bool) -> bytes:
    usage = {"input_tokens": 12, "input_tokens_details": {"cached_tokens": 0},
             "output_tokens": 8, "output_tokens_details": {"reasoning_tokens": 0},
             "total_tokens": 20}  # fmt: skip
    text = "".join(TOKENS)
    part = {"type": "output_text", "text": text, "annotations": [], "logprobs": []}
    item = {"id": "msg_1", "type": "message", "status": "completed", "role": "assistant",
            "content": [part]}  # fmt: skip
    head = {"id": "resp_1", "object": "response", "created_at": 1, "model": "m", "error": None,
            "incomplete_details": None, "instructions": None, "metadata": {},
            "parallel_tool_calls": True, "temperature": 1.0, "tool_choice": "auto", "tools": [],
            "top_p": 1.0}  # fmt: skip
    done = {**head, "status": "completed", "output": [item], "usage": usage}
    if not stream:
        return orjson.dumps(done)
    shell = {**head, "status": "in_progress", "output": []}
    at = {"item_id": "msg_1", "output_index": 0, "content_index": 0}
    events: list[tuple[str, Any]] = [
        ("response.created", {"response": shell}),
        ("response.in_progress", {"response": shell}),
        ("response.output_item.added", {"output_index": 0,
                                        "item": {**item, "status": "in_progress", "content": []}}),
        ("response.content_part.added", {**at, "part": {**part, "text": ""}}),
        *[("response.output_text.delta", {**at, "delta": t, "logprobs": []}) for t in TOKENS],
        ("response.output_text.done", {**at, "text": text, "logprobs": []}),
        ("response.content_part.done", {**at, "part": part}),
        ("response.output_item.done", {"output_index": 0, "item": item}),
        ("response.completed", {"response": done}),
    ]  # fmt: skip
    return b"".join(
        _sse(name, {"type": name, "sequence_number": i, **obj})
        for i, (name, obj) in enumerate(events)
    )


_FRONTS = {  # front -> its path, the preset declaring its dialect, its request
    "messages": ("/v1/messages", "llamacpp", "Anthropic Messages"),
    "responses": ("/v1/responses", "vllm", "OpenAI Responses"),
}


def _body(front: str, model: str, stream: bool) -> dict[str, Any]:
    if front == "messages":
        return {"model": model, "max_tokens": 16, "messages": ASK, "stream": stream}
    return {"model": model, "max_output_tokens": 16, "input": ASK, "stream": stream}


def _upstream(port: int) -> None:
    makers = (("chat", _chat), ("messages", _messages), ("responses", _responses))
    replies = {(p, s): f(s) for p, f in makers for s in (False, True)}

    async def answer(request: web.Request, path: str) -> web.Response:
        stream = bool((await request.json()).get("stream"))
        kind = "text/event-stream" if stream else "application/json"
        return web.Response(body=replies[(path, stream)], content_type=kind)

    app = web.Application()
    app.router.add_get("/v1/models", lambda r: web.json_response({"data": [{"id": "m"}]}))
    app.router.add_post("/v1/chat/completions", lambda r: answer(r, "chat"))
    app.router.add_post("/v1/messages", lambda r: answer(r, "messages"))
    app.router.add_post("/v1/responses", lambda r: answer(r, "responses"))
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


def _scope(body: bytes, path: str) -> dict[str, Any]:
    headers = [(b"host", b"127.0.0.1"), (b"content-type", b"application/json"),
               (b"content-length", str(len(body)).encode())]  # fmt: skip
    return {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
        "scheme": "http", "path": path, "raw_path": path.encode(),
        "query_string": b"", "root_path": "", "headers": headers,
        "client": ("127.0.0.1", 5000), "server": ("127.0.0.1", 8400),
    }  # fmt: skip


async def _time(app: Any, raw: bytes, n: int, path: str) -> tuple[float, set[bytes]]:
    """CPU seconds for ``n`` requests, and the X-Turnout-Passthrough values seen."""
    message = {"type": "http.request", "body": raw, "more_body": False}
    scope = _scope(raw, path)
    seen: set[bytes] = set()

    async def send(out: Any) -> None:
        if out["type"] == "http.response.start":
            assert out["status"] == 200, out
            seen.add(dict(out["headers"]).get(b"x-turnout-passthrough", b"0"))

    start = time.process_time()
    for _ in range(n):
        got = [False]

        async def receive(got: list[bool] = got) -> Any:
            if got[0]:
                await asyncio.sleep(3600)  # after the body: the client never leaves
            got[0] = True
            return message

        await app(dict(scope), receive, send)
    return time.process_time() - start, seen


async def main(n: int, port: int, fronts: list[str]) -> None:
    url = f"http://127.0.0.1:{port}"
    providers: dict[str, Any] = {}
    for front in fronts:
        preset = _FRONTS[front][1]
        providers[f"{front}-relay"] = {"type": preset, "endpoint": url, "models": ["m"]}
        providers[f"{front}-xlate"] = {"type": preset, "endpoint": url, "models": ["m"],
                                       "passthrough": False}  # fmt: skip
    config = Config.model_validate({
        "providers": providers,
        "health": {"enabled": False}, "discovery": {"enabled": False}, "embedded": False,
    })  # fmt: skip
    gateway = Gateway(config)
    app = create_app(gateway)
    await gateway.start()
    gateway.telemetry.capacity = 10**9  # every record kept; folded between repeats, untimed
    print("| request | translated µs | passthrough µs | saved |")
    print("|---|---:|---:|---:|")
    for front in fronts:
        path, _, title = _FRONTS[front]
        for stream in (False, True):
            best = {"xlate": float("inf"), "relay": float("inf")}
            for _ in range(7):
                for name in best:
                    body = _body(front, f"{front}-{name}/m", stream)
                    seconds, seen = await _time(app, orjson.dumps(body), n, path)
                    assert seen == {b"1" if name == "relay" else b"0"}, (front, name, seen)
                    best[name] = min(best[name], seconds / n * 1e6)
                    gateway.telemetry.flush()
            xlate, relay = best["xlate"], best["relay"]
            what = "streamed, 8 tokens" if stream else "non-streamed"
            print(f"| {title}, {what} | {xlate:.0f} | {relay:.0f} | {xlate - relay:.0f} µs "
                  f"({(xlate - relay) / xlate:.0%}) |", flush=True)  # fmt: skip
    await gateway.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait(port: int) -> None:
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("the upstream did not start")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--front", choices=["messages", "responses", "both"], default="both")
    port = _free_port()
    upstream = multiprocessing.Process(target=_upstream, args=(port,), daemon=True)
    upstream.start()
    try:
        _wait(port)
        args = parser.parse_args()
        fronts = list(_FRONTS) if args.front == "both" else [args.front]
        asyncio.run(main(args.n, port, fronts))
    finally:
        upstream.terminate()
