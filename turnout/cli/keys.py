"""``turnout keys`` (create, list, revoke, rotate) and ``turnout usage``: straight on the database
(``storage.database_url``, ``--database-url``), so they work whether or not a gateway runs; a
running gateway sees a change within a second (at once with Redis)."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import orjson
import typer
from rich.markup import escape
from rich.table import Table

from ..config import Config
from .common import ConfigOption, app, console, err_console, load

keys_app = typer.Typer(help="Gateway keys: create, list, revoke, rotate.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")

T = TypeVar("T")
DatabaseOption = Annotated[
    str | None,
    typer.Option(
        "--database-url", help="sqlite:///path or postgresql://... (storage.database_url)."
    ),
]


def _settings(config: Path | None, database_url: str | None) -> Config:
    cfg = load(config)
    if database_url:
        storage = cfg.storage.model_copy(update={"database_url": database_url})
        cfg = cfg.model_copy(update={"storage": storage})
    return cfg


def _run(cfg: Config, work: Callable[[Any], Awaitable[T]]) -> T:
    from ..store import StoreError, open_store, safe_url
    from ..store.keyring import KeyError_

    async def go() -> T:
        store = open_store(cfg.storage.database_url)
        try:
            await store.open()
            return await work(store)
        finally:
            await store.close()

    try:
        return asyncio.run(go())
    except KeyError_ as exc:
        err_console.print(f"[red]{escape(str(exc))}[/red]")
        raise typer.Exit(1) from None
    except StoreError as exc:
        where = safe_url(cfg.storage.database_url or "the default SQLite database")
        err_console.print(f"[red]cannot use {escape(where)}: {escape(str(exc))}[/red]")
        raise typer.Exit(1) from None


def _announce(cfg: Config) -> None:
    from ..store.keyring import announce

    asyncio.run(announce(cfg.storage.redis_url))


@keys_app.command("create")
def create(
    name: Annotated[str, typer.Argument(help="The key's name (letters, digits, . _ -).")],
    models: Annotated[
        list[str] | None, typer.Option("--models", help="Model patterns it may use (glob).")
    ] = None,
    rpm: Annotated[int | None, typer.Option(help="Requests per minute.")] = None,
    tpm: Annotated[int | None, typer.Option(help="Tokens per minute.")] = None,
    budget: Annotated[float | None, typer.Option(help="Spend allowed per period.")] = None,
    budget_period: Annotated[str, typer.Option(help="1d, 7d or 30d.")] = "30d",
    expires: Annotated[str | None, typer.Option(help="Lifetime, e.g. 90d.")] = None,
    priority: Annotated[int, typer.Option(help="Share in fair queueing (1 and up).")] = 1,
    admin: Annotated[bool, typer.Option("--admin", help="May manage keys and models.")] = False,
    config: ConfigOption = None,
    database_url: DatabaseOption = None,
) -> None:
    """Create a key and print it, once, on a line of its own."""
    from ..store.keyring import create_key

    cfg = _settings(config, database_url)
    raw, _record = _run(
        cfg,
        lambda store: create_key(
            store,
            name,
            models=models or [],
            rpm=rpm,
            tpm=tpm,
            budget=budget,
            budget_period=budget_period,
            expires=expires,
            priority=priority,
            admin=admin,
        ),
    )
    _announce(cfg)
    err_console.print(f"key '{escape(name)}' created; it is shown once, store it now:")
    print(raw)  # noqa: T201 - the key alone on stdout, for scripts


@keys_app.command("list")
def list_keys(
    as_json: Annotated[bool, typer.Option("--json", help="JSON instead of a table.")] = False,
    config: ConfigOption = None,
    database_url: DatabaseOption = None,
) -> None:
    """Every key: name, prefix, scope, limits, spend, last use, expiry (never the key)."""
    from ..access.keys import period_start
    from ..store.keyring import key_json

    cfg = _settings(config, database_url)

    async def work(store: Any) -> list[dict[str, Any]]:
        out = []
        now = time.time()
        for record, last_used in await store.list_keys():
            spent = None
            if record.budget is not None:
                since = period_start(record.budget_period, now)
                spent = (await store.spend_since(since)).get(record.name, 0.0)
            out.append(key_json(record, last_used, spent))
        return out

    rows = _run(cfg, work)
    if as_json:
        print(orjson.dumps(rows, option=orjson.OPT_INDENT_2).decode())  # noqa: T201
        return
    table = Table("name", "prefix", "models", "rpm", "tpm", "budget", "spent", "state",
                  "last used", "expires")  # fmt: skip
    for k in rows:
        budget = f"{k['budget']}/{k['budget_period']}" if k["budget"] is not None else "-"
        state = k["state"] + (" admin" if k["admin"] else "")
        table.add_row(
            k["name"], k["prefix"] + "…", ",".join(k["models"]), _dash(k["rpm"]),
            _dash(k["tpm"]), budget, _dash(k["spent"]), state,
            _when(k["last_used"]), _when(k["expires_at"]),
        )  # fmt: skip
    console.print(table)


@keys_app.command("revoke")
def revoke(
    name: Annotated[str, typer.Argument(help="The key to revoke.")],
    config: ConfigOption = None,
    database_url: DatabaseOption = None,
) -> None:
    """Revoke a key; every gateway refuses it within a second."""
    from ..store.keyring import revoke_key

    cfg = _settings(config, database_url)
    _run(cfg, lambda store: revoke_key(store, name))
    _announce(cfg)
    console.print(f"key '{escape(name)}' revoked")


@keys_app.command("rotate")
def rotate(
    name: Annotated[str, typer.Argument(help="The key to rotate.")],
    grace: Annotated[str, typer.Option(help="How long the old key keeps working.")] = "1h",
    config: ConfigOption = None,
    database_url: DatabaseOption = None,
) -> None:
    """Give a key a new secret; print it once. The old one works for the grace period."""
    from ..store.keyring import rotate_key

    cfg = _settings(config, database_url)
    raw, until = _run(cfg, lambda store: rotate_key(store, name, grace))
    _announce(cfg)
    err_console.print(f"key '{escape(name)}' rotated; the old one works until {_when(until)}:")
    print(raw)  # noqa: T201


@app.command()
def usage(
    key: Annotated[str | None, typer.Option(help="Only this key.")] = None,
    since: Annotated[str, typer.Option(help="How far back, e.g. 7d, 12h.")] = "7d",
    by: Annotated[str, typer.Option(help="Group by key, model, backend or day.")] = "key",
    as_json: Annotated[bool, typer.Option("--json", help="JSON instead of a table.")] = False,
    config: ConfigOption = None,
    database_url: DatabaseOption = None,
) -> None:
    """Requests, tokens and cost from the usage ledger."""
    from ..access.keys import parse_duration

    cfg = _settings(config, database_url)
    try:
        start = time.time() - parse_duration(since)
    except ValueError as exc:
        err_console.print(f"[red]--since: {escape(str(exc))}[/red]")
        raise typer.Exit(2) from None
    if by not in ("key", "model", "backend", "day"):
        err_console.print("[red]--by must be key, model, backend or day[/red]")
        raise typer.Exit(2)
    rows = _run(cfg, lambda store: store.usage_report(by=by, since=start, key=key))
    if as_json:
        print(orjson.dumps(rows, option=orjson.OPT_INDENT_2).decode())  # noqa: T201
        return
    table = Table(by, "requests", "errors", "tokens in", "tokens out", "cost")
    for row in rows:
        table.add_row(
            str(row[by]), str(row["requests"]), str(row["errors"]), str(row["tokens_in"]),
            str(row["tokens_out"]), f"{row['cost']:.6f}",
        )  # fmt: skip
    console.print(table)


def _dash(value: object) -> str:
    return "-" if value is None else str(value)


def _when(stamp: float | None) -> str:
    if stamp is None:
        return "-"
    return dt.datetime.fromtimestamp(stamp, dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ")
