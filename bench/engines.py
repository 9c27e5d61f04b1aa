"""bench/run.py's model scenarios on the Gemma 3 270M GGUF: turnout's embedded engine against raw
llama-cpp-python, and prefix-affinity against round-robin routing over two llama.cpp replicas.

Run as a script (`python bench/engines.py raw --threads 2`) it is the raw side: llama-cpp-python
loaded in its own process, generating one streamed chat completion per line read on stdin and
printing its timing as JSON, so that it and turnout take turns on the same idle cores.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import aiohttp
import targets as T
from http_clients import cpu_snapshot, other_share

Log = Callable[[str], None]
PROMPT = "Write a short story about a lighthouse keeper who finds a message in a bottle."
GEMMA = "gemma-3-270m"
THREADS = 2


def gen_request(max_tokens: int) -> dict[str, Any]:
    """The same generation for both sides: greedy, so both produce the same tokens."""
    return {
        "messages": [{"role": "user", "content": PROMPT}],
        "max_tokens": max_tokens,
        "temperature": 0.0,
        "seed": 7,
    }


def raw_worker(threads: int) -> None:
    """Serve generations from stdin: one JSON request per line, one JSON timing per line."""
    from llama_cpp import Llama

    from turnout.providers.embedded import default_model_path

    llm = Llama(
        model_path=str(default_model_path()), chat_format="gemma", n_ctx=2048, n_threads=threads,
        n_threads_batch=threads, n_batch=512, verbose=False,
    )  # fmt: skip
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        req = json.loads(line)
        start = time.perf_counter()
        first = last = start
        pieces = []
        for chunk in llm.create_chat_completion(**req, stream=True):
            text = chunk["choices"][0]["delta"].get("content") if chunk["choices"] else None
            if text:
                last = time.perf_counter()
                first = first if pieces else last
                pieces.append(text)
        end = time.perf_counter()
        text = "".join(pieces)
        tokens = len(llm.tokenize(text.encode(), add_bos=False, special=True)) if text else 0
        print(json.dumps(_timing(tokens, start, first, last, end, text)), flush=True)


def _timing(
    tokens: int, start: float, first: float, last: float, end: float, text: str
) -> dict[str, Any]:
    return {
        "tokens": tokens,
        "tok_s": tokens / (end - start),
        "ttft_ms": (first - start) * 1000,
        "decode_tok_s": (tokens - 1) / (last - first) if tokens > 1 and last > first else 0.0,
        "text": text,
    }


async def gateway_generation(
    url: str, body: dict[str, Any], headers: dict[str, str] | None = None
) -> dict[str, Any]:
    """One streamed chat completion through an OpenAI-compatible server, timed like raw_worker."""
    body = {**body, "stream": True, "stream_options": {"include_usage": True}}
    pieces: list[str] = []
    tokens = 0
    async with aiohttp.ClientSession() as http:
        start = time.perf_counter()
        first = last = start
        async with http.post(f"{url}/v1/chat/completions", json=body, headers=headers) as resp:
            if resp.status != 200:
                raise RuntimeError(f"HTTP {resp.status}: {await resp.text()}")
            async for line in resp.content:
                if not line.startswith(b"data: {"):
                    continue
                event = json.loads(line[6:])
                for choice in event.get("choices") or ():
                    if text := (choice.get("delta") or {}).get("content"):
                        last = time.perf_counter()
                        first = first if pieces else last
                        pieces.append(text)
                if event.get("usage"):
                    tokens = event["usage"]["completion_tokens"]
        end = time.perf_counter()
    return _timing(tokens, start, first, last, end, "".join(pieces))


@contextmanager
def raw_engine(tmp: Path) -> Iterator[subprocess.Popen[str]]:
    cmd = T.bounded([sys.executable, __file__, "raw", "--threads", str(THREADS)])
    log = (tmp / "raw-engine.log").open("w")
    proc = subprocess.Popen(
        cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True,
        start_new_session=True, env=T.repo_env(),
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        if "ready" not in proc.stdout.readline():
            raise RuntimeError(
                f"raw llama-cpp-python did not start:\n{T.tail(tmp / 'raw-engine.log')}"
            )
        yield proc
    finally:
        proc.kill()
        proc.wait()
        log.close()


def _raw(proc: subprocess.Popen[str], body: dict[str, Any]) -> dict[str, Any]:
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write(json.dumps(body) + "\n")
    proc.stdin.flush()
    result: dict[str, Any] = json.loads(proc.stdout.readline())
    return result


def embedded_config() -> str:
    return (
        "providers:\n"
        "  local:\n"
        "    type: embedded\n"
        "    models:\n"
        f"      - {{name: {GEMMA}, chat_format: gemma, n_ctx: 2048, n_threads: {THREADS}}}\n"
    )


def engine(tmp: Path, runs: int, requests: int, max_tokens: int, log: Log) -> dict[str, Any]:
    """Tokens per second: raw llama-cpp-python and turnout's embedded engine, taking turns."""
    body = gen_request(max_tokens)
    out: dict[str, Any] = {
        "max_tokens": max_tokens, "threads": THREADS, "raw": [], "turnout": [], "pairs": [],
        "other_cpu": [],
    }  # fmt: skip
    with raw_engine(tmp) as raw, T.turnout(tmp, None, embedded_config(), GEMMA) as gw:
        ours = {raw.pid, gw.pgid}
        _raw(raw, body)  # warm-up both
        asyncio.run(gateway_generation(gw.url, {**body, "model": GEMMA}))
        for run in range(runs):
            rows: dict[str, list[dict[str, Any]]] = {"raw": [], "turnout": []}
            before = cpu_snapshot(ours)
            for _ in range(requests):  # alternate, so that each pair meets the same machine
                rows["raw"].append(_raw(raw, body))
                rows["turnout"].append(
                    asyncio.run(gateway_generation(gw.url, {**body, "model": GEMMA}))
                )
            for side, samples in rows.items():
                out[side].append(
                    {
                        "tok_s": statistics.median(s["tok_s"] for s in samples),
                        "decode_tok_s": statistics.median(s["decode_tok_s"] for s in samples),
                        "ttft_ms": statistics.median(s["ttft_ms"] for s in samples),
                        "tokens": samples[0]["tokens"],
                    }
                )
            out["pairs"] += [
                t["tok_s"] / r["tok_s"] for r, t in zip(rows["raw"], rows["turnout"], strict=True)
            ]
            out["other_cpu"].append(other_share(before, cpu_snapshot(ours)))
            r, t = out["raw"][-1], out["turnout"][-1]
            log(
                f"run {run + 1}/{runs} raw {r['tok_s']:.1f} tok/s ({r['tokens']} tokens)  "
                f"turnout embedded {t['tok_s']:.1f} tok/s ({t['tokens']} tokens)  "
                f"others {out['other_cpu'][-1]:.0%}"
            )
        out["same_text"] = rows["raw"][0]["text"] == rows["turnout"][0]["text"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description="Raw llama-cpp-python worker for bench/run.py.")
    parser.add_argument("mode", choices=["raw"])
    parser.add_argument("--threads", type=int, default=THREADS)
    args = parser.parse_args()
    raw_worker(args.threads)


if __name__ == "__main__":
    main()
