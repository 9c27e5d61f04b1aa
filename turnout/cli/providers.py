"""Commands about backends: ``discover`` (find local runtimes by their default ports), ``health``
(probe the configured backends; exit 1 if any is down) and ``monitor`` (a live table of a running
gateway's backends)."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.live import Live
from rich.markup import escape
from rich.table import Table

from .common import ConfigOption, UrlOption, app, console, err_console, load

TimeoutOption = Annotated[float, typer.Option("--timeout", help="Seconds each probe may take.")]


def _status(ok: bool | None) -> str:
    return {True: "[green]up[/green]", False: "[red]down[/red]", None: "[dim]-[/dim]"}[ok]


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _models(names: list[str] | tuple[str, ...], limit: int = 3) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" (+{len(names) - limit})" if len(names) > limit else "") or "-"


@app.command()
def discover(
    hosts: Annotated[
        list[str] | None,
        typer.Argument(help="Hosts to probe, or host:port (default: this machine)."),
    ] = None,
    port: Annotated[
        list[int] | None, typer.Option("--port", "-p", help="Port to probe (repeatable).")
    ] = None,
    timeout: TimeoutOption = 1.0,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    yaml_out: Annotated[
        bool, typer.Option("--yaml", help="Print a providers: section for turnout.yaml.")
    ] = False,
) -> None:
    """Find runtimes on their default ports (every preset's), name each by its signature
    endpoints and list its models. Exit 1 when nothing answers."""
    from ..providers.discovery import DEFAULT_PORTS, describe, discover as run

    targets = hosts or ["127.0.0.1"]
    ports = port or list(DEFAULT_PORTS)
    with console.status(f"Probing {', '.join(targets)} on {len(ports)} ports..."):
        try:
            found = asyncio.run(run(targets, ports, timeout=timeout))
        except ValueError as exc:
            err_console.print(f"[red]{escape(str(exc))}[/red]")
            raise typer.Exit(2) from None
    if json_out:
        console.print_json(json.dumps([describe(f) for f in found]))
    elif yaml_out:
        _print_yaml(found)
    if not found:
        err_console.print(f"no runtime answers on {', '.join(targets)} ({_ports(ports)})")
        raise typer.Exit(1)
    if json_out or yaml_out:
        return
    table = Table(title="Runtimes found", title_justify="left")
    for column in ("endpoint", "runtime", "type", "version", "models", "note"):
        table.add_column(column)
    for f in found:
        table.add_row(
            f.endpoint, f.label, f.runtime, f.version or "-", _models(list(f.models)), f.detail
        )
    console.print(table)
    console.print(
        "[dim]Use one with `type` and `endpoint` under providers: in turnout.yaml, or set "
        "discovery: true to register them at start-up.[/dim]"
    )


def _ports(ports: list[int]) -> str:
    return f"ports {', '.join(map(str, ports))}" if len(ports) <= 6 else f"{len(ports)} ports"


def _print_yaml(found: list[Any]) -> None:
    lines = ["providers:"]
    seen: set[str] = set()
    for f in found:
        name = f.runtime if f.runtime not in seen else f"{f.runtime}-{f.port}"
        seen.add(name)
        lines += [f"  {name}:", f"    type: {f.runtime}", f"    endpoint: {f.endpoint}"]
    console.print("\n".join(lines), markup=False, highlight=False)


async def _check(
    config_path: Path | None, names: list[str], timeout: float
) -> list[dict[str, Any]]:
    from ..providers import build_provider
    from ..providers.base import LocalModels

    cfg = load(config_path)
    configured = {n: c for n, c in cfg.providers.items() if c.enabled}
    unknown = [n for n in names if n not in configured]
    if unknown:
        err_console.print(
            f"[red]no provider named {', '.join(map(repr, unknown))}; configured: "
            f"{', '.join(configured) or 'none'}[/red]"
        )
        raise typer.Exit(2)
    if not configured:
        err_console.print("[red]no provider is configured (providers: in turnout.yaml)[/red]")
        raise typer.Exit(2)
    chosen = {n: configured[n] for n in names} if names else configured
    providers = [build_provider(n, c) for n, c in chosen.items()]

    async def one(provider: Any) -> dict[str, Any]:
        row = {
            "name": provider.name,
            "type": provider.config.type,
            "endpoint": getattr(provider, "base_url", None),
            "ok": None,
            "latency_ms": None,
            "models": [],
            "detail": "",
        }
        if isinstance(provider, LocalModels):  # in-process: nothing to reach from here
            return {**row, "detail": "in-process engine, runs inside `turnout serve`"}
        await provider.start()
        try:
            try:
                health = await asyncio.wait_for(provider.probe(), timeout)
            except TimeoutError:
                return {**row, "ok": False, "detail": f"no answer within {timeout:g}s"}
            row.update(ok=health.ok, latency_ms=health.latency_ms, detail=health.detail)
            if health.ok:
                try:
                    models = await asyncio.wait_for(provider.list_models(), timeout)
                    row["models"] = [m.id for m in models]
                except Exception as exc:  # the probe passed; a model list is a bonus
                    row["detail"] = getattr(exc, "message", None) or str(exc)
            return row
        finally:
            await provider.close()

    return list(await asyncio.gather(*(one(p) for p in providers)))


@app.command()
def health(
    provider: Annotated[
        list[str] | None,
        typer.Option("--provider", help="Provider to check (repeatable; default: all)."),
    ] = None,
    all_: Annotated[bool, typer.Option("--all", help="Check every configured provider.")] = False,
    config: ConfigOption = None,
    url: Annotated[
        str | None,
        typer.Option("--url", help="Ask a running gateway (its health monitor) instead."),
    ] = None,
    timeout: TimeoutOption = 3.0,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Probe the configured backends concurrently and show each one's status, latency and
    models. Exit 1 when any checked backend is down."""
    names = [] if all_ else list(provider or [])
    if url is not None:
        rows = [_row(p) for p in _fetch(url, timeout) if not names or p["name"] in names]
    else:
        with console.status("Probing backends..."):
            rows = asyncio.run(_check(config, names, timeout))
    if json_out:
        console.print_json(json.dumps(rows))
    else:
        table = Table(title="Backends", title_justify="left")
        for column in ("provider", "type", "endpoint", "status", "latency ms", "models", "detail"):
            table.add_column(column)
        for row in rows:
            table.add_row(
                row["name"],
                row["type"],
                row["endpoint"] or "-",
                _status(row["ok"]),
                _ms(row["latency_ms"]),
                _models(row["models"]),
                escape(row["detail"] or ""),
            )
        console.print(table)
    if any(row["ok"] is False for row in rows):
        raise typer.Exit(1)


def _row(entry: dict[str, Any]) -> dict[str, Any]:
    """A ``GET /v1/providers`` entry as a `health` row (a local provider's model states go in
    its detail, and under ``model_states`` in JSON)."""
    probed = entry.get("health") or {}
    states = entry.get("model_states")
    detail = "; ".join(d for d in (probed.get("detail"), _lifecycle(states)) if d)
    row = {
        "name": entry["name"],
        "type": entry["type"],
        "endpoint": entry.get("endpoint"),
        "ok": entry.get("status") == "up",
        "latency_ms": entry.get("latency_ms"),
        "models": entry.get("models") or [],
        "detail": detail,
    }
    if states is not None:
        row["model_states"] = states
    return row


def _lifecycle(states: list[dict[str, Any]] | None, now: float | None = None) -> str:
    """A local provider's models in memory, e.g. ``a loaded (unloads in 290s), b loading 50%
    (2 waiting)``; empty for a provider that loads models on its own."""
    if states is None:
        return ""
    if not states:
        return "no model loaded"
    now = time.time() if now is None else now
    parts = []
    for s in states:
        text = f"{s['name']} {s['state']}"
        if s["state"] in ("loading", "queued"):
            text += f" {float(s.get('progress') or 0) * 100:.0f}%"
        notes = []
        if s.get("waiting"):
            notes.append(f"{s['waiting']} waiting")
        if s.get("active"):
            notes.append(f"{s['active']} running")
        if s["state"] == "loaded" and isinstance(s.get("expires_at"), int | float):
            notes.append(f"unloads in {max(0.0, s['expires_at'] - now):.0f}s")
        parts.append(text + (f" ({', '.join(notes)})" if notes else ""))
    return ", ".join(parts)


def _fetch(url: str, timeout: float) -> list[dict[str, Any]]:
    try:
        with urllib.request.urlopen(f"{url.rstrip('/')}/v1/providers", timeout=timeout) as resp:
            data: list[dict[str, Any]] = json.loads(resp.read())["data"]
    except (urllib.error.URLError, OSError, ValueError, KeyError) as exc:
        err_console.print(f"[red]cannot read {url}/v1/providers: {escape(str(exc))}[/red]")
        raise typer.Exit(2) from None
    return data


def _monitor_table(
    entries: list[dict[str, Any]], rates: dict[str, float | None], url: str
) -> Table:
    table = Table(title=f"turnout backends at {url}", title_justify="left")
    for column in (
        "provider",
        "type",
        "status",
        "latency ms",
        "in flight",
        "queued",
        "req/s",
        "circuit",
        "models",
        "local models",
    ):
        table.add_column(
            column,
            justify="right" if column in ("latency ms", "in flight", "queued", "req/s") else "left",
        )
    for entry in entries:
        rate = rates.get(entry["name"])
        table.add_row(
            entry["name"],
            entry["type"],
            _status(entry.get("status") == "up"),
            _ms(entry.get("latency_ms")),
            str(entry.get("in_flight", 0)),
            str(entry.get("queued", 0)),
            "-" if rate is None else f"{rate:.2f}",
            entry.get("circuit") or "-",
            _models(entry.get("models") or []),
            escape(_lifecycle(entry.get("model_states")) or "-"),
        )
    return table


@app.command()
def monitor(
    url: UrlOption = "http://127.0.0.1:8400",
    interval: Annotated[float, typer.Option(help="Seconds between refreshes.")] = 1.0,
    count: Annotated[
        int, typer.Option(help="Stop after this many refreshes (0: until Ctrl-C).")
    ] = 0,
) -> None:
    """A live table of a running gateway's backends: status, latency of the last probe,
    requests in flight and queued, requests per second, circuit state, and the local models
    loaded or loading (with progress and waiting requests)."""
    before: dict[str, tuple[float, int]] = {}
    rates: dict[str, float | None] = {}
    shown = 0
    with Live(console=console, auto_refresh=False) as live:
        while True:
            entries = _fetch(url, max(interval, 2.0))
            now = time.monotonic()
            for entry in entries:
                seen = before.get(entry["name"])
                total = int(entry.get("requests") or 0)
                rates[entry["name"]] = (total - seen[1]) / (now - seen[0]) if seen else None
                before[entry["name"]] = (now, total)
            live.update(_monitor_table(entries, rates, url), refresh=True)
            shown += 1
            if count and shown >= count:
                return
            time.sleep(interval)
