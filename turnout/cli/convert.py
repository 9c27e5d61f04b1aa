"""``turnout models convert SRC DST --to safetensors|onnx``: a GGUF as a Hugging Face folder
(transformers' own GGUF reader, dequantized), or a GGUF or Hugging Face folder as an
onnxruntime-genai folder (its model builder), with a progress bar."""

from __future__ import annotations

import contextlib
import io
import tempfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Annotated, Any

import typer

from .common import console, err_console, progress_bar
from .models import human_size, models_app

_TARGETS = ("safetensors", "onnx")


def _run(work: Callable[[Callable[[str, float], None]], Any], title: str) -> Any:
    """Run ``work(progress)`` in a thread under a Rich progress bar (steps 0..1)."""
    with progress_bar() as bar:
        task = bar.add_task(title, total=1.0)

        def progress(step: str, fraction: float) -> None:
            bar.update(task, completed=fraction, description=f"{title}: {step}")

        # transformers draws its own tqdm bars on stderr; this bar replaces them (its errors
        # arrive as exceptions, reported by the caller).
        with contextlib.redirect_stderr(io.StringIO()), ThreadPoolExecutor(1) as pool:
            return pool.submit(work, progress).result()


@models_app.command("convert")
def convert_command(
    source: Annotated[
        Path, typer.Argument(help="GGUF file (or, --to onnx, a Hugging Face folder).")
    ],
    target: Annotated[Path, typer.Argument(help="The folder to write.")],
    to: Annotated[str, typer.Option("--to", help="safetensors or onnx.")] = "safetensors",
    dtype: Annotated[
        str, typer.Option(help="Weights of a safetensors folder: bfloat16, float16, float32.")
    ] = "bfloat16",
    precision: Annotated[str, typer.Option(help="ONNX weights: int4, int8 or fp32.")] = "int4",
    force: Annotated[bool, typer.Option(help="Replace TARGET if it exists.")] = False,
) -> None:
    """Convert a model for another engine: a GGUF to a Hugging Face safetensors folder (the
    transformers engine), or to an ONNX folder (the onnx engine)."""
    from ..models.convert import ConvertError, gguf_to_hf

    if to not in _TARGETS:
        err_console.print(f"[red]--to must be one of {', '.join(_TARGETS)}, not {to!r}[/red]")
        raise typer.Exit(2)
    try:
        if to == "safetensors":
            result = _run(
                lambda p: gguf_to_hf(source, target, dtype, overwrite=force, progress=p),
                f"Converting {source.name}",
            )
            console.print(
                f"[green]{result.target}[/green]: {result.architecture or '?'} in {result.dtype}, "
                f"{human_size(result.target_bytes)} from {human_size(result.source_bytes)}, "
                f"in {result.seconds:.1f}s"
            )
            return
        _to_onnx(source, target, precision, force)
    except ConvertError as exc:
        err_console.print(f"[red]{exc}[/red]", soft_wrap=True)
        raise typer.Exit(2) from None


def _to_onnx(source: Path, target: Path, precision: str, force: bool) -> None:
    from ..models.convert import ConvertError, gguf_to_hf

    try:
        from ..models.onnx_build import OnnxBuildError, build_onnx
    except ImportError as exc:
        raise ConvertError(f"the ONNX builder is not available here: {exc}") from None

    def build(hf: Path) -> Any:
        return _run(
            lambda p: build_onnx(hf, target, precision, force=force, progress=lambda f, s: p(s, f)),
            f"Building ONNX ({precision})",
        )

    if target.exists() and not force:  # say so now, not after converting the GGUF first
        raise ConvertError(f"{target} exists; pass --force to replace it")
    try:
        if source.is_dir():
            result = build(source)
        else:  # a GGUF: through a temporary Hugging Face folder beside the target
            target.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(
                prefix=f".{target.name}.hf-", dir=target.parent
            ) as tmp:
                hf = Path(tmp) / "hf"
                _run(lambda p: gguf_to_hf(source, hf, progress=p), f"Converting {source.name}")
                result = build(hf)
    except OnnxBuildError as exc:
        raise ConvertError(str(exc)) from None
    console.print(
        f"[green]{result.target}[/green]: {result.architecture} {result.precision}, "
        f"{human_size(result.size)}, in {result.seconds:.1f}s"
    )
