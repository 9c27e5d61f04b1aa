"""The transformers engine on a GPU against plain ``generate``, in one run (issue 17's figures).

    python bench/gpu_engine.py MODEL_FOLDER [--tokens 128] [--streams 64] [--out bench.json]

1. Plain eager ``model.generate`` (dynamic cache), greedy, ``--tokens`` new tokens: one prompt,
   then ``--streams`` prompts as one left-padded batch. Tokens per second over the whole call.
2. turnout: a real gateway (``python -m turnout serve``, a separate process) serving the folder
   on the transformers engine (``device: cuda``, ``max_batch: --streams``), driven over HTTP with
   streaming completions (end-of-sequence banned through ``logit_bias``, as ``generate`` is held
   with ``min_new_tokens``): one stream (the median of three), then ``--streams`` concurrent
   streams, aggregate tokens per second from the first request sent to the last stream's end.

Prints a table last and writes every figure as JSON (``--out``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

PROMPTS = [f"Write a short story about robot number {i}, who" for i in range(1024)]


def eos_ids(folder: Path) -> list[int]:
    ids: set[int] = set()
    for name in ("generation_config.json", "config.json"):
        with contextlib.suppress(OSError, ValueError):
            value = json.loads((folder / name).read_text()).get("eos_token_id")
            ids.update(
                v for v in (value if isinstance(value, list) else [value]) if isinstance(v, int)
            )
    return sorted(ids)


def bench_generate(folder: Path, tokens: int, streams: int, device: str) -> dict[str, Any]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    tok.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.bfloat16).to(device).eval()
    out: dict[str, Any] = {}

    def sync() -> None:
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    def run(prompts: list[str], new: int) -> float:
        batch = tok(prompts, return_tensors="pt", padding=True).to(device)
        sync()
        started = time.perf_counter()
        with torch.inference_mode():
            ids = model.generate(
                **batch, max_new_tokens=new, min_new_tokens=new, do_sample=False,
                pad_token_id=tok.pad_token_id,
            )  # fmt: skip
        sync()
        elapsed = time.perf_counter() - started
        assert ids.shape[1] - batch["input_ids"].shape[1] == new
        return elapsed

    run(PROMPTS[:1], 8)  # warm-up: kernels, allocator
    one = run(PROMPTS[:1], tokens)
    out["generate_1_tokens_per_s"] = tokens / one
    many = run(PROMPTS[:streams], tokens)
    out[f"generate_{streams}_tokens_per_s"] = streams * tokens / many
    if device.startswith("cuda"):
        out["generate_memory_gb"] = torch.cuda.max_memory_allocated() / 1e9
    model = None  # freed before the gateway loads its own copy
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    return out


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def stream_once(
    session: Any, url: str, prompt: str, tokens: int, bias: dict[str, float]
) -> int:
    body = {
        "model": "gpu-model", "prompt": prompt, "max_tokens": tokens, "temperature": 0,
        "stream": True, "stream_options": {"include_usage": True}, "logit_bias": bias,
    }  # fmt: skip
    usage = 0
    async with session.post(url + "/v1/completions", json=body) as resp:
        assert resp.status == 200, await resp.text()
        async for raw in resp.content:
            line = raw.decode().strip()
            if line.startswith("data: {"):
                data = json.loads(line[6:])
                if data.get("usage"):
                    usage = int(data["usage"]["completion_tokens"])
    return usage


async def bench_turnout(
    url: str, tokens: int, streams: int, bias: dict[str, float]
) -> dict[str, Any]:
    import aiohttp

    out: dict[str, Any] = {}
    timeout = aiohttp.ClientTimeout(total=900)
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        started = time.perf_counter()
        await stream_once(session, url, PROMPTS[0], 8, bias)  # loads the model (and its graph)
        out["first_request_s"] = time.perf_counter() - started
        rates = []
        for i in range(3):
            started = time.perf_counter()
            got = await stream_once(session, url, PROMPTS[i], tokens, bias)
            rates.append(got / (time.perf_counter() - started))
            assert got == tokens, got
        out["turnout_1_tokens_per_s"] = statistics.median(rates)
        out["turnout_1_runs"] = rates
        for label in ("warm", "measured"):
            started = time.perf_counter()
            counts = await asyncio.gather(
                *(stream_once(session, url, PROMPTS[i], tokens, bias) for i in range(streams))
            )
            elapsed = time.perf_counter() - started
            assert all(c == tokens for c in counts), counts
            out[f"turnout_{streams}_{label}_tokens_per_s"] = sum(counts) / elapsed
        out[f"turnout_{streams}_tokens_per_s"] = out[f"turnout_{streams}_measured_tokens_per_s"]
        async with session.get(url + "/v1/local/ps") as resp:
            out["status"] = await resp.json() if resp.status == 200 else resp.status
        query = ["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv"]
        with contextlib.suppress(OSError):
            done = await asyncio.to_thread(
                subprocess.run, query, capture_output=True, text=True, check=False
            )
            out["gpu_memory_by_process"] = done.stdout
    return out


def serve(
    folder: Path, streams: int, n_ctx: int, device: str
) -> tuple[subprocess.Popen[bytes], str, Any]:
    import yaml

    port = free_port()
    model = {
        "name": "gpu-model", "path": str(folder), "engine": "transformers", "device": device,
        "n_ctx": n_ctx, "max_batch": streams,
    }  # fmt: skip
    config = {
        "server": {"port": port, "log_level": "warning"},
        "providers": {"gpu": {"type": "embedded", "models": [model]}},
    }
    cfg = tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False)  # noqa: SIM115
    yaml.safe_dump(config, cfg)
    cfg.close()
    log = tempfile.NamedTemporaryFile(prefix="gateway-", suffix=".log", delete=False)  # noqa: SIM115
    cmd = [sys.executable, "-m", "turnout", "serve", "--config", cfg.name]
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return proc, url, log
        if proc.poll() is not None:
            break
        time.sleep(0.5)
    log.flush()
    raise RuntimeError("the gateway did not start:\n" + Path(log.name).read_text()[-4000:])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("model", type=Path)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--streams", type=int, default=64)
    parser.add_argument("--n-ctx", type=int, default=512)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--skip-generate", action="store_true")
    parser.add_argument("--device", default="cuda")
    args = parser.parse_args()
    results: dict[str, Any] = {
        "model": str(args.model),
        "tokens": args.tokens,
        "streams": args.streams,
    }
    if not args.skip_generate:
        results.update(bench_generate(args.model, args.tokens, args.streams, args.device))
        print(json.dumps(results), flush=True)
    bias = {str(i): -100.0 for i in eos_ids(args.model)}
    proc, url, log = serve(args.model, args.streams, args.n_ctx, args.device)
    try:
        results.update(asyncio.run(bench_turnout(url, args.tokens, args.streams, bias)))
    finally:
        proc.terminate()
        proc.wait(30)
        results["gateway_log_tail"] = Path(log.name).read_text()[-3000:]
    n = args.streams
    rows = (
        results.get("status", {}).get("data", []) if isinstance(results.get("status"), dict) else []
    )
    for row in rows:
        print(
            "engine:",
            json.dumps(
                {k: row.get(k) for k in ("device", "device_bytes", "batch", "load_seconds")}
            ),
        )
    if "generate_1_tokens_per_s" in results:
        results["one_stream_ratio"] = (
            results["turnout_1_tokens_per_s"] / results["generate_1_tokens_per_s"]
        )
        results["many_streams_ratio"] = (
            results[f"turnout_{n}_tokens_per_s"] / results[f"generate_{n}_tokens_per_s"]
        )
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))
    print(f"\n{'measure':44} {'tokens/s':>10}")
    for key in (
        "generate_1_tokens_per_s", f"generate_{n}_tokens_per_s", "turnout_1_tokens_per_s",
        f"turnout_{n}_tokens_per_s", "one_stream_ratio", "many_streams_ratio", "first_request_s",
    ):  # fmt: skip
        if key in results:
            print(f"{key:44} {results[key]:10.2f}")


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
