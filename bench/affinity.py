"""bench/run.py's routing scenario: prefix-affinity against round-robin over two llama.cpp replicas.

Two llama-cpp-python servers (`python -m llama_cpp.server`, one thread each: one core apiece)
serve the Gemma GGUF. llama.cpp keeps
the KV cache of the last prompt it evaluated and reuses its longest common prefix, so a request
whose long prefix the replica has just seen starts its answer sooner. The workload: two long
shared documents A and B (about 500 tokens each), each followed by a short question, sent one at
a time in the order A A B B A A B B... (two clients taking turns, two requests each). Round-robin
sends every request to the other replica than the one before, which last saw the other document;
prefix-affinity should send each document to one replica. Time to first token is measured
through turnout for both strategies; `X-Turnout-Backend` records which replica answered.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import aiohttp
import targets as T
from http_clients import free_port

Log = Callable[[str], None]
GEMMA = "gemma-3-270m"
ROUTE = "gemma-pool"
STRATEGIES = ("round_robin", "prefix_affinity")


def document(name: str, facts: int = 16) -> str:
    """A long deterministic text, different for each name."""
    lines = [f"Reference document {name}. Read it carefully before answering."]
    for i in range(facts):
        lines.append(
            f"Fact {name}-{i}: the lighthouse number {i} on the coast of {name} is painted "
            f"{['red', 'white', 'blue', 'green'][i % 4]} and its keeper rings the bell "
            f"{i + 3} times."
        )
    return "\n".join(lines)


def prompts(n: int) -> list[tuple[str, str]]:
    """(document name, prompt) in the order A A B B A A B B..."""
    docs = {"A": document("Alder"), "B": document("Birch")}
    out = []
    for i in range(n):
        name = "AB"[(i // 2) % 2]
        out.append((name, f"{docs[name]}\n\nQuestion {i}: what colour is lighthouse {i % 7}?"))
    return out


def config(replicas: list[str], strategy: str) -> str:
    providers = "".join(
        f"  r{i}:\n    type: llama-cpp-python\n    endpoint: {url}\n    models: [{GEMMA}]\n"
        for i, url in enumerate(replicas, 1)
    )
    targets = "".join(
        f"      - {{provider: r{i}, model: {GEMMA}}}\n" for i in range(1, len(replicas) + 1)
    )
    return (
        f"embedded: false\nproviders:\n{providers}"
        f"routes:\n  {ROUTE}:\n    strategy: {strategy}\n    targets:\n"
        f"{targets}"
    )


def unavailable(replicas: list[str]) -> str | None:
    """Why this build cannot run the scenario, or None if its configuration accepts it."""
    from turnout.config import Config, load_config
    from turnout.errors import ConfigError

    if "routes" not in Config.model_fields:
        return "turnout's configuration has no `routes` section in this build"
    import yaml

    for strategy in STRATEGIES:
        try:
            load_config(yaml.safe_load(config(replicas, strategy)), environ={})
        except ConfigError as exc:
            return f"turnout rejects a `{strategy}` route in this build: {exc}"
    return None


@contextmanager
def replica(tmp: Path, model: Path) -> Iterator[str]:
    port = free_port()
    cmd = [
        sys.executable, "-m", "llama_cpp.server", "--model", str(model), "--model_alias", GEMMA,
        "--chat_format", "gemma", "--n_ctx", "2048", "--n_threads", "1",
        "--host", T.HOST, "--port", str(port),
    ]  # fmt: skip
    with T.serve("llama.cpp replica", cmd, port, tmp, ready_model=GEMMA) as server:
        yield server.url


async def first_token(url: str, prompt: str) -> tuple[float, str]:
    """Time to the first content chunk of one streamed request, and the backend that served it."""
    body: dict[str, Any] = {
        "model": ROUTE,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": 4,
        "temperature": 0.0,
        "stream": True,
    }
    async with aiohttp.ClientSession() as http:
        start = time.perf_counter()
        async with http.post(f"{url}/v1/chat/completions", json=body) as resp:
            if resp.status != 200:
                raise RuntimeError(f"HTTP {resp.status}: {(await resp.text())[:300]}")
            backend = resp.headers.get("X-Turnout-Backend", "?")
            ttft = None
            async for line in resp.content:
                if ttft is None and line.startswith(b"data: {") and b'"content"' in line:
                    ttft = (time.perf_counter() - start) * 1000
            return (ttft if ttft is not None else float("nan")), backend


def affinity(tmp: Path, runs: int, requests: int, log: Log) -> dict[str, Any]:
    """Median time to first token per strategy, each run through a fresh gateway."""
    from turnout.providers.embedded import default_model_path

    out: dict[str, Any] = {"requests": requests, "order": "A A B B ...", "strategies": {}}
    with ExitStack() as stack:
        log("starting two llama-cpp-python replicas on the Gemma GGUF")
        model = default_model_path()
        replicas = [stack.enter_context(replica(tmp, model)) for _ in range(2)]
        reason = unavailable(replicas)
        if reason is not None:
            log(f"prefix-affinity: not available in this build ({reason})")
            return {**out, "available": False, "reason": reason}
        work = prompts(requests)
        for run in range(runs):
            for strategy in STRATEGIES:
                with T.turnout(tmp, None, config(replicas, strategy), ROUTE) as gw:
                    for _, prompt in prompts(2)[::-1]:  # leave each replica on a third text
                        asyncio.run(first_token(gw.url, prompt.replace("Alder", "Cedar")))
                    rows = [asyncio.run(first_token(gw.url, prompt)) for _, prompt in work]
                ttfts = [t for t, _ in rows]
                backends = [f"{doc}->{b}" for (doc, _), (_, b) in zip(work, rows, strict=True)]
                out["strategies"].setdefault(strategy, []).append(
                    {"ttft_ms": statistics.median(ttfts), "all_ms": ttfts, "backends": backends}
                )
                log(
                    f"run {run + 1}/{runs} {strategy:16} median TTFT "
                    f"{statistics.median(ttfts):.0f} ms  ({' '.join(backends)})"
                )
    return {**out, "available": True}
