"""The ledger's SQLite batch inserted row by row (`executemany`), as before the JSON batch."""

from turnout.store import sqlite

sqlite._JSON_BATCH = False
