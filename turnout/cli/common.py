"""What every command module shares: the Typer `app` they add their commands to, the consoles,
the common options, configuration loading and the progress bar. Kept apart from the package's
``__init__``, which imports the command modules, so that no command module imports it back."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

from ..config import Config, load_config
from ..errors import ConfigError

__all__ = [
    "PIPE_WIDTH",
    "ConfigOption",
    "UrlOption",
    "app",
    "console",
    "err_console",
    "load",
    "progress_bar",
]

app = typer.Typer(
    name="turnout",
    help="A local-first LLM gateway: one OpenAI-compatible API in front of every runtime.",
    no_args_is_help=True,
    add_completion=False,
)
console = Console()
err_console = Console(stderr=True)
#: the width of output that is not a terminal (piped, captured), unless COLUMNS says: wide enough
#: that no table, endpoint or figure is cut or wrapped (a table is only as wide as its cells)
PIPE_WIDTH = 4096


@app.callback()
def _output() -> None:
    # Rich cuts what is not a terminal to 80 columns: an endpoint loses its port, "291.5 MB"
    # wraps. A terminal keeps its own width.
    columns = os.environ.get("COLUMNS", "")
    for out in (console, err_console):
        if columns.isdigit():  # said outright: kept, even by a terminal
            out.width = int(columns)
        elif not out.is_terminal:
            out.width = PIPE_WIDTH


ConfigOption = Annotated[
    Path | None, typer.Option("--config", "-c", help="YAML configuration file (or TURNOUT_CONFIG).")
]
UrlOption = Annotated[str, typer.Option("--url", help="Address of a running gateway.")]


def progress_bar(*, count: bool = False) -> Any:
    """The progress bar of every long command: description, bar, percentage (or done/total with
    ``count``), time elapsed; it disappears once the work is done."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TaskProgressColumn,
        TimeElapsedColumn,
    )

    return Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn() if count else TaskProgressColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    )


def load(config: Path | None, host: str | None = None, port: int | None = None) -> Config:
    """The configuration, or exit 2 with the message naming the key at fault."""
    try:
        cfg = load_config(config)
    except ConfigError as exc:
        err_console.print(f"[red]{escape(str(exc))}[/red]", soft_wrap=True)
        raise typer.Exit(2) from None
    updates: dict[str, Any] = {}
    if host is not None:
        updates["host"] = host
    if port is not None:
        updates["port"] = port
    if updates:
        cfg = cfg.model_copy(update={"server": cfg.server.model_copy(update=updates)})
    return cfg
