"""``bench-engines``: load time and tokens per second of one model on each engine that can run it
(source document 001's ``benchmarkEngines``: load, generate once from a fixed prompt, unload).

A GGUF runs on llama.cpp in-process, on a managed ``llama-server`` (when a binary is found) and
on llama-cpp-python's managed server. The end-of-sequence tokens the file declares are banned, so
every engine generates exactly ``max_tokens`` and the rates compare like with like. Each run
times one completion request from the moment it is sent until its reply is whole. The first
request after a load is timed apart: llama.cpp finishes setting up on it (repacking weights,
touching the mapped file), which took 5 s for Gemma 3 270M on this machine against 0.3 s after.

A Hugging Face safetensors folder runs on transformers, an onnxruntime-genai folder on the onnx
engine (when its module is there), with the end-of-sequence ids of the folder's configs banned
when the engine applies ``logit_bias``; an engine that does not may stop before ``max_tokens``,
and its rate counts the tokens it really generated.
"""

from __future__ import annotations

import asyncio
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ...models.directory import describe
from ..base import Call
from .llama_engine import LlamaEngine
from .server_engine import ServerEngine, find_llama_server
from .settings import EmbeddedModel
from .thread_engine import ThreadEngine

__all__ = ["PROMPT", "EngineResult", "bench_engines"]

PROMPT = "Write a short story about a robot."  # source document 001's test prompt


@dataclass(slots=True)
class EngineResult:
    engine: str
    ok: bool = False
    load_seconds: float | None = None
    first_seconds: float | None = None  # the first request after the load
    generation_seconds: list[float] = field(default_factory=list)  # the runs after it
    completion_tokens: int | None = None
    error: str | None = None

    @property
    def tokens_per_second(self) -> float | None:
        if not self.ok or not self.generation_seconds or not self.completion_tokens:
            return None
        return self.completion_tokens / statistics.median(self.generation_seconds)

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "tokens_per_second": self.tokens_per_second}


def _folder_eos(path: Path) -> dict[str, float]:
    """End-of-sequence ids the configs of a Hugging Face or onnxruntime-genai folder name."""
    import json

    folder = path if path.is_dir() else path.parent
    ids: set[int] = set()
    for name, section in (
        ("generation_config.json", None), ("config.json", None), ("genai_config.json", "model"),
    ):  # fmt: skip
        try:
            data = json.loads((folder / name).read_text())
        except (OSError, ValueError):
            continue
        data = data.get(section) if section and isinstance(data, dict) else data
        value = data.get("eos_token_id") if isinstance(data, dict) else None
        values = value if isinstance(value, list) else [value]
        ids.update(v for v in values if isinstance(v, int))
    return {str(i): -100.0 for i in sorted(ids)}


def _banned(path: Path) -> dict[str, float]:
    meta = describe(path).header.metadata
    ids = {meta.get(k) for k in ("tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id")}
    return {str(i): -100.0 for i in ids if isinstance(i, int)}


async def bench_engines(
    model: str | Path,
    *,
    max_tokens: int = 100,
    runs: int = 3,
    n_ctx: int = 2048,
    threads: int | None = None,
    chat_format: str | None = None,
    progress: Callable[[str], None] | None = None,
) -> list[EngineResult]:
    """Benchmark ``model`` (a GGUF file, or a safetensors or ONNX folder) on every engine here
    that can run it, one engine at a time."""
    from .choice import model_format

    path = Path(model)
    entry = EmbeddedModel(
        name=path.stem, path=str(path), n_ctx=n_ctx, n_threads=threads, chat_format=chat_format
    )
    body = {"prompt": PROMPT, "max_tokens": max_tokens, "temperature": 0.0}
    fmt = model_format(path)
    if fmt != "gguf":
        return await _bench_thread_engine(fmt, entry, path, body, runs, progress)
    body["logit_bias"] = _banned(path)
    binary = find_llama_server()
    server, python = "llama-server (managed)", "llama-cpp-python server (managed)"
    candidates: list[tuple[str, Any]] = [
        ("llama.cpp in-process", LlamaEngine(entry, 1, lambda: path))
    ]
    if binary:
        candidates.append((server, ServerEngine(entry, lambda: path, binary)))
    candidates.append((python, ServerEngine(entry, lambda: path, None)))
    results = [] if binary else [EngineResult(server, error="no llama-server binary found")]
    for name, engine in candidates:
        if progress is not None:
            progress(name)
        results.append(await _bench_one(name, engine, body, runs))
    return sorted(results, key=lambda r: r.engine)


_LABELS = {"transformers": "transformers (in-process)", "onnx": "onnxruntime-genai (in-process)"}


async def _bench_thread_engine(
    fmt: str,
    entry: EmbeddedModel,
    path: Path,
    body: dict[str, Any],
    runs: int,
    progress: Callable[[str], None] | None,
) -> list[EngineResult]:
    from ...errors import ConfigError
    from .choice import ENGINE_BY_FORMAT, thread_engine_class

    kind = ENGINE_BY_FORMAT[fmt]
    name = _LABELS.get(kind, kind)
    try:
        engine = thread_engine_class(kind)(entry, lambda: path)
    except ConfigError as exc:
        return [EngineResult(name, error=str(exc))]
    if "logit_bias" in engine.sampling_fields:
        body = {**body, "logit_bias": await asyncio.to_thread(_folder_eos, path)}
    if progress is not None:
        progress(name)
    return [await _bench_one(name, engine, body, runs)]


async def _bench_one(name: str, engine: Any, body: dict[str, Any], runs: int) -> EngineResult:
    result = EngineResult(name)
    started = time.perf_counter()
    try:
        await engine.load(lambda _: None, threading.Event())
    except Exception as exc:
        result.error = f"{type(exc).__name__}: {str(exc)[:200]}"
        return result
    result.load_seconds = time.perf_counter() - started
    try:
        begun = time.perf_counter()
        await _complete(engine, body)
        result.first_seconds = time.perf_counter() - begun
        for _ in range(runs):
            begun = time.perf_counter()
            reply = await _complete(engine, body)
            result.generation_seconds.append(time.perf_counter() - begun)
            result.completion_tokens = int(reply["usage"]["completion_tokens"])
        result.ok = True
    except Exception as exc:
        result.error = f"{type(exc).__name__}: {str(exc)[:200]}"
    finally:
        await engine.unload()
    return result


async def _complete(engine: Any, body: dict[str, Any]) -> dict[str, Any]:
    if isinstance(engine, ServerEngine | ThreadEngine):
        reply: dict[str, Any] = await engine.complete(
            Call("completion", dict(body), engine.entry.name)
        )
        return reply
    llm = await engine.pool.get()
    try:
        out: dict[str, Any] = await asyncio.to_thread(
            llm.create_completion, **{k: v for k, v in body.items() if k != "logit_bias"},
            logit_bias={int(k): v for k, v in body["logit_bias"].items()},
        )  # fmt: skip
        return out
    finally:
        engine.pool.put_nowait(llm)
