"""The PostgreSQL store: psycopg 3's asyncio connection (typed, maintained by PostgreSQL's own
psycopg team; chosen over asyncpg for its type hints under mypy --strict, see docs/decisions.md).
One connection, used only off the request path (key refreshes, ledger batches, the CLI),
reconnected after a failure; migrations run under a transaction-scoped advisory lock, so
instances starting together migrate once."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any

import psycopg

from .sql import MIGRATIONS, Row, SQLStore, StoreError

__all__ = ["PostgresStore"]

_LOCK = 0x7475726E  # "turn": the advisory lock migrations hold


def _pg(sql: str) -> str:
    return sql.replace("?", "%s")


class PostgresStore(SQLStore):
    kind = "postgresql"
    day_sql = "to_char(to_timestamp(ts) AT TIME ZONE 'UTC', 'YYYY-MM-DD')"

    def __init__(self, url: str, connect_timeout: float = 3.0) -> None:
        self.url = url
        self.connect_timeout = connect_timeout
        self._conn: psycopg.AsyncConnection[Any] | None = None
        self._lock = asyncio.Lock()

    async def _connection(self) -> psycopg.AsyncConnection[Any]:
        if self._conn is None or self._conn.closed:
            self._conn = await psycopg.AsyncConnection.connect(
                self.url, connect_timeout=max(1, int(self.connect_timeout))
            )
        return self._conn

    async def _with(self, statements: Sequence[tuple[str, Sequence[Any]]], many: bool) -> Any:
        async with self._lock:
            try:
                conn = await self._connection()
                async with conn.transaction(), conn.cursor() as cur:
                    result: Any = 0
                    for sql, params in statements:
                        if many:
                            await cur.executemany(_pg(sql), params)
                        else:
                            await cur.execute(_pg(sql), params)
                            result = cur.rowcount
                    return result
            except psycopg.Error as exc:
                await self._drop()
                raise StoreError(f"PostgreSQL: {exc}".strip()) from exc
            except OSError as exc:
                await self._drop()
                raise StoreError(f"PostgreSQL: {exc}") from exc

    async def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                await conn.close()
            except Exception:  # already broken
                pass

    async def open(self) -> None:
        await self._migrate_all()

    async def _migrate_all(self) -> None:
        async with self._lock:
            try:
                conn = await self._connection()
                async with conn.transaction(), conn.cursor() as cur:
                    await cur.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK,))
                    await cur.execute(
                        "CREATE TABLE IF NOT EXISTS schema_version "
                        "(version INTEGER PRIMARY KEY, applied_at DOUBLE PRECISION NOT NULL)"
                    )
                    await cur.execute("SELECT COALESCE(MAX(version), 0) FROM schema_version")
                    row = await cur.fetchone()
                    current = int(row[0]) if row else 0
                    for version in sorted(v for v in MIGRATIONS if v > current):
                        for statement in MIGRATIONS[version]:
                            await cur.execute(statement)
                        await cur.execute(
                            "INSERT INTO schema_version (version, applied_at) VALUES (%s, %s)",
                            (version, time.time()),
                        )
            except (psycopg.Error, OSError) as exc:
                await self._drop()
                raise StoreError(f"PostgreSQL: cannot migrate the schema: {exc}") from exc

    async def _run(self, statements: Sequence[tuple[str, Sequence[Any]]]) -> int:
        return int(await self._with(statements, many=False))

    async def _many(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        await self._with([(sql, rows)], many=True)

    async def _query(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        async with self._lock:
            try:
                conn = await self._connection()
                async with conn.cursor() as cur:
                    await cur.execute(_pg(sql), params)
                    rows = await cur.fetchall()
                await conn.commit()
                return list(rows)
            except (psycopg.Error, OSError) as exc:
                await self._drop()
                raise StoreError(f"PostgreSQL: {exc}".strip()) from exc

    async def close(self) -> None:
        async with self._lock:
            await self._drop()
