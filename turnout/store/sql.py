"""What turnout keeps in a database, in SQL that SQLite and PostgreSQL both run: versioned
migrations, keys and the credentials that open them, and the usage ledger.

Every statement is parameterised (``?`` here; the PostgreSQL store turns it into ``%s``); the only
text ever joined into SQL is from the fixed tables below (`GROUPS`), never a request's.
"""

from __future__ import annotations

import json
import time
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import Any

from ..access.keys import Credential, KeyRecord

__all__ = ["GROUPS", "INSERT_USAGE_INTO", "LEDGER_COLUMNS", "MIGRATIONS", "SQLStore", "StoreError"]

#: version -> statements; append a version, never edit one that has shipped
MIGRATIONS: dict[int, tuple[str, ...]] = {
    1: (
        """CREATE TABLE keys (
            name TEXT PRIMARY KEY,
            prefix TEXT NOT NULL,
            models TEXT NOT NULL,
            rpm INTEGER,
            tpm INTEGER,
            budget DOUBLE PRECISION,
            budget_period TEXT NOT NULL,
            expires_at DOUBLE PRECISION,
            priority INTEGER NOT NULL,
            admin BOOLEAN NOT NULL,
            created_at DOUBLE PRECISION NOT NULL,
            revoked_at DOUBLE PRECISION,
            last_used DOUBLE PRECISION
        )""",
        """CREATE TABLE credentials (
            hash TEXT PRIMARY KEY,
            name TEXT NOT NULL REFERENCES keys (name),
            prefix TEXT NOT NULL,
            until DOUBLE PRECISION
        )""",
        "CREATE TABLE key_version (id INTEGER PRIMARY KEY, version BIGINT NOT NULL)",
        "INSERT INTO key_version (id, version) VALUES (1, 0)",
        """CREATE TABLE usage (
            request_id TEXT PRIMARY KEY,
            ts DOUBLE PRECISION NOT NULL,
            key_name TEXT,
            end_user TEXT,
            front TEXT NOT NULL,
            model TEXT NOT NULL,
            backend TEXT,
            served_model TEXT,
            status INTEGER NOT NULL,
            error_code TEXT,
            tokens_in BIGINT NOT NULL,
            tokens_out BIGINT NOT NULL,
            estimated BOOLEAN NOT NULL,
            cost DOUBLE PRECISION NOT NULL,
            latency_ms DOUBLE PRECISION NOT NULL,
            ttft_ms DOUBLE PRECISION,
            streamed BOOLEAN NOT NULL
        )""",
        "CREATE INDEX usage_ts ON usage (ts)",
        "CREATE INDEX usage_key_ts ON usage (key_name, ts)",
    ),
}

LEDGER_COLUMNS = (
    "request_id", "ts", "key_name", "end_user", "front", "model", "backend", "served_model",
    "status", "error_code", "tokens_in", "tokens_out", "estimated", "cost", "latency_ms",
    "ttft_ms", "streamed",
)  # fmt: skip

_KEY_COLUMNS = (
    "name, prefix, models, rpm, tpm, budget, budget_period, expires_at, priority, admin, "
    "created_at, revoked_at, last_used"
)

#: the start of every ledger insert (the SQLite store's batch insert too)
INSERT_USAGE_INTO = f"INSERT INTO usage ({', '.join(LEDGER_COLUMNS)})"
_INSERT_USAGE = (
    f"{INSERT_USAGE_INTO} VALUES ({','.join('?' * len(LEDGER_COLUMNS))}) ON CONFLICT DO NOTHING"
)

#: ``turnout usage --by``: the expression each grouping selects (fixed text, never the user's)
GROUPS = {
    "key": "COALESCE(key_name, '-')",
    "model": "model",
    "backend": "COALESCE(backend, '-')",
    "day": "{day}",
}


class StoreError(Exception):
    """The database could not do what was asked (down, locked, refused)."""


Row = Sequence[Any]


class SQLStore(ABC):
    """Queries shared by both databases; subclasses run them (`_run`, `_many`, `_query`)."""

    kind = "sql"
    #: the SQL for "the UTC day of ts" in this database
    day_sql = ""

    @abstractmethod
    async def _run(self, statements: Sequence[tuple[str, Sequence[Any]]]) -> int:
        """Run ``statements`` in one transaction; the rows the last one changed."""
        ...

    @abstractmethod
    async def _many(self, sql: str, rows: Sequence[Sequence[Any]]) -> None: ...

    @abstractmethod
    async def _query(self, sql: str, params: Sequence[Any] = ()) -> list[Row]: ...

    @abstractmethod
    async def open(self) -> None:
        """Connect and bring the schema up to the newest migration."""
        ...

    @abstractmethod
    async def close(self) -> None: ...

    # Keys.

    async def key_version(self) -> int:
        rows = await self._query("SELECT version FROM key_version WHERE id = 1")
        return int(rows[0][0])

    async def load_keys(self) -> tuple[list[KeyRecord], list[Credential]]:
        keys = [_record(row) for row in await self._query(f"SELECT {_KEY_COLUMNS} FROM keys")]
        credentials = [
            Credential(hash=row[0], name=row[1], prefix=row[2], until=row[3])
            for row in await self._query("SELECT hash, name, prefix, until FROM credentials")
        ]
        return keys, credentials

    async def list_keys(self) -> list[tuple[KeyRecord, float | None]]:
        """Every key with its last use, oldest first."""
        rows = await self._query(f"SELECT {_KEY_COLUMNS} FROM keys ORDER BY created_at, name")
        return [(_record(row), row[12]) for row in rows]

    async def add_key(self, record: KeyRecord, digest: str) -> None:
        bump = ("UPDATE key_version SET version = version + 1 WHERE id = 1", ())
        await self._run(
            [
                (
                    f"INSERT INTO keys ({_KEY_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                    (
                        record.name,
                        record.prefix,
                        json.dumps(list(record.models)),
                        record.rpm,
                        record.tpm,
                        record.budget,
                        record.budget_period,
                        record.expires_at,
                        record.priority,
                        record.admin,
                        record.created_at,
                        None,
                        None,
                    ),
                ),
                (
                    "INSERT INTO credentials (hash, name, prefix, until) VALUES (?,?,?,?)",
                    (digest, record.name, record.prefix, None),
                ),
                bump,
            ]
        )

    async def revoke_key(self, name: str, when: float | None = None) -> bool:
        when = time.time() if when is None else when
        changed = await self._run(
            [
                ("UPDATE key_version SET version = version + 1 WHERE id = 1", ()),
                (
                    "UPDATE keys SET revoked_at = ? WHERE name = ? AND revoked_at IS NULL",
                    (when, name),
                ),
            ]
        )
        return changed > 0

    async def rotate_key(self, name: str, digest: str, prefix: str, grace_until: float) -> bool:
        """A new credential for ``name``; the current ones keep working until ``grace_until``."""
        changed = await self._run(
            [
                (
                    "UPDATE credentials SET until = ? WHERE name = ? AND "
                    "(until IS NULL OR until > ?)",
                    (grace_until, name, grace_until),
                ),
                (
                    "INSERT INTO credentials (hash, name, prefix, until) VALUES (?,?,?,?)",
                    (digest, name, prefix, None),
                ),
                ("UPDATE key_version SET version = version + 1 WHERE id = 1", ()),
                (
                    "UPDATE keys SET prefix = ? WHERE name = ? AND revoked_at IS NULL",
                    (prefix, name),
                ),
            ]
        )
        return changed > 0

    # The ledger.

    async def write_usage(self, rows: Sequence[Mapping[str, Any]]) -> None:
        """Insert ledger rows; a row whose request id is already there is skipped (a replayed
        batch writes nothing twice). Last-used times of the keys follow in the same batch."""
        if not rows:
            return
        await self._insert_usage(rows)
        last: dict[str, float] = {}
        for row in rows:
            name = row["key_name"]
            if name:
                last[name] = max(last.get(name, 0.0), row["ts"])
        if last:
            await self._many(
                "UPDATE keys SET last_used = ? WHERE name = ? AND "
                "(last_used IS NULL OR last_used < ?)",
                [(ts, name, ts) for name, ts in last.items()],
            )

    async def _insert_usage(self, rows: Sequence[Mapping[str, Any]]) -> None:
        """One parameterised INSERT per row, in one transaction (`ON CONFLICT DO NOTHING`)."""
        await self._many(_INSERT_USAGE, [tuple(row[c] for c in LEDGER_COLUMNS) for row in rows])

    async def prune_usage(self, before: float) -> int:
        """Delete the ledger rows written before ``before`` (epoch seconds); how many went."""
        return await self._run([("DELETE FROM usage WHERE ts < ?", (before,))])

    async def spend_since(self, since: float) -> dict[str, float]:
        rows = await self._query(
            "SELECT key_name, SUM(cost) FROM usage WHERE ts >= ? AND key_name IS NOT NULL "
            "GROUP BY key_name",
            (since,),
        )
        return {row[0]: float(row[1] or 0.0) for row in rows}

    async def usage_report(
        self, *, by: str = "key", since: float | None = None, key: str | None = None
    ) -> list[dict[str, Any]]:
        if by not in GROUPS:
            raise ValueError(f"cannot group usage by {by!r}; allowed: {', '.join(GROUPS)}")
        group = GROUPS[by].format(day=self.day_sql)
        where: list[str] = ["1 = 1"]
        params: list[Any] = []
        if since is not None:
            where.append("ts >= ?")
            params.append(since)
        if key is not None:
            where.append("key_name = ?")
            params.append(key)
        rows = await self._query(
            f"SELECT {group} AS g, COUNT(*), SUM(tokens_in), SUM(tokens_out), SUM(cost), "
            "SUM(CASE WHEN status >= 400 THEN 1 ELSE 0 END) "
            f"FROM usage WHERE {' AND '.join(where)} GROUP BY g ORDER BY g",
            params,
        )
        return [
            {
                by: row[0],
                "requests": int(row[1]),
                "errors": int(row[5] or 0),
                "tokens_in": int(row[2] or 0),
                "tokens_out": int(row[3] or 0),
                "cost": round(float(row[4] or 0.0), 6),
            }
            for row in rows
        ]

    async def count_usage(self) -> int:
        return int((await self._query("SELECT COUNT(*) FROM usage"))[0][0])

    async def usage_rows(self) -> list[dict[str, Any]]:
        rows = await self._query(f"SELECT {', '.join(LEDGER_COLUMNS)} FROM usage ORDER BY ts")
        return [dict(zip(LEDGER_COLUMNS, row, strict=True)) for row in rows]


def _record(row: Row) -> KeyRecord:
    return KeyRecord(
        name=row[0],
        prefix=row[1],
        models=tuple(json.loads(row[2])),
        rpm=row[3],
        tpm=row[4],
        budget=row[5],
        budget_period=row[6],
        expires_at=row[7],
        priority=row[8],
        admin=bool(row[9]),
        created_at=row[10],
        revoked_at=row[11],
    )
