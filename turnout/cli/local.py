"""``turnout doctor`` (this machine and what to run on it) and ``turnout bench-engines``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from .common import ConfigOption, app, console, err_console
from .models import DirOption, human_size, models_dir

TargetOption = Annotated[
    str, typer.Option("--target", help="What to favour: speed, balanced or quality.")
]


@app.command()
def doctor(
    directory: DirOption = None,
    config: ConfigOption = None,
    target: TargetOption = "balanced",
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Detect CPU cores, memory and CUDA/ROCm/Metal, then recommend engine settings and a
    quantization per model size and for each model in the models directory."""
    from ..models.directory import scan
    from ..models.hardware import (
        SIZES,
        advise,
        detect,
        gpu_advice,
        recommend_settings,
        size_recommendations,
    )  # fmt: skip

    if target not in ("speed", "balanced", "quality"):
        err_console.print(f"[red]--target must be speed, balanced or quality, not {target!r}[/red]")
        raise typer.Exit(2)
    hw = detect()
    settings = recommend_settings(hw)
    sizes = size_recommendations(hw, target)
    root = models_dir(directory, config)
    files = [m for m in scan(root) if m.header.parameters]
    local = [
        {"name": m.name, "has": m.header.quantization,
         **advise(float(m.header.parameters or 0), hw, target), **_gpu_layers(m)}
        for m in files
    ]  # fmt: skip
    cuda = [g for g in hw.gpus if g.kind == "cuda"]
    on_gpu = [gpu_advice(b * 1e9, cuda[0]) for b in SIZES] if cuda else []
    if json_out:
        report = {
            "hardware": hw.to_json(), "settings": settings, "sizes": sizes, "models": local,
            "gpu_sizes": on_gpu,
        }  # fmt: skip
        console.print_json(json.dumps(report))
        return
    _print_hardware(hw)
    console.print("\n[bold]Recommended engine settings[/bold] (per model, under models:)")
    for key, value in settings.items():
        if key not in ("device", "quantization"):
            console.print(f"  {key}: {json.dumps(value)}")
    console.print(f"  device: {settings['device']}; quantization: {settings['quantization']}")
    table = Table(title=f"\nQuantization by model size ({target})", title_justify="left")
    for column in ("model size", "quantization", "memory", "fits"):
        table.add_column(column)
    for row in sizes:
        table.add_row(
            f"{row['parameters_b']:g}B", row["quantization"] or "-",
            human_size(row["memory_bytes"]), "yes" if row["fits"] else "[red]no[/red]",
        )  # fmt: skip
    console.print(table)
    if on_gpu:
        _print_gpu_sizes(on_gpu, cuda[0])
    if local:
        _print_local(local, root)


def _gpu_layers(model: Any) -> dict[str, Any]:
    """What ``n_gpu_layers: auto`` would choose for a GGUF here now, and why."""
    if model.format != "gguf":
        return {}
    from ..providers.embedded.llama_engine import llama_offloads, resolve_gpu_layers
    from ..providers.embedded.settings import EmbeddedModel

    entry = EmbeddedModel(name=model.name, path=str(model.path), n_gpu_layers="auto")
    layers, why = resolve_gpu_layers(entry, model.path, llama_offloads())
    return {"n_gpu_layers_auto": layers, "n_gpu_layers_why": why}


def _print_gpu_sizes(rows: list[dict[str, Any]], gpu: Any) -> None:
    title = f"\nOn {gpu.name} (transformers engine; llama.cpp GGUF Q4_K_M)"
    table = Table(title=title, title_justify="left")
    for column in ("model size", "transformers", "memory", "llama.cpp n_gpu_layers"):
        table.add_column(column)
    for row in rows:
        t = row["transformers"]
        how = f"dtype {t['dtype']}" if "dtype" in t else "bitsandbytes"
        setting = f"{t['weights']} ({how}), max_batch 64" if t["fits"] else "does not fit"
        table.add_row(
            f"{row['parameters_b']:g}B", setting,
            human_size(t.get("memory_bytes")) if t["fits"] else "-",
            str(row["llama_cpp"]["n_gpu_layers"]),
        )  # fmt: skip
    console.print(table)


def _print_hardware(hw: Any) -> None:
    console.print("[bold]This machine[/bold]")
    console.print(f"  system: {hw.system} {hw.machine}")
    console.print(
        f"  CPU: {hw.cpu or '?'}, {hw.physical_cores} cores ({hw.logical_cores} threads), "
        f"{' '.join(hw.cpu_flags) or 'no SIMD flags read'}"
    )
    console.print(
        f"  memory: {human_size(hw.memory_total)} total, {human_size(hw.memory_available)} free"
    )
    if not hw.gpus:
        console.print("  GPU: none found (CUDA, ROCm, Metal)")
    for g in hw.gpus:
        memory = f"{human_size(g.memory)} total" if g.memory else "memory unknown"
        if g.free is not None:
            memory += f", {human_size(g.free)} free"
        extra = [f"driver {g.driver}"] if g.driver else []
        if g.compute_capability:
            extra.append(f"compute capability {g.compute_capability}")
        label = f"GPU {g.index}" if g.kind == "cuda" else "GPU"
        console.print(f"  {label}: {g.kind.upper()} {g.name}, {memory}; {', '.join(extra) or '-'}")
    offload = "yes" if hw.gpu_offload else "no (CPU build)"
    console.print(f"  llama.cpp GPU offload: {offload}")


def _print_local(local: list[dict[str, Any]], root: Path) -> None:
    table = Table(title=f"\nModels in {root}", title_justify="left")
    for column in (
        "model",
        "parameters",
        "has",
        "recommended",
        "memory",
        "n_gpu_layers: auto",
        "note",
    ):
        table.add_column(column)
    for row in local:
        note = "" if row["fits"] else "[red]too large for this machine[/red]"
        auto = row.get("n_gpu_layers_auto")
        table.add_row(
            row["name"], f"{row['parameters_b']:g}B", row.get("has") or "-",
            row["quantization"] or "-", human_size(row["memory_bytes"]),
            "-" if auto is None else f"{auto}: {row['n_gpu_layers_why']}", note,
        )  # fmt: skip
    console.print(table)


@app.command("bench-engines")
def bench_engines_command(
    model: Annotated[
        str, typer.Argument(help="GGUF file, model folder, or a model name in the models dir.")
    ],
    directory: DirOption = None,
    config: ConfigOption = None,
    max_tokens: Annotated[int, typer.Option(help="Tokens generated per run.")] = 100,
    runs: Annotated[int, typer.Option(help="Generations per engine (the median is shown).")] = 3,
    n_ctx: Annotated[int, typer.Option(help="Context size.")] = 2048,
    threads: Annotated[int | None, typer.Option(help="Threads (default: all cores).")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Load time and tokens per second of MODEL on each engine that can run it (a GGUF:
    llama.cpp in-process, a managed llama-server, llama-cpp-python's managed server; a
    safetensors folder: transformers; an ONNX folder: onnxruntime-genai)."""
    import asyncio

    from ..models.directory import find
    from ..providers.embedded.bench import bench_engines

    path = Path(model).expanduser()
    if not path.exists():
        found = find(models_dir(directory, config), model)
        if found is None:
            err_console.print(f"[red]no model file {model!r} (nor a model of that name)[/red]")
            raise typer.Exit(2)
        path = found.path
    with console.status("Benchmarking...") as status:
        results = asyncio.run(
            bench_engines(
                path, max_tokens=max_tokens, runs=runs, n_ctx=n_ctx, threads=threads,
                progress=lambda name: status.update(f"Benchmarking {name}..."),
            )
        )  # fmt: skip
    if json_out:
        console.print_json(json.dumps([r.to_json() for r in results]))
        return
    title = f"{path.name}: {max_tokens} tokens a reply; reply s and tokens/s: median of {runs}"
    table = Table(title=title, title_justify="left")
    for column in ("engine", "load s", "first reply s", "reply s", "tokens/s", "note"):
        table.add_column(column, justify="left" if column in ("engine", "note") else "right")
    for r in results:
        median = sorted(r.generation_seconds)[len(r.generation_seconds) // 2] if r.ok else None
        table.add_row(
            r.engine,
            f"{r.load_seconds:.2f}" if r.load_seconds is not None else "-",
            f"{r.first_seconds:.2f}" if r.first_seconds is not None else "-",
            f"{median:.2f}" if median is not None else "-",
            f"{r.tokens_per_second:.1f}" if r.tokens_per_second else "-",
            r.error or "",
        )
    console.print(table)
