"""llama.cpp in-process: one model's pool of ``llama_cpp.Llama`` instances, loaded and unloaded.

Loading reports llama.cpp's own progress (0..1) and can be aborted half-way: llama.cpp asks a
progress callback whether to go on, and llama-cpp-python builds its model parameters with
``llama_model_default_params()``, so turnout wraps that function once to attach a callback set
per loading thread (other threads get the defaults untouched).
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ...models.formats import Header, HeaderError, read_gguf
from ...models.hardware import fit_gpu_layers, gpu_memory
from .settings import EmbeddedModel

__all__ = ["LlamaEngine", "LoadCancelled", "estimate_bytes", "resolve_gpu_layers"]

_MB = 1024 * 1024
log = logging.getLogger("turnout.embedded")
_local = threading.local()
_hook_lock = threading.Lock()


class LoadCancelled(Exception):
    """Every request waiting for this load went away, so it was abandoned."""


def estimate_bytes(
    file_size: int, header: Header | None, n_ctx: int, instances: int = 1, mmap: bool = True
) -> int:
    """Memory a loaded GGUF takes: its weights (shared between instances when memory-mapped),
    plus per instance an f16 KV cache of ``n_ctx`` tokens and llama.cpp's compute buffers.
    Measured here on Gemma 3 270M: 340 MB resident at n_ctx 2048, 461 MB at 8192; this gives
    355 and 470."""
    kv = 0
    if header is not None and header.layers and header.kv_heads:
        width = (header.key_length or 128) + (header.value_length or 128)
        kv = header.layers * n_ctx * header.kv_heads * width * 2  # f16: 2 bytes an element
    per_instance = kv + 64 * _MB + file_size // 20  # compute buffers grow with the model
    weights = file_size if mmap else file_size * instances
    return weights + per_instance * instances


def llama_offloads() -> bool | None:
    """Whether the installed llama-cpp-python was built with a GPU backend (None: not
    installed)."""
    try:
        import llama_cpp
    except ImportError:
        return None
    return bool(llama_cpp.llama_supports_gpu_offload())


def resolve_gpu_layers(
    entry: EmbeddedModel, path: Path, offloads: bool | None = None
) -> tuple[int, str]:
    """The ``n_gpu_layers`` to run ``path`` with, and why: the configured count, or for
    ``auto`` the layers that fit in the first CUDA GPU's free memory (`fit_gpu_layers`); 0 on
    a machine without one, or when llama.cpp cannot offload (``offloads`` False: a CPU
    build)."""
    if entry.n_gpu_layers != "auto":
        return int(entry.n_gpu_layers), "configured"
    if offloads is False:
        return 0, (
            "this llama.cpp build cannot offload to a GPU (a CPU build; the README shows "
            "the CUDA install line)"
        )
    devices = gpu_memory()
    if not devices:
        return 0, "no CUDA GPU found (NVML, torch): every layer runs on the CPU"
    try:
        header = read_gguf(path)
    except (HeaderError, OSError) as exc:
        return 0, f"the GGUF's header could not be read ({exc})"
    layers, why = fit_gpu_layers(header, entry.n_ctx, devices[0].free)
    return layers, f"{devices[0].device} ({devices[0].name}): {why}"


def _install_progress_hook() -> None:
    import llama_cpp.llama_cpp as lib

    with _hook_lock:
        original = lib.llama_model_default_params
        if getattr(original, "_turnout_hook", False):
            return

        def default_params() -> Any:
            params = original()
            callback = getattr(_local, "callback", None)
            if callback is not None:
                params.progress_callback = callback
            return params

        default_params._turnout_hook = True  # type: ignore[attr-defined]
        lib.llama_model_default_params = default_params


class LlamaEngine:
    """One model's pool of ``parallel`` llama.cpp instances, plus a lazily loaded embedder."""

    def __init__(self, entry: EmbeddedModel, parallel: int, resolve: Callable[[], Path]) -> None:
        self.entry = entry
        self.parallel = parallel
        self.pool: asyncio.Queue[Any] = asyncio.Queue()
        self.embedder: Any = None
        self.embed_lock = asyncio.Lock()  # guards creating the embedder
        self.embed_busy = asyncio.Lock()  # one embedding call at a time on it
        self.path: Path | None = None
        self._resolve = resolve
        self.gpu_layers = entry.n_gpu_layers if isinstance(entry.n_gpu_layers, int) else 0

    def make(self, *, embedding: bool = False, **extra: Any) -> Any:
        """A new llama.cpp instance of this model (blocking: call it in a worker thread)."""
        from llama_cpp import Llama

        threads = self.entry.n_threads or os.cpu_count() or 1
        return Llama(
            model_path=str(self.path),
            chat_format=self.entry.chat_format,
            n_ctx=self.entry.n_ctx,
            n_threads=threads,
            n_threads_batch=threads,
            n_batch=self.entry.n_batch,
            n_gpu_layers=self.gpu_layers,
            use_mmap=self.entry.use_mmap,
            use_mlock=self.entry.use_mlock,
            embedding=embedding,
            verbose=False,
            **extra,
        )

    def _make_watched(self, progress: Callable[[float], None], cancel: threading.Event) -> Any:
        import llama_cpp.llama_cpp as lib

        _install_progress_hook()

        def report(fraction: float, _user: Any) -> bool:
            progress(fraction)
            return not cancel.is_set()  # False makes llama.cpp abort the load

        _local.callback = lib.llama_progress_callback(report)
        try:
            return self.make()
        except ValueError:
            if cancel.is_set():
                raise LoadCancelled from None
            raise
        finally:
            _local.callback = None

    async def load(self, progress: Callable[[float], None], cancel: threading.Event) -> None:
        """Fill the pool; abandon (closing what was built) as soon as ``cancel`` is set."""
        self.path = await asyncio.to_thread(self._resolve)
        if self.entry.n_gpu_layers == "auto":
            self.gpu_layers, why = await asyncio.to_thread(
                resolve_gpu_layers, self.entry, self.path, llama_offloads()
            )
            log.info("model %s: n_gpu_layers auto -> %d: %s", self.entry.name, self.gpu_layers, why)
        built: list[Any] = []
        try:
            for i in range(self.parallel):
                if cancel.is_set():
                    raise LoadCancelled

                def part(fraction: float, i: int = i) -> None:
                    progress((i + fraction) / self.parallel)

                built.append(await asyncio.to_thread(self._make_watched, part, cancel))
        except BaseException:
            for llm in built:
                await asyncio.to_thread(llm.close)
            raise
        for llm in built:
            self.pool.put_nowait(llm)

    async def unload(self) -> None:
        """Close every instance. Called only when no request holds one (the scheduler's rule)."""
        while not self.pool.empty():
            await asyncio.to_thread(self.pool.get_nowait().close)
        if self.embedder is not None:
            embedder, self.embedder = self.embedder, None
            await asyncio.to_thread(embedder.close)

    def _load_embedder(self) -> Any:
        """An embedding instance that pools each input into one vector. A generative GGUF (the
        default Gemma) declares no pooling, which would give one vector per token: mean-pool it."""
        from llama_cpp import LLAMA_POOLING_TYPE_MEAN, LLAMA_POOLING_TYPE_NONE

        llm = self.make(embedding=True)
        if llm.pooling_type() == LLAMA_POOLING_TYPE_NONE:
            llm.close()
            llm = self.make(embedding=True, pooling_type=LLAMA_POOLING_TYPE_MEAN)
        return llm

    async def embedding_engine(self) -> Any:
        async with self.embed_lock:
            if self.embedder is None:
                self.embedder = await asyncio.to_thread(self._load_embedder)
            return self.embedder
