"""CPU cost of each front's translation, in process (no HTTP): what the Anthropic, Ollama and
Responses fronts add per request and per stream chunk over the OpenAI front's own work.

    python bench/fronts_cpu.py [--n 20000]

Per request: parse the body, translate it in, validate it (the gateway's chat validator), then
translate a small reply out and serialise it. The OpenAI front's row is parse, validate,
serialise: the same work without translation. Per chunk: the OpenAI front writes ``data: `` +
the chunk's JSON; each other front feeds the chunk to its encoder. Figures are this process's CPU
time (time waiting for a shared CPU is not counted), the fastest of nine timeit repeats, in
microseconds.
"""

from __future__ import annotations

import argparse
import time
import timeit
from collections.abc import Callable
from typing import Any

import orjson

from turnout.wire import anthropic, anthropic_stream, ollama, responses
from turnout.wire.validate import validate_chat

ASK = "Say hello in one short sentence."
REPLY = {
    "id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "m",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello there, friend."},
                 "finish_reason": "stop", "logprobs": None}],
    "usage": {"prompt_tokens": 12, "completion_tokens": 5, "total_tokens": 17},
}  # fmt: skip
CHUNK = {
    "id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "m",
    "choices": [{"index": 0, "delta": {"content": "tok"}, "logprobs": None, "finish_reason": None}],
}  # fmt: skip
BODIES = {
    "openai": {"model": "m", "messages": [{"role": "user", "content": ASK}], "max_tokens": 16},
    "anthropic": {"model": "m", "messages": [{"role": "user", "content": ASK}], "max_tokens": 16},
    "ollama": {"model": "m", "messages": [{"role": "user", "content": ASK}], "stream": False,
               "options": {"num_predict": 16}},
    "responses": {"model": "m", "input": ASK, "max_output_tokens": 16},
}  # fmt: skip


def _openai(raw: bytes) -> bytes:
    validate_chat(orjson.loads(raw))
    return orjson.dumps(REPLY)


def _anthropic(raw: bytes) -> bytes:
    translated = anthropic.to_chat(orjson.loads(raw))
    body = validate_chat(translated.body)
    return orjson.dumps(anthropic.from_chat(REPLY, body["model"], translated.stops))


def _ollama(raw: bytes) -> bytes:
    body = validate_chat(ollama.chat_to_internal(orjson.loads(raw)))
    timing = ollama.Timing(time.perf_counter_ns())
    return orjson.dumps(ollama.chat_reply(REPLY, body["model"], timing))


def _responses(raw: bytes) -> bytes:
    translated = responses.to_chat(orjson.loads(raw))
    validate_chat(translated.body)
    return orjson.dumps(responses.from_chat(REPLY, translated.shell))


REQUEST: dict[str, Callable[[bytes], bytes]] = {
    "openai": _openai,
    "anthropic": _anthropic,
    "ollama": _ollama,
    "responses": _responses,
}


def _chunk_costs() -> dict[str, Callable[[], Any]]:
    a = anthropic_stream.MessageStream("m")
    o = ollama.ChatStream("m", ollama.Timing(time.perf_counter_ns()))
    r = responses.ResponseStream(responses.to_chat(BODIES["responses"]).shell)
    for encoder in (a, o, r):
        encoder.feed(CHUNK)  # past the stream's start
    return {
        "openai": lambda: b"data: " + orjson.dumps(CHUNK) + b"\n\n",
        "anthropic": lambda: a.feed(CHUNK),
        "ollama": lambda: o.feed(CHUNK),
        "responses": lambda: r.feed(CHUNK),
    }


def _us(fn: Callable[[], Any], n: int) -> float:
    # CPU time of this process (waiting for a shared CPU is not counted), least disturbed run
    return min(timeit.repeat(fn, number=n, repeat=9, timer=time.process_time)) / n * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=20000)
    n = parser.parse_args().n
    chunks = _chunk_costs()
    base_req = base_chunk = 0.0
    print("| front | µs per request | vs OpenAI | µs per stream chunk | vs OpenAI |")
    print("|---|---:|---:|---:|---:|")
    for name, fn in REQUEST.items():
        raw = orjson.dumps(BODIES[name])
        req = _us(lambda fn=fn, raw=raw: fn(raw), n)  # type: ignore[misc]
        chunk = _us(chunks[name], n)
        base_req, base_chunk = (req, chunk) if name == "openai" else (base_req, base_chunk)
        ratios = f"{req / base_req:.2f}× | {chunk:.2f} | {chunk / base_chunk:.2f}×"
        print(f"| {name} | {req:.2f} | {ratios} |")


if __name__ == "__main__":
    main()
