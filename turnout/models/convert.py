"""GGUF to a Hugging Face folder (config, safetensors weights, tokenizer, generation config).

transformers reads GGUF files itself (``from_pretrained(folder, gguf_file=...)``, which needs
``accelerate``): the tokenizer is rebuilt from the file's vocabulary and every weight is unpacked
into a dense tensor of the dtype asked for (``GgufConfig(dequantize=True)``, so the result is a
plain model that ``save_pretrained`` writes, not a GGUF-backed one). The folder is written
under a hidden temporary name beside the destination and renamed into place only when complete,
so a failed or interrupted conversion leaves nothing a models directory would list. The GGUF's
chat template, when it has one, travels with the tokenizer; none is invented when it has none.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .formats import HeaderError, read_gguf

__all__ = ["DTYPES", "ConvertError", "ConvertResult", "gguf_to_hf", "missing_engine_packages"]

#: the dtypes a conversion writes; bfloat16 (Gemma's own) is half of float32's size
DTYPES = ("bfloat16", "float16", "float32")
#: what transformers needs to read a GGUF, and the pip extra that installs it
_PACKAGES = ("torch", "transformers", "accelerate")
EXTRA = "engines"


class ConvertError(Exception):
    """Bad arguments or a failed conversion, with a message for the user."""


@dataclass(frozen=True, slots=True)
class ConvertResult:
    source: Path
    target: Path
    dtype: str
    architecture: str | None
    source_bytes: int
    target_bytes: int
    seconds: float


def missing_engine_packages(names: tuple[str, ...] = _PACKAGES) -> list[str]:
    """The packages of ``names`` that cannot be imported here."""
    import importlib.util

    return [n for n in names if importlib.util.find_spec(n) is None]


def _require(names: tuple[str, ...] = _PACKAGES) -> None:
    missing = missing_engine_packages(names)
    if missing:
        raise ConvertError(
            f"converting a GGUF needs {', '.join(missing)}: pip install 'turnout[{EXTRA}]'"
        )


def _folder_size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def gguf_to_hf(
    gguf_path: str | Path,
    out_dir: str | Path,
    dtype: str = "bfloat16",
    *,
    overwrite: bool = False,
    progress: Callable[[str, float], None] | None = None,
) -> ConvertResult:
    """Write ``gguf_path`` as a Hugging Face folder at ``out_dir`` (blocking; seconds to a
    minute for a small model). ``progress`` gets a step's name and the fraction done (0..1)."""
    source, target = Path(gguf_path).expanduser(), Path(out_dir).expanduser()
    report = progress or (lambda _step, _fraction: None)
    if dtype not in DTYPES:
        raise ConvertError(f"unsupported dtype {dtype!r}; allowed: {', '.join(DTYPES)}")
    if not source.is_file():
        raise ConvertError(f"no GGUF file at {source}")
    try:
        header = read_gguf(source)
    except HeaderError as exc:
        raise ConvertError(f"{source.name} is not a readable GGUF: {exc}") from None
    if target.exists() and not overwrite:
        raise ConvertError(f"{target} already exists (--force, or overwrite=True, replaces it)")
    _require()
    started = time.perf_counter()
    report("reading the tokenizer", 0.0)
    partial = target.parent / f".{target.name}.partial-{os.getpid()}"
    shutil.rmtree(partial, ignore_errors=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        _convert(source, partial, dtype, report)
        report("moving into place", 0.95)
        if target.exists():  # overwrite: the old folder goes only once the new one is whole
            old = target.parent / f".{target.name}.old-{os.getpid()}"
            os.replace(target, old)
            os.replace(partial, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(partial, target)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    report("done", 1.0)
    return ConvertResult(
        source,
        target,
        dtype,
        header.architecture,
        source.stat().st_size,
        _folder_size(target),
        time.perf_counter() - started,
    )


def _convert(source: Path, out: Path, dtype: str, report: Callable[[str, float], None]) -> None:
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    transformers.utils.logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    folder, name = str(source.parent), source.name
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        report("unpacking the weights", 0.35)
        model = AutoModelForCausalLM.from_pretrained(
            folder,
            gguf_file=name,
            dtype=getattr(torch, dtype),
            quantization_config=GgufConfig(gguf_file=name, dequantize=True),
        )
    except (ValueError, KeyError, NotImplementedError) as exc:
        # transformers names what it cannot read (an architecture or tokenizer it lacks)
        raise ConvertError(f"transformers cannot read {name}: {str(exc)[:300]}") from exc
    report("writing safetensors", 0.75)
    with contextlib.suppress(AttributeError):
        del model.config._name_or_path  # the temporary folder's name means nothing later
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    del model
