"""The shared machinery of engines whose runtime generates token by token in a blocking Python
API (transformers, onnxruntime-genai): OpenAI requests in, OpenAI chunks out.

A subclass implements only blocking hooks, run in worker threads: `_load_blocking`,
`_unload_blocking`, `_encode`, `_tokens` (one decoded text piece per generated token) and
optionally `_own_prompt` (the model's own chat template) and `estimate_bytes`. The base renders
the chat, checks the context, pulls tokens in a worker thread into an asyncio queue, stops
between two tokens when the consumer goes away, applies ``max_tokens`` and stop strings (held
back while they may still be starting), and builds ``chat.completion.chunk`` /
``text_completion`` chunks ending in a usage chunk counted from the real token ids.

The prompt of a chat: the configured ``chat_format`` (a named template of
`turnout.providers.chat_templates`) when set; else the model's own template (`_own_prompt`);
else the named template for its architecture (``gemma`` for Gemma), else ``chatml``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import threading
from abc import ABC, abstractmethod
from collections.abc import AsyncGenerator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from ...errors import BackendError, CapabilityError, ConfigError, InvalidRequestError
from ..base import JSON, Call, Capabilities, Chunk
from ..chat_templates import TEMPLATES, Template
from ..emulation import refuse_unsupported, single_prompt, unsupported
from .llama_engine import LoadCancelled
from .llama_wire import assemble
from .scheduler import Need
from .settings import EmbeddedModel
from .token_text import Chunks, StopScanner, chat_turns, parse_logit_bias, template_for

__all__ = [
    "Chunks",
    "Sampling",
    "StopScanner",
    "ThreadEngine",
    "chat_turns",
    "placements",
    "require_packages",
    "template_for",
]

_DONE = object()


@dataclass(frozen=True, slots=True)
class Sampling:
    """What a request asks of the sampler; None means the model's (or runtime's) default.
    ``max_tokens`` is the base's business (it stops pulling), given for runtimes that size
    buffers from it."""

    max_tokens: int
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    seed: int | None = None
    #: token id -> bias added to its logit (OpenAI's -100..100; -100 bans, 100 forces)
    logit_bias: dict[int, float] | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0

    def check_vocabulary(self, vocab: int) -> None:
        """Refuse a ``logit_bias`` naming token ids the model does not have."""
        outside = [t for t in self.logit_bias or () if not 0 <= t < vocab]
        if outside:
            raise InvalidRequestError(
                f"token ids {outside[:5]} are outside the model's vocabulary (0..{vocab - 1})",
                param="logit_bias",
                code="invalid_value",
            )


def require_packages(packages: tuple[str, ...], engine: str, extra: str = "engines") -> None:
    """Raise a clear error naming the packages of ``engine`` that are not installed and the pip
    extra that installs them."""
    import importlib.util

    missing = [p for p in packages if importlib.util.find_spec(p) is None]
    if missing:
        raise BackendError(
            f"the {engine} engine needs {', '.join(missing)}, which is not installed: "
            f"pip install 'turnout[{extra}]'"
        )


class ThreadEngine(ABC):
    """One model served by a blocking, token-by-token runtime: what the scheduler loads and
    unloads, and what the embedded provider relays calls to (as it does to a `ServerEngine`).
    One generation at a time per model; further requests wait in arrival order."""

    #: the engine's name in listings and configuration (``engine:``)
    kind: ClassVar[str] = "thread"
    #: what this engine can do (the router never sends it a request needing more)
    capabilities: ClassVar[Capabilities] = Capabilities(
        embeddings=False, tools=False, vision=False, json_schema=False
    )
    #: the request fields beyond temperature, top_p, top_k and seed that the runtime applies;
    #: a request setting another to a non-neutral value is refused (dropping it would change
    #: the answer)
    sampling_fields: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, entry: EmbeddedModel, resolve: Callable[[], Path]) -> None:
        if entry.chat_format and entry.chat_format not in TEMPLATES:
            raise ConfigError(
                f"model '{entry.name}': chat_format {entry.chat_format!r} is not a template of "
                f"the {self.kind} engine; allowed: {', '.join(sorted(TEMPLATES))}"
            )
        self.entry, self._resolve = entry, resolve
        self.path: Path | None = None
        self.architecture: str | None = None  # set by `_load_blocking` when it knows it
        self.placed: str | None = None  # the GPU the scheduler placed it on, if any
        self._busy = asyncio.Lock()
        self._workers: set[asyncio.Future[Any]] = set()

    # The hooks a runtime implements (blocking; called in worker threads).

    @abstractmethod
    def _load_blocking(
        self, path: Path, progress: Callable[[float], None], cancel: threading.Event
    ) -> None:
        """Load the model at ``path``; report 0..1 through ``progress``; raise `LoadCancelled`
        between steps once ``cancel`` is set (having freed what it built)."""

    @abstractmethod
    def _unload_blocking(self) -> None:
        """Free the model (drop every reference); called with no generation running."""

    @abstractmethod
    def _encode(self, text: str) -> list[int]:
        """The token ids of a prompt as the model reads it: special tokens in ``text`` parsed,
        and the BOS the model's tokenizer adds by default added."""

    @abstractmethod
    def _tokens(self, prompt_ids: list[int], sampling: Sampling) -> Iterator[str]:
        """Generate after ``prompt_ids``: yield one decoded text piece per generated token (an
        empty string for a token that completes no character yet); end at end-of-sequence.
        The base stops pulling for ``max_tokens``, stop strings and cancellation, then closes
        the iterator, so its ``finally`` runs in the worker thread."""

    def _own_prompt(self, messages: list[JSON]) -> list[int] | None:
        """The prompt ids from the model's own chat template, or None when it has none."""
        return None

    def estimate_bytes(self, path: Path) -> int:
        """Memory the loaded model takes (blocking: may read files): the weights' size on disk
        plus a quarter for the runtime's buffers. Runtimes with a better idea override it."""
        files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
        size = sum(p.stat().st_size for p in files)
        return size + size // 4

    def placement(self, path: Path) -> int | Need:
        """What the scheduler budgets for the model (blocking): host bytes, or a `Need` with
        GPU memory for a runtime that places models on a GPU."""
        return self.estimate_bytes(path)

    def describe(self) -> JSON:
        """What ``/v1/local/ps`` adds about the loaded engine (its device, its batch)."""
        return {}

    # The engine shape the scheduler and the provider use.

    async def load(self, progress: Callable[[float], None], cancel: threading.Event) -> None:
        self.path = await asyncio.to_thread(self._resolve)
        if cancel.is_set():
            raise LoadCancelled
        try:
            await asyncio.to_thread(self._load_blocking, self.path, progress, cancel)
        except BaseException:
            await asyncio.to_thread(self._unload_blocking)
            raise
        progress(1.0)

    async def unload(self) -> None:
        # A generation whose consumer left may still be finishing its token: wait for it.
        while self._workers:
            await asyncio.gather(*self._workers, return_exceptions=True)
        await asyncio.to_thread(self._unload_blocking)

    async def complete(self, call: Call) -> JSON:
        """A whole reply, made from the engine's own stream (so a client that leaves stops the
        generation between two tokens as well)."""
        async with contextlib.aclosing(self.stream(call)) as chunks:
            return assemble(call, [chunk.data async for chunk in chunks])

    async def stream(self, call: Call) -> AsyncGenerator[Chunk, None]:
        plan = self._plan(call)  # checks the request before any waiting
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Any] = asyncio.Queue()
        stop = threading.Event()
        await self._busy.acquire()
        try:
            worker = loop.run_in_executor(None, self._produce, call, plan, stop, queue, loop)
        except BaseException:
            self._busy.release()
            raise
        self._workers.add(worker)
        worker.add_done_callback(self._finished)
        try:
            while (item := await queue.get()) is not _DONE:
                if isinstance(item, BaseException):
                    raise self._map_error(item)
                yield Chunk(item)
        finally:
            stop.set()  # between two tokens, the worker sees it and ends

    def _finished(self, worker: asyncio.Future[Any]) -> None:
        self._workers.discard(worker)
        self._busy.release()

    # The request, checked and turned into prompt ids, limits and stop strings.

    def _plan(self, call: Call) -> tuple[Sampling, list[str]]:
        """Refuse what this engine cannot do, before any waiting; the sampling asked and the
        request's own stop strings."""
        body = call.body  # what it lacks (`capabilities`) the router never sends it
        refuse_unsupported(body, f"The {self.kind} engine")
        if (body.get("n") or 1) > 1:
            raise CapabilityError(
                f"The {self.kind} engine generates one choice per request; 'n' must be 1.",
                param="n",
            )
        if call.kind == "completion":
            single_prompt(body.get("prompt"), f"The {self.kind} engine")
        stop = body.get("stop")
        stops = [stop] if isinstance(stop, str) else [s for s in stop or () if isinstance(s, str)]
        limit = body.get("max_tokens")
        if limit is None:
            limit = body.get("max_completion_tokens")
        bias = parse_logit_bias(body.get("logit_bias"))
        presence = float(body.get("presence_penalty") or 0.0)
        frequency = float(body.get("frequency_penalty") or 0.0)
        asked = {"logit_bias": bias, "presence_penalty": presence, "frequency_penalty": frequency}
        for name, value in asked.items():
            if value and name not in self.sampling_fields:
                raise unsupported(f"The {self.kind} engine does not apply '{name}'.", name)
        sampling = Sampling(
            max_tokens=int(limit) if limit is not None else self.entry.n_ctx,
            temperature=body.get("temperature"),
            top_p=body.get("top_p"),
            top_k=body.get("top_k"),
            seed=body.get("seed"),
            logit_bias=bias,
            presence_penalty=presence,
            frequency_penalty=frequency,
        )
        return sampling, stops

    def _prompt(self, call: Call) -> tuple[list[int], tuple[str, ...]]:
        """The prompt's token ids and the stop strings its template brings (worker thread:
        templates and tokenizers take CPU time)."""
        if call.kind != "chat":
            prompt = single_prompt(call.body.get("prompt"), f"The {self.kind} engine")
            return self._encode(prompt if isinstance(prompt, str) else ""), ()
        messages = call.body["messages"]
        own = None if self.entry.chat_format else self._own_prompt(messages)
        if own is not None:
            return own, ()
        template = self._template()
        return self._encode(template.render(chat_turns(messages))), template.stop

    def _template(self) -> Template:
        return TEMPLATES[self.entry.chat_format or template_for(self.architecture)]

    # The worker thread.

    def _produce(
        self,
        call: Call,
        plan: tuple[Sampling, list[str]],
        stop: threading.Event,
        queue: asyncio.Queue[Any],
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        def put(item: Any) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, item)

        try:
            for chunk in self._generate(call, plan, stop):
                put(chunk)
        except BaseException as exc:
            put(exc)
        finally:
            put(_DONE)

    def _generate(
        self, call: Call, plan: tuple[Sampling, list[str]], stop: threading.Event
    ) -> Iterator[JSON]:
        sampling, stops = plan
        ids, template_stops = self._prompt(call)
        room = self.entry.n_ctx - len(ids)
        if room <= 0:
            raise InvalidRequestError(
                f"the prompt has {len(ids)} tokens, more than model '{call.model}' holds "
                f"(n_ctx {self.entry.n_ctx})",
                param="messages" if call.kind == "chat" else "prompt",
                code="context_length_exceeded",
            )
        limit = min(sampling.max_tokens, room)
        out = Chunks(call)
        if out.chat:
            yield out.role()
        scanner, count, finish = StopScanner([*stops, *template_stops]), 0, "stop"
        pieces = self._tokens(ids, dataclasses.replace(sampling, max_tokens=limit))
        try:
            for piece in pieces:
                count += 1
                text = scanner.feed(piece)
                if text:
                    yield out.text(text)
                if scanner.stopped or stop.is_set():
                    break
                if count >= limit:
                    finish = "length"
                    break
        finally:
            close = getattr(pieces, "close", None)
            if close is not None:
                close()
        if stop.is_set():
            return  # nobody reads any more
        if not scanner.stopped and (rest := scanner.flush()):
            yield out.text(rest)
        yield out.finish(finish)
        yield out.usage(len(ids), count)

    def _map_error(self, exc: BaseException) -> BaseException:
        if isinstance(exc, InvalidRequestError | BackendError):
            return exc
        return BackendError(
            f"{self.kind} engine of model '{self.entry.name}' failed: "
            f"{type(exc).__name__}: {str(exc)[:300]}"
        )


def placements(engines: list[tuple[ThreadEngine, Path]]) -> list[int | Need | BackendError]:
    """What each model asks of the scheduler, or why it cannot say (a device not here)."""
    out: list[int | Need | BackendError] = []
    for engine, path in engines:
        try:
            out.append(engine.placement(path))
        except BackendError as exc:
            out.append(exc)
    return out
