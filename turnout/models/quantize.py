"""GGUF quantization through llama.cpp's own ``llama_model_quantize`` (via llama-cpp-python).

It writes ``DST.partial`` and renames it only when llama.cpp reports success, so a failed or
interrupted run leaves no half-written model where a model is expected. Progress is llama.cpp's
own per-tensor log line (``[ 12/ 236] blk.0.attn_k.weight ...``), read through a log callback
installed for the duration (llama.cpp's log hook is process-wide; the previous one is put back).
"""

from __future__ import annotations

import ctypes
import os
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .formats import HeaderError, read_gguf

__all__ = ["QUANT_TYPES", "QuantizeError", "QuantizeResult", "quantize"]

#: types llama.cpp quantizes to without an importance matrix (the IQ types and Q2_K_S need one,
#: which turnout does not compute), by the names llama-quantize uses
QUANT_TYPES = (
    "Q2_K", "Q3_K_S", "Q3_K_M", "Q3_K_L", "Q4_0", "Q4_1", "Q4_K_S", "Q4_K_M", "Q5_0", "Q5_1",
    "Q5_K_S", "Q5_K_M", "Q6_K", "Q8_0", "F16", "BF16", "F32",
)  # fmt: skip
_TENSOR_LINE = re.compile(rb"\[\s*(\d+)\s*/\s*(\d+)\]")
_lock = threading.Lock()  # one quantization at a time owns llama.cpp's log hook


class QuantizeError(Exception):
    """Bad arguments or a failed quantization, with a message for the user."""


@dataclass(frozen=True, slots=True)
class QuantizeResult:
    source: Path
    target: Path
    type: str
    source_type: str | None
    source_bytes: int
    target_bytes: int
    seconds: float

    @property
    def ratio(self) -> float:
        return self.target_bytes / self.source_bytes if self.source_bytes else 0.0


def _ftype(name: str) -> int:
    import llama_cpp

    key = name.upper()
    if key not in QUANT_TYPES:
        raise QuantizeError(
            f"unsupported quantization type {name!r}; allowed: {', '.join(QUANT_TYPES)}"
        )
    attr = "LLAMA_FTYPE_ALL_F32" if key == "F32" else f"LLAMA_FTYPE_MOSTLY_{key}"
    return int(getattr(llama_cpp, attr))


def quantize(
    source: str | Path,
    target: str | Path,
    type: str = "Q8_0",
    *,
    threads: int | None = None,
    force: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> QuantizeResult:
    """Quantize the GGUF ``source`` to ``target`` as ``type`` (blocking: run it in a thread).
    ``progress(done, total)`` is called per tensor from llama.cpp's thread."""
    import llama_cpp

    ftype = _ftype(type)
    src, dst = Path(source).expanduser(), Path(target).expanduser()
    if not src.is_file():
        raise QuantizeError(f"no model file at {src}")
    try:
        header = read_gguf(src)
    except HeaderError as exc:
        raise QuantizeError(f"{src}: {exc}; only GGUF files can be quantized here") from None
    if dst.exists() and not force:
        raise QuantizeError(f"{dst} exists; pass --force to replace it")
    if dst.resolve() == src.resolve():
        raise QuantizeError("the target must differ from the source")
    dst.parent.mkdir(parents=True, exist_ok=True)
    partial = dst.with_name(dst.name + ".partial")
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype
    params.nthread = threads or os.cpu_count() or 1
    params.allow_requantize = True  # a quantized source is allowed, at a cost in quality
    started = time.perf_counter()
    with _lock, _tensor_progress(progress):
        try:
            code = llama_cpp.llama_model_quantize(
                str(src).encode(), str(partial).encode(), ctypes.byref(params)
            )
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
    if code != 0 or not partial.is_file():
        partial.unlink(missing_ok=True)
        raise QuantizeError(f"llama.cpp could not quantize {src.name} to {type} (code {code})")
    os.replace(partial, dst)
    return QuantizeResult(
        src, dst, type.upper(), header.quantization, src.stat().st_size, dst.stat().st_size,
        time.perf_counter() - started,
    )  # fmt: skip


class _tensor_progress:
    """Route llama.cpp's log to ``progress`` (per-tensor lines) while quantizing."""

    def __init__(self, progress: Callable[[int, int], None] | None) -> None:
        self.progress = progress
        self.callback: object = None

    def __enter__(self) -> None:
        import llama_cpp

        def on_log(level: int, text: bytes, _user: ctypes.c_void_p) -> None:
            match = _TENSOR_LINE.search(text or b"")
            if match and self.progress is not None:
                self.progress(int(match[1]), int(match[2]))

        self.callback = llama_cpp.llama_log_callback(on_log)
        llama_cpp.llama_log_set(self.callback, ctypes.c_void_p(0))

    def __exit__(self, *exc: object) -> None:
        import llama_cpp
        from llama_cpp import _logger

        llama_cpp.llama_log_set(_logger.llama_log_callback, ctypes.c_void_p(0))
