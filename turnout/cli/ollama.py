"""``turnout ollama``: list, show, ps, pull and delete the models of configured Ollama backends.

The commands talk to the backend named by ``--provider`` (default: the only Ollama provider
configured, e.g. through ``OLLAMA_BASE_URL``). ``pull`` and ``delete`` need
``LOCAL_LLM_ENABLE_PULL=true``, as they do through the gateway's HTTP API. These commands reach
the backend directly, not through a gateway, so a gateway's ``server.admin_key`` does not apply
to them (Ollama itself has no key).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer
from rich.progress import BarColumn, DownloadColumn, Progress, TaskID, TransferSpeedColumn
from rich.table import Table

from ..errors import GatewayError
from .common import ConfigOption, app, console, err_console, load
from .models import human_size

if TYPE_CHECKING:
    from ..providers.base import ModelStore

ollama_app = typer.Typer(help="Models of configured Ollama backends: list, show, ps, pull, delete.")
app.add_typer(ollama_app, name="ollama", no_args_is_help=True)

ProviderOption = Annotated[
    str | None, typer.Option("--provider", "-p", help="Ollama provider (default: the only one).")
]
T = TypeVar("T")


@contextlib.asynccontextmanager
async def _backend(name: str | None, config: Any) -> AsyncIterator[ModelStore]:
    from ..providers import build_provider, provider_class
    from ..providers.base import ModelStore

    cfg = load(config)
    ollamas = {  # the backends whose models are managed through their API (ModelStore)
        n: p
        for n, p in cfg.providers.items()
        if p.enabled and issubclass(provider_class(p.dialect), ModelStore)
    }
    if name is None and len(ollamas) == 1:
        name = next(iter(ollamas))
    if name not in ollamas:
        known = ", ".join(ollamas) or "none (set OLLAMA_BASE_URL or add a provider of type ollama)"
        what = f"no Ollama provider named {name!r}" if name else "name one with --provider"
        err_console.print(f"[red]{what}; Ollama providers: {known}[/red]", soft_wrap=True)
        raise typer.Exit(2)
    provider = build_provider(name, ollamas[name])
    assert isinstance(provider, ModelStore)
    await provider.start()
    try:
        yield provider
    finally:
        await provider.close()


def _run(name: str | None, config: Any, work: Callable[[ModelStore], Awaitable[T]]) -> T:
    async def go() -> T:
        async with _backend(name, config) as provider:
            return await work(provider)

    try:
        return asyncio.run(go())
    except GatewayError as exc:
        err_console.print(f"[red]{exc.message}[/red]", soft_wrap=True)
        raise typer.Exit(1) from None


def _require_pull() -> None:
    from ..server.models import pull_enabled

    if not pull_enabled():
        err_console.print(
            "[red]pulling and deleting models is disabled; set LOCAL_LLM_ENABLE_PULL=true[/red]"
        )
        raise typer.Exit(2)


@ollama_app.command("list")
def list_command(provider: ProviderOption = None, config: ConfigOption = None) -> None:
    """Models installed on the Ollama backend (its /api/tags)."""
    reply = _run(provider, config, lambda p: p.tags())
    table = Table(title_justify="left")
    for column in ("name", "size", "family", "parameters", "quantization", "modified"):
        table.add_column(column)
    for model in reply.get("models", []):
        details = model.get("details") or {}
        table.add_row(
            model.get("name", "?"), human_size(model.get("size")), details.get("family", "-"),
            details.get("parameter_size", "-"), details.get("quantization_level", "-"),
            str(model.get("modified_at", ""))[:19],
        )  # fmt: skip
    console.print(table)


@ollama_app.command("ps")
def ps_command(provider: ProviderOption = None, config: ConfigOption = None) -> None:
    """Models the Ollama backend holds in memory now (its /api/ps)."""
    models = _run(provider, config, lambda p: p.ps())
    table = Table(title_justify="left")
    for column in ("name", "size", "in VRAM", "until"):
        table.add_column(column)
    for model in models:
        table.add_row(
            model.get("name", "?"), human_size(model.get("size")),
            human_size(model.get("size_vram")), str(model.get("expires_at", "-"))[:19],
        )  # fmt: skip
    console.print(table)


@ollama_app.command("show")
def show_command(
    model: Annotated[str, typer.Argument(help="Model name, e.g. llama3.2.")],
    provider: ProviderOption = None,
    config: ConfigOption = None,
) -> None:
    """Details, parameters and capabilities of one model (its /api/show)."""
    console.print_json(data=_run(provider, config, lambda p: p.show(model)))


@ollama_app.command("pull")
def pull_command(
    model: Annotated[str, typer.Argument(help="Model to pull, e.g. llama3.2:3b.")],
    provider: ProviderOption = None,
    config: ConfigOption = None,
) -> None:
    """Pull a model, with a progress bar per layer as Ollama reports it."""
    _require_pull()

    async def work(p: Any) -> str:
        with Progress(
            "[progress.description]{task.description}", BarColumn(), DownloadColumn(),
            TransferSpeedColumn(), console=console,
        ) as bar:  # fmt: skip
            tasks: dict[str, TaskID] = {}
            last = ""
            async for step in p.pull(model):
                last = str(step.get("status", ""))
                digest = step.get("digest")
                if digest and step.get("total"):
                    if digest not in tasks:
                        tasks[digest] = bar.add_task(f"pulling {digest[7:19]}", total=None)
                    bar.update(
                        tasks[digest], total=step["total"], completed=step.get("completed", 0)
                    )
                else:
                    bar.console.print(last)
            return last

    status = _run(provider, config, work)
    console.print(f"[green]{model}: {status}[/green]")


@ollama_app.command("delete")
def delete_command(
    model: Annotated[str, typer.Argument(help="Model to delete.")],
    provider: ProviderOption = None,
    config: ConfigOption = None,
) -> None:
    """Delete a model from the Ollama backend."""
    _require_pull()
    _run(provider, config, lambda p: p.delete(model))
    console.print(f"{model} deleted")
