"""``turnout models``: list the models directory, quantize, load and unload, download."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from .common import ConfigOption, UrlOption, app, console, err_console, load, progress_bar

if TYPE_CHECKING:
    from ..models.directory import ModelFile

models_app = typer.Typer(help="Local models: list, quantize, load, unload, download.")
app.add_typer(models_app, name="models", no_args_is_help=True)

DirOption = Annotated[
    Path | None, typer.Option("--dir", "-d", help="Models directory (default: models_dir).")
]


def human_size(size: int | float | None) -> str:
    if size is None:
        return "-"
    value = float(size)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(value) < 1000 or unit == "TB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{value:.1f} TB"  # pragma: no cover - the loop always returns


def models_dir(directory: Path | None, config: Path | None) -> Path:
    return directory if directory is not None else Path(load(config).models_dir)


@models_app.command("list")
def list_models(
    directory: DirOption = None,
    config: ConfigOption = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """List the models in the models directory with size, format, architecture, parameters
    and quantization (read from the files' headers)."""
    from ..models.directory import scan
    from ..providers.embedded import default_engine

    root = models_dir(directory, config)
    with console.status(f"Reading model headers in {root}..."):
        found = scan(root)
        default = _default_model(config)
    if json_out:
        import json

        listing = [{**m.to_json(), "engine": default_engine(m)} for m in found]
        if default is not None:
            listing.append(
                {**default.to_json(), "engine": default_engine(default), "default": True}
            )
        console.print_json(json.dumps(listing))
        return
    if not found and default is None:
        err_console.print(f"no models in {root} (.gguf, .safetensors, .onnx)")
        return
    title = f"Models in {root}" + (", and the embedded default" if default else "")
    table = Table(title=title, title_justify="left")
    columns = ("name", "format", "engine", "size", "architecture", "parameters", "quantization")
    for column in (*columns, "ctx"):
        table.add_column(column, justify="right" if column in ("size", "ctx") else "left")
    for model in [*found, *([default] if default else [])]:
        h = model.header
        table.add_row(
            f"{model.name} (default)" if model is default else model.name,
            model.format,
            default_engine(model) or "-",
            human_size(model.size),
            h.architecture or ("[red]unreadable[/red]" if model.error else "-"),
            h.parameter_label or "-",
            h.quantization or "-",
            str(h.context_length or "-"),
        )
    console.print(table)
    if default is not None:
        console.print(
            f"[dim]{default.name} (default): the embedded default, served with nothing else "
            "configured and beside what is, unless embedded: false[/dim]"
        )
    for model in found:
        if model.error:
            err_console.print(f"[red]{model.name}: {model.error}[/red]")


def _default_model(config: Path | None) -> ModelFile | None:
    """The embedded default's model file (from its PyPI package) when the configuration serves
    it and it is installed; None otherwise (a configuration that does not load serves none)."""
    from ..config import load_config
    from ..errors import ConfigError
    from ..gateway import served_configs
    from ..models.directory import describe
    from ..providers.embedded import DEFAULT_MODEL, default_available, default_model_path

    try:
        cfg = load_config(config)
    except ConfigError:
        return None
    if "embedded" in cfg.providers or "embedded" not in served_configs(cfg):
        return None
    if not default_available():
        return None
    model = describe(default_model_path())
    model.name = DEFAULT_MODEL
    return model


@models_app.command("quantize")
def quantize_command(
    source: Annotated[Path, typer.Argument(help="GGUF file to quantize.")],
    target: Annotated[Path, typer.Argument(help="Where to write the quantized GGUF.")],
    type_: Annotated[
        str, typer.Option("--type", "-t", help="Quantization type, e.g. Q4_K_M, Q8_0.")
    ] = "Q4_K_M",
    threads: Annotated[int | None, typer.Option(help="Threads (default: all cores).")] = None,
    force: Annotated[bool, typer.Option(help="Replace TARGET if it exists.")] = False,
) -> None:
    """Quantize a GGUF file with llama.cpp, showing per-tensor progress and the size change."""
    from concurrent.futures import ThreadPoolExecutor

    from ..models.quantize import QuantizeError, quantize

    with progress_bar(count=True) as bar:
        task = bar.add_task(f"Quantizing {source.name} to {type_.upper()}", total=None)

        def progress(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        with ThreadPoolExecutor(1) as pool:
            future = pool.submit(
                quantize, source, target, type_, threads=threads, force=force, progress=progress
            )
            try:
                result = future.result()
            except QuantizeError as exc:
                err_console.print(f"[red]{exc}[/red]", soft_wrap=True)
                raise typer.Exit(2) from None
    if result.source_type and result.source_type not in ("F32", "F16", "BF16"):
        err_console.print(
            f"[yellow]note: the source was already {result.source_type}; requantizing cannot "
            "restore precision it lost[/yellow]"
        )
    console.print(
        f"[green]{result.target}[/green]: {result.type}, {human_size(result.target_bytes)} "
        f"from {human_size(result.source_bytes)} ({result.source_type or '?'}), "
        f"{result.ratio:.2f}x the size, in {result.seconds:.1f}s"
    )


AdminKeyOption = Annotated[
    str | None,
    typer.Option(
        "--admin-key",
        envvar="TURNOUT_SERVER__ADMIN_KEY",
        help="The gateway's server.admin_key, sent as 'Authorization: Bearer'.",
        show_default=False,
    ),
]


async def _http(
    method: str, url: str, body: object = None, admin_key: str | None = None
) -> tuple[int, object]:
    import aiohttp

    headers = {"Authorization": f"Bearer {admin_key}"} if admin_key else None
    async with aiohttp.ClientSession() as http:
        try:
            async with http.request(method, url, json=body, headers=headers) as resp:
                return resp.status, await resp.json(content_type=None)
        except aiohttp.ClientConnectionError as exc:
            err_console.print(f"[red]cannot reach the gateway at {url}: {exc}[/red]")
            raise typer.Exit(1) from None


def _fail(status: int, reply: object) -> None:
    error = reply.get("error", {}) if isinstance(reply, dict) else {}
    message = error.get("message") if isinstance(error, dict) else None
    err_console.print(f"[red]HTTP {status}: {message or reply}[/red]", soft_wrap=True)
    raise typer.Exit(1)


@models_app.command("load")
def load_command(
    model: Annotated[str, typer.Argument(help="Model to load (provider/model or a name).")],
    url: UrlOption = "http://127.0.0.1:8400",
    keep_alive: Annotated[
        str | None, typer.Option(help="Keep loaded this long when idle ('10m', '-1': always).")
    ] = None,
    admin_key: AdminKeyOption = None,
) -> None:
    """Load a model of a running gateway's embedded engine, showing llama.cpp's progress."""
    asyncio.run(_load(url.rstrip("/"), model, keep_alive, admin_key))


async def _load(base: str, model: str, keep_alive: str | None, admin_key: str | None) -> None:
    body = {"keep_alive": keep_alive} if keep_alive is not None else {}
    request = asyncio.ensure_future(
        _http("POST", f"{base}/v1/models/{model}/load", body, admin_key)
    )
    with progress_bar() as bar:
        task = bar.add_task(f"Loading {model}", total=1.0)
        while not request.done():
            await asyncio.wait({request}, timeout=0.2)
            status, listing = await _http("GET", f"{base}/v1/local/ps")
            for entry in listing.get("data", []) if isinstance(listing, dict) else []:
                if entry["id"] == model or entry["id"].endswith("/" + model):
                    state = entry["state"]
                    bar.update(task, completed=entry.get("progress") or 0.0)
                    bar.update(task, description=f"{state.capitalize()} {entry['id']}")
    status, reply = request.result()
    if status != 200 or not isinstance(reply, dict):
        _fail(status, reply)
        return
    console.print(f"[green]{reply['id']} loaded[/green] in {reply['load_seconds']:.2f}s")


@models_app.command("unload")
def unload_command(
    model: Annotated[str, typer.Argument(help="Model to unload.")],
    url: UrlOption = "http://127.0.0.1:8400",
    admin_key: AdminKeyOption = None,
) -> None:
    """Unload a model once the requests running on it are done."""
    status, reply = asyncio.run(
        _http("POST", f"{url.rstrip('/')}/v1/models/{model}/unload", None, admin_key)
    )
    if status != 200 or not isinstance(reply, dict):
        _fail(status, reply)
        return
    word = "unloaded" if reply["state"] == "unloaded" else "was not loaded"
    console.print(f"{reply['id']} {word}")


@models_app.command("ps")
def ps_command(
    url: UrlOption = "http://127.0.0.1:8400",
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Models loaded, loading (with progress) or waiting for room in a running gateway."""
    status, reply = asyncio.run(_http("GET", f"{url.rstrip('/')}/v1/local/ps"))
    if status != 200 or not isinstance(reply, dict):
        _fail(status, reply)
        return
    if json_out:
        console.print_json(data=reply)
        return
    table = Table(title="Local models in memory", title_justify="left")
    for column in ("model", "state", "progress", "running", "waiting", "memory", "expires"):
        table.add_column(column)
    now = time.time()
    for entry in reply["data"]:
        table.add_row(
            entry["id"],
            entry["state"],
            f"{entry.get('progress', 0) * 100:.0f}%",
            str(entry.get("active", 0)),
            str(entry.get("waiting", 0)),
            human_size(entry.get("estimate_bytes")),
            _expiry(entry, now),
        )
    console.print(table)


def _expiry(entry: dict[str, object], now: float) -> str:
    if entry["state"] != "loaded":
        return "-"
    expires = entry.get("expires_at")
    if isinstance(expires, int | float):
        return f"in {max(0.0, expires - now):.0f}s"
    return "never" if entry.get("keep_alive") is None else "when idle"


@models_app.command("download")
def download_command(
    repo: Annotated[str, typer.Argument(help="Hugging Face repository, e.g. org/model-GGUF.")],
    file: Annotated[
        str | None, typer.Argument(help="File in the repository (default: the one to use).")
    ] = None,
    revision: Annotated[
        str | None, typer.Option(help="Branch, tag or commit (default: main).")
    ] = None,
    directory: DirOption = None,
    cache_dir: Annotated[
        Path | None, typer.Option(help="huggingface_hub cache (default: its own).")
    ] = None,
    config: ConfigOption = None,
) -> None:
    """Download a model file from the Hugging Face Hub (HF_ENDPOINT, HF_TOKEN) into the models
    directory: cached, resumed when cut off, checked against the Hub's checksum."""
    from concurrent.futures import ThreadPoolExecutor

    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    from ..models.download import DownloadError, DownloadProgress, download

    root = models_dir(directory, config)
    with Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=True,
    ) as bar:
        task = bar.add_task(f"Resolving {repo}", total=None)

        def progress(state: DownloadProgress) -> None:
            label = {"downloading": "Downloading", "verifying": "Verifying", "placing": "Placing"}
            what = f"{label.get(state.state, state.state.capitalize())} {state.file or repo}"
            bar.update(task, description=what, total=state.total, completed=state.completed)

        with ThreadPoolExecutor(1) as pool:
            future = pool.submit(
                download, repo, file, models_dir=root, revision=revision,
                cache_dir=cache_dir, progress=progress,
            )  # fmt: skip
            try:
                result = future.result()
            except DownloadError as exc:
                err_console.print(f"[red]{exc}[/red]", soft_wrap=True)
                raise typer.Exit(1) from None
    how = "from the cache" if result.cached else "downloaded"
    console.print(
        f"[green]{result.path}[/green]: {human_size(result.total)} {how}, "
        f"{'checksum verified' if result.verified else 'no checksum listed'} "
        f"({repo}@{(result.commit or '')[:12]})",
        soft_wrap=True,
    )
