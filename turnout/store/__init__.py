"""Storage for keys and the usage ledger: SQLite by default (a file in the user's data
directory), PostgreSQL for several instances (``storage.database_url``); Redis for limits shared
between instances (``storage.redis_url``). Layer: above turnout/access and telemetry, below the
gateway.
"""

from __future__ import annotations

import os
from pathlib import Path

from .sql import SQLStore, StoreError

__all__ = ["SQLStore", "StoreError", "data_dir", "default_database_url", "open_store", "safe_url"]


def data_dir() -> Path:
    """Where turnout keeps its data: ``$XDG_DATA_HOME/turnout`` or ``~/.local/share/turnout``."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "turnout"


def default_database_url() -> str:
    return f"sqlite:///{data_dir() / 'turnout.db'}"


def open_store(url: str | None) -> SQLStore:
    """The store ``url`` names (not yet opened: call ``await store.open()``)."""
    url = url or default_database_url()
    if url.startswith(("postgresql://", "postgres://")):
        from .postgres import PostgresStore

        return PostgresStore(url)
    if url.startswith("sqlite:///"):
        from .sqlite import SQLiteStore

        return SQLiteStore(url.removeprefix("sqlite:///") or ":memory:")
    if url == "sqlite://" or url == ":memory:":
        from .sqlite import SQLiteStore

        return SQLiteStore(":memory:")
    raise StoreError(
        f"storage.database_url must start with sqlite:/// or postgresql://, got {safe_url(url)!r}"
    )


def safe_url(url: str) -> str:
    """``url`` without a password, for logs and errors."""
    scheme, sep, rest = url.partition("://")
    if "@" in rest:
        creds, _, host = rest.rpartition("@")
        user = creds.split(":", 1)[0]
        rest = f"{user}:***@{host}" if ":" in creds else f"{user}@{host}"
    return scheme + sep + rest
