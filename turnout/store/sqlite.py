"""The SQLite store (the default): the standard library's sqlite3 on one thread of its own, so
the event loop never waits on the disk; WAL mode so that `turnout keys` and `turnout usage` in
another process read and write beside a running gateway.

A batch of ledger rows is inserted by one statement over a JSON array (`json_each`), not by
`executemany`: sqlite3 lets go of the GIL around every step and takes it back after, so a
thousand-row `executemany` beside a busy event loop fought it for the GIL a thousand times,
each a forced thread switch (measured under load: 21 µs of the writer's CPU a row and about as
much again on the loop's side; one statement: 9 µs, and the loop undisturbed)."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import orjson

from .sql import INSERT_USAGE_INTO, LEDGER_COLUMNS, MIGRATIONS, Row, SQLStore, StoreError

__all__ = ["SQLiteStore"]

T = TypeVar("T")

#: the ledger's batch insert: one parameter, a JSON array of rows (each an array in
#: LEDGER_COLUMNS' order); `WHERE true` is SQLite's way to let ON CONFLICT follow a SELECT
_INSERT_JSON = (
    f"{INSERT_USAGE_INTO} SELECT "
    + ", ".join(f"value ->> {i}" for i in range(len(LEDGER_COLUMNS)))
    + " FROM json_each(?) WHERE true ON CONFLICT DO NOTHING"
)
#: `->>` and a JSON1 built in came with SQLite 3.38; older libraries insert row by row
_JSON_BATCH = sqlite3.sqlite_version_info >= (3, 38, 0)


class SQLiteStore(SQLStore):
    kind = "sqlite"
    day_sql = "date(ts, 'unixepoch')"

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="turnout-sqlite")
        self._db: sqlite3.Connection | None = None

    def _connect(self) -> sqlite3.Connection:
        if self._db is None:
            if self.path != ":memory:":
                Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self.path, timeout=10.0, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute("PRAGMA foreign_keys=ON")
            self._db = db
        return self._db

    async def _call(self, work: Callable[[sqlite3.Connection], T]) -> T:
        def run() -> T:
            try:
                return work(self._connect())
            except sqlite3.Error as exc:
                raise StoreError(f"SQLite {self.path}: {exc}") from exc

        return await asyncio.get_running_loop().run_in_executor(self._thread, run)

    async def open(self) -> None:
        await self._call(_migrate)

    async def _run(self, statements: Sequence[tuple[str, Sequence[Any]]]) -> int:
        def work(db: sqlite3.Connection) -> int:
            with _transaction(db):
                changed = 0
                for sql, params in statements:
                    changed = db.execute(sql, params).rowcount
                return changed

        return await self._call(work)

    async def _many(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        def work(db: sqlite3.Connection) -> None:
            with _transaction(db):
                db.executemany(sql, rows)

        await self._call(work)

    async def _insert_usage(self, rows: Sequence[Mapping[str, Any]]) -> None:
        if not _JSON_BATCH:
            await super()._insert_usage(rows)
            return
        batch = orjson.dumps([[row[c] for c in LEDGER_COLUMNS] for row in rows])

        def work(db: sqlite3.Connection) -> None:
            with _transaction(db):
                db.execute(_INSERT_JSON, (batch,))

        await self._call(work)

    async def _query(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        return await self._call(lambda db: db.execute(sql, params).fetchall())

    async def close(self) -> None:
        def shut(db: sqlite3.Connection) -> None:
            db.close()
            self._db = None

        if self._db is not None:
            await self._call(shut)
        self._thread.shutdown(wait=True)


class _transaction:
    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def __enter__(self) -> None:
        self.db.execute("BEGIN IMMEDIATE")

    def __exit__(self, kind: object, exc: object, tb: object) -> None:
        self.db.execute("COMMIT" if kind is None else "ROLLBACK")


def _migrate(db: sqlite3.Connection) -> None:
    with _transaction(db):  # BEGIN IMMEDIATE: a second process migrating waits for this one
        db.execute(
            "CREATE TABLE IF NOT EXISTS schema_version "
            "(version INTEGER PRIMARY KEY, applied_at DOUBLE PRECISION NOT NULL)"
        )
        current = db.execute("SELECT COALESCE(MAX(version), 0) FROM schema_version").fetchone()[0]
        for version in sorted(v for v in MIGRATIONS if v > current):
            for statement in MIGRATIONS[version]:
                db.execute(statement)
            db.execute(
                "INSERT INTO schema_version (version, applied_at) VALUES (?, ?)",
                (version, time.time()),
            )
