"""Hugging Face folder → ONNX model for onnxruntime-genai (its model builder, CPU target).

The builder runs in a child Python (``python -m turnout.models.onnx_build``): it imports
PyTorch and transformers and holds the whole float model in memory, none of which the caller
should keep. The child writes into a hidden temporary folder beside the target, which is renamed
into place only when the builder finished and left ``genai_config.json`` and ``model.onnx``, so a
failed or interrupted build leaves nothing where a model is expected. The builder's output is
captured; a failure is reported with the exception it ended on and the last lines it printed.

One compatibility step: onnxruntime-genai 0.18's builder reads Gemma 3's RoPE bases from the
flat ``rope_theta`` / ``rope_local_base_freq`` attributes of transformers 4, while transformers 5
nests them per layer type (``rope_parameters = {"full_attention": ..., "sliding_attention":
...}``) and the builder stops on ``KeyError: 'rope_type'``. The child puts the same numbers back
in the flat form before building (see `_flatten_gemma3_rope`); nothing else is changed.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["PRECISIONS", "OnnxBuildError", "OnnxBuildResult", "build_onnx"]

#: precisions the builder supports for its CPU execution provider
PRECISIONS = ("int4", "int8", "fp32")
_WEIGHTS = ("*.safetensors", "*.bin", "*.pt")
#: what the model builder imports (besides numpy)
_BUILDER_PACKAGES = ("onnxruntime_genai", "torch", "transformers", "onnx", "onnx_ir", "safetensors")
_TAIL_LINES = 12
# The builder's progress lines, in the order it prints them.
_READING = re.compile(r"^Reading (embedding layer|layer (\d+)|final norm|LM head)")
_QUANTIZED = re.compile(r"complete quantization of /model/layers\.(\d+)/")
_WRITING = re.compile(r"^Saving ONNX model")  # int4/int8: weights are quantized as written
_SAVING = re.compile(r"^Saving (GenAI config|processing files)")
# Output that says nothing when a build fails: the quantizer's per-node log and progress bars.
_NOISE = re.compile(r"matmul_nbits_quantizer|\d+it/s|it/s\]|s/it\]|^\s*$")


class OnnxBuildError(Exception):
    """Bad arguments or a failed build, with a message for the user."""


@dataclass(frozen=True, slots=True)
class OnnxBuildResult:
    source: Path
    target: Path
    precision: str
    architecture: str
    size: int  # bytes of the built folder
    seconds: float


def _check_source(src: Path) -> tuple[str, int]:
    """The architecture and layer count of a Hugging Face folder, or a clear error."""
    if not src.is_dir():
        raise OnnxBuildError(f"no Hugging Face model folder at {src}")
    config_path = src / "config.json"
    if not config_path.is_file():
        raise OnnxBuildError(f"{src} is not a Hugging Face model folder: it has no config.json")
    try:
        config = json.loads(config_path.read_text())
    except (OSError, ValueError) as exc:
        raise OnnxBuildError(f"{config_path}: not readable JSON ({exc})") from None
    archs = config.get("architectures") if isinstance(config, dict) else None
    if not isinstance(archs, list) or not archs or not isinstance(archs[0], str):
        raise OnnxBuildError(f"{config_path} names no architecture ('architectures' is missing)")
    if not any(next(src.glob(pattern), None) for pattern in _WEIGHTS):
        raise OnnxBuildError(f"{src} holds no weights (no .safetensors or .bin file)")
    text = config.get("text_config") if isinstance(config.get("text_config"), dict) else config
    layers = text.get("num_hidden_layers")
    return archs[0], layers if isinstance(layers, int) and layers > 0 else 0


def _check_packages() -> None:
    import importlib.util

    missing = [p for p in _BUILDER_PACKAGES if importlib.util.find_spec(p) is None]
    if missing:
        raise OnnxBuildError(
            f"building ONNX models needs {', '.join(missing)}, which is not installed: "
            "pip install 'turnout[engines]'"
        )


def _remove_abandoned(dst: Path) -> None:
    """Temporary folders of builds whose process is gone (killed before it could clean up)."""
    for partial in dst.parent.glob(f".{dst.name}.partial-*"):
        pid = partial.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(partial, ignore_errors=True)


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return False  # an earlier build of this process that did not finish
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def build_onnx(
    hf_dir: str | Path,
    out_dir: str | Path,
    precision: str = "int4",
    *,
    force: bool = False,
    progress: Callable[[float, str], None] | None = None,
) -> OnnxBuildResult:
    """Build an onnxruntime-genai model folder at ``out_dir`` from the Hugging Face folder
    ``hf_dir`` for the CPU execution provider (blocking: minutes; run it in a thread).
    ``progress(fraction, stage)`` follows the builder's own output."""
    src, dst = Path(hf_dir).expanduser().resolve(), Path(out_dir).expanduser().resolve()
    if precision not in PRECISIONS:
        raise OnnxBuildError(
            f"unsupported precision {precision!r} for the CPU execution provider; "
            f"allowed: {', '.join(PRECISIONS)}"
        )
    _check_packages()
    architecture, layers = _check_source(src)
    if dst.exists() and not force:
        raise OnnxBuildError(f"{dst} exists; pass --force to replace it")
    if dst == src or src in dst.parents:
        raise OnnxBuildError("the target folder must be outside the source folder")
    dst.parent.mkdir(parents=True, exist_ok=True)
    _remove_abandoned(dst)
    partial = dst.with_name(f".{dst.name}.partial-{os.getpid()}")
    started = time.perf_counter()
    if progress is not None:
        progress(0.0, "starting the builder")
    try:
        _run_builder(src, partial, precision, layers, progress)
        for needed in ("genai_config.json", "model.onnx"):
            if not (partial / needed).is_file():
                raise OnnxBuildError(f"the ONNX builder finished but wrote no {needed}")
        shutil.rmtree(partial / ".cache", ignore_errors=True)
        if dst.exists():  # force: the old model goes only once the new one is complete
            shutil.rmtree(dst)
        os.replace(partial, dst)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    size = sum(p.stat().st_size for p in dst.rglob("*") if p.is_file())
    if progress is not None:
        progress(1.0, "done")
    return OnnxBuildResult(src, dst, precision, architecture, size, time.perf_counter() - started)


def _run_builder(
    src: Path,
    out: Path,
    precision: str,
    layers: int,
    progress: Callable[[float, str], None] | None,
) -> None:
    """Run the child builder, turning its output into progress and, on failure, an error."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "turnout.models.onnx_build", str(src), str(out), precision]
    tail: deque[str] = deque(maxlen=_TAIL_LINES)
    steps = max(layers, 1) + 2  # embedding, layers, LM head
    quantizing = precision != "fp32"
    with subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True, errors="replace"
    ) as child:
        try:
            assert child.stdout is not None
            for raw in child.stdout:
                for line in raw.replace("\r", "\n").splitlines():
                    if not _NOISE.search(line):
                        tail.append(line.rstrip())
                    if progress is not None:
                        _report(line, steps, quantizing, progress)
            code = child.wait()
        except BaseException:
            child.kill()  # interrupted: no orphan builder keeps writing
            raise
    if code != 0:
        raise OnnxBuildError(_failure(src, code, list(tail)))


def _report(
    line: str, steps: int, quantizing: bool, progress: Callable[[float, str], None]
) -> None:
    # Reading the weights is the first half of the work (all of it at fp32); quantizing the
    # second. Saving takes seconds.
    share = 0.5 if quantizing else 0.95
    if match := _READING.search(line):
        what = match[1]
        done = {"embedding layer": 1, "final norm": steps - 1, "LM head": steps}.get(what)
        progress(share * (done if done else int(match[2]) + 2) / steps, "reading weights")
    elif _WRITING.search(line):
        progress(share, "quantizing" if quantizing else "writing")
    elif quantizing and (match := _QUANTIZED.search(line)):
        progress(0.5 + 0.45 * (int(match[1]) + 1) / (steps - 1), "quantizing")
    elif _SAVING.search(line):
        progress(0.96, "saving")


def _failure(src: Path, code: int, tail: list[str]) -> str:
    last = next(
        (line for line in reversed(tail) if re.match(r"^[A-Za-z_][\w.]*(Error|Exception)\b", line)),
        "",
    )
    if "is not currently supported" in last:
        return f"onnxruntime-genai's model builder does not support the model in {src}: {last}"
    detail = "\n".join(tail)
    return (
        f"onnxruntime-genai's model builder failed on {src} (exit code {code})"
        f"{': ' + last if last else ''}\n--- last lines of its output ---\n{detail}"
    )


# The child process.


def _flatten_gemma3_rope(config: Any) -> None:
    """Gemma 3's per-layer-type RoPE parameters (transformers 5) in the flat form the builder
    reads (transformers 4): the global base as ``rope_theta`` with the full-attention
    parameters, the sliding-window layers' base as ``rope_local_base_freq``."""
    params = getattr(config, "rope_parameters", None)
    archs = getattr(config, "architectures", None) or [""]
    if not (isinstance(params, dict) and str(archs[0]).startswith("Gemma3")):
        return
    if "rope_type" in params or "full_attention" not in params:
        return
    full = dict(params["full_attention"])
    local = params.get("sliding_attention") or full
    config.rope_theta = full["rope_theta"]
    config.rope_local_base_freq = local["rope_theta"]
    config.rope_parameters = full


def _child(src: str, out: str, precision: str) -> None:  # pragma: no cover - a subprocess
    from importlib import import_module

    builder = import_module("onnxruntime_genai.models.builder")
    cache = os.path.join(out, ".cache")
    options = builder.parse_extra_options(None, src, out, precision, "cpu", cache, [])
    _flatten_gemma3_rope(options["hf_details"]["hf_config"])
    builder.create_model(None, src, out, precision, "cpu", cache, **options)


if __name__ == "__main__":  # pragma: no cover - run by _run_builder
    _child(*sys.argv[1:4])
