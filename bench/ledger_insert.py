"""CPU a ledger row costs SQLite's batch insert, three ways, on one thread (no server around it).

- ``executemany``: one statement a row (`SQLStore`'s own, what PostgreSQL's store does);
- ``json_each``: one statement over a JSON array of the batch (turnout before the multi-row inserts;
  the same text as ``bench/variants/json-ledger.py``);
- ``multi-row``: the statements `SQLiteStore` uses now (``INSERT ... VALUES (...),(...)`` of 48, 8
  and 1 rows, the batch cut greedily).

Each round gives every method a fresh batch of the same random size (50 to 1,000 rows, as the
ledger's writer sees under load) into its own WAL database, the methods in turn; the table is the
CPU time (`time.process_time`) per row, summed over the rounds. Usage:
``python bench/ledger_insert.py [--rounds 30]``.
"""

from __future__ import annotations

import argparse
import itertools
import random
import sqlite3
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from turnout.store.sql import _INSERT_USAGE, INSERT_USAGE_INTO, LEDGER_COLUMNS, MIGRATIONS
from turnout.store.sqlite import insert_rows

Rows = Sequence[dict[str, Any]]
_JSON = (
    f"{INSERT_USAGE_INTO} SELECT "
    + ", ".join(f"value ->> {i}" for i in range(len(LEDGER_COLUMNS)))
    + " FROM json_each(?) WHERE true ON CONFLICT DO NOTHING"
)
_ids = itertools.count()


def rows(n: int) -> list[dict[str, Any]]:
    now = time.time()
    return [
        {
            "request_id": f"0123456789ab-{next(_ids)}",
            "ts": now,
            "key_name": "bench",
            "end_user": None,
            "front": "openai",
            "model": "gemma-3-270m",
            "backend": "local",
            "served_model": "gemma-3-270m",
            "status": 200,
            "error_code": None,
            "tokens_in": 12,
            "tokens_out": 34,
            "estimated": False,
            "cost": 0.000125,
            "latency_ms": 0.52,
            "ttft_ms": None,
            "streamed": False,
        }
        for _ in range(n)
    ]


def executemany(db: sqlite3.Connection, batch: Rows) -> None:
    db.executemany(_INSERT_USAGE, [[row[c] for c in LEDGER_COLUMNS] for row in batch])


def json_each(db: sqlite3.Connection, batch: Rows) -> None:
    db.execute(_JSON, (orjson.dumps([[row[c] for c in LEDGER_COLUMNS] for row in batch]),))


METHODS: dict[str, Callable[[sqlite3.Connection, Rows], None]] = {
    "executemany": executemany,
    "json_each": json_each,
    "multi-row": insert_rows,  # SQLiteStore's own
}


def database(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    for version in sorted(MIGRATIONS):
        for statement in MIGRATIONS[version]:
            db.execute(statement)
    return db


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30)
    args = parser.parse_args()
    print(f"SQLite {sqlite3.sqlite_version}, {args.rounds} rounds of 50-1,000 rows")
    with tempfile.TemporaryDirectory() as tmp:
        dbs = {name: database(Path(tmp) / f"{i}.db") for i, name in enumerate(METHODS)}
        cpu = dict.fromkeys(METHODS, 0.0)
        count = 0
        for _ in range(args.rounds):
            n = random.randint(50, 1000)
            count += n
            for name, insert in METHODS.items():
                batch = rows(n)
                db = dbs[name]
                start = time.process_time()
                db.execute("BEGIN IMMEDIATE")
                insert(db, batch)
                db.execute("COMMIT")
                cpu[name] += time.process_time() - start
        for name, db in dbs.items():
            (stored,) = db.execute("SELECT count(*) FROM usage").fetchone()
            assert stored == count, (name, stored, count)
            print(f"{name:12} {cpu[name] / count * 1e6:6.2f} µs a row")


if __name__ == "__main__":
    main()
