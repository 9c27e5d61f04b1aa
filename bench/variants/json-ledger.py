"""The ledger's SQLite batch inserted by one statement over a JSON array (`json_each`), as
before the multi-row statements."""

import orjson

from turnout.store import sql, sqlite

_INSERT_JSON = (
    f"{sql.INSERT_USAGE_INTO} SELECT "
    + ", ".join(f"value ->> {i}" for i in range(len(sql.LEDGER_COLUMNS)))
    + " FROM json_each(?) WHERE true ON CONFLICT DO NOTHING"
)


async def _insert_usage(self, rows):  # type: ignore[no-untyped-def]
    batch = orjson.dumps([[row[c] for c in sql.LEDGER_COLUMNS] for row in rows])

    def work(db):  # type: ignore[no-untyped-def]
        with sqlite._transaction(db):
            db.execute(_INSERT_JSON, (batch,))

    await self._call(work)


sqlite.SQLiteStore._insert_usage = _insert_usage  # type: ignore[method-assign]
