"""The ledger's SQLite batch inserted row by row (`executemany`), as before the batch inserts."""

from turnout.store import sql, sqlite

sqlite.SQLiteStore._insert_usage = sql.SQLStore._insert_usage  # type: ignore[method-assign]
