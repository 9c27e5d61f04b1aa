"""The SQLite store (the default): the standard library's sqlite3 on one thread of its own, so
the event loop never waits on the disk; WAL mode so that `turnout keys` and `turnout usage` in
another process read and write beside a running gateway.

A batch of ledger rows is inserted by a few multi-row statements (``INSERT ... VALUES (...),
(...), ...`` of 48, 8 and 1 rows, so that three prepared statements serve every batch size),
not by `executemany`: sqlite3 lets go of the GIL around every step and takes it back after, so a
thousand-row `executemany` beside a busy event loop fought it for the GIL a thousand times,
each a forced thread switch (measured under load: 21 µs of the writer's CPU a row and about as
much again on the loop's side). One statement over a JSON array (`json_each`, the way before
this one) spent most of its time reading each value back out of the JSON: the multi-row
statements take about half its CPU a row (`python bench/ledger_insert.py`: 5.0-7.7 µs against
10.4-15.3; `executemany` alone on a thread, with nobody to fight for the GIL, 7.3-9.7). 48 rows
of 17 columns stay under the 999 parameters older SQLite libraries allow a statement."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from .sql import INSERT_USAGE_INTO, LEDGER_COLUMNS, MIGRATIONS, Row, SQLStore, StoreError

__all__ = ["SQLiteStore", "insert_rows"]

T = TypeVar("T")

#: the ledger's batch inserts: rows per statement, largest first (a batch is cut greedily), and
#: the statement for each size (the connection's statement cache keeps all three prepared)
_CHUNKS = (48, 8, 1)
_ROW = "(" + ",".join("?" * len(LEDGER_COLUMNS)) + ")"
_INSERT_ROWS = {
    n: f"{INSERT_USAGE_INTO} VALUES {','.join([_ROW] * n)} ON CONFLICT DO NOTHING" for n in _CHUNKS
}


def insert_rows(db: sqlite3.Connection, rows: Sequence[Mapping[str, Any]]) -> None:
    """Insert ledger rows by the multi-row statements, the batch cut greedily (the caller holds
    the transaction)."""
    done = 0
    for size in _CHUNKS:
        sql = _INSERT_ROWS[size]
        while len(rows) - done >= size:
            part = rows[done : done + size]
            db.execute(sql, [row[c] for row in part for c in LEDGER_COLUMNS])
            done += size


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
        def work(db: sqlite3.Connection) -> None:
            with _transaction(db):
                insert_rows(db, rows)

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
