"""The stores, on a real SQLite file and a real PostgreSQL 15 cluster: versioned migrations, keys
with rotation and revocation, the ledger (idempotent by request id), the spool through an outage,
and the shared limits on a real Redis."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from tests.support.databases import Postgres
from turnout.access.cache import KeyCache
from turnout.access.keys import KeyRecord
from turnout.access.quota import Admission
from turnout.store import open_store, sqlite as sqlite_store
from turnout.store.keyring import KeyError_, create_key, key_json, revoke_key, rotate_key
from turnout.store.ledger import Ledger
from turnout.store.spool import Spool
from turnout.store.sql import LEDGER_COLUMNS, SQLStore


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'turnout.db'}"
    return str(request.getfixturevalue("pg_url"))


def row(i: int, **extra: Any) -> dict[str, Any]:
    base: dict[str, Any] = dict.fromkeys(LEDGER_COLUMNS)
    base.update(
        request_id=f"r{i}", ts=time.time(), key_name="k", front="openai", model="m",
        status=200, tokens_in=3, tokens_out=4, estimated=False, cost=0.5, latency_ms=1.0,
        streamed=False,
    )  # fmt: skip
    base.update(extra)
    return base


async def opened(url: str) -> SQLStore:
    store = open_store(url)
    await store.open()
    return store


async def test_migrations_are_versioned_and_run_once(database_url: str) -> None:
    store = await opened(database_url)
    await store.close()
    store = await opened(database_url)  # a second start: nothing to do, nothing broken
    rows = await store._query("SELECT version FROM schema_version")
    assert [r[0] for r in rows] == [1]
    await store.close()


async def test_keys_rotate_and_revoke(database_url: str) -> None:
    store = await opened(database_url)
    cache = KeyCache(store)
    raw, record = await create_key(store, "ci", models=["gemma-*"], rpm=10, budget=2.0)
    assert raw.startswith("gw_") and record.prefix == raw[:11]
    with pytest.raises(KeyError_, match="exists"):
        await create_key(store, "ci")
    with pytest.raises(KeyError_, match="letters"):
        await create_key(store, "bad name; drop table keys")
    await cache.refresh()
    assert cache.lookup(raw) == record and cache.lookup(raw + "x") is None
    new, until = await rotate_key(store, "ci", "2s")
    await cache.refresh()
    assert cache.lookup(new) is not None and cache.lookup(raw) is not None  # grace period
    assert cache.lookup(raw, now=until + 0.1) is None and cache.lookup(new, now=until + 1)
    await revoke_key(store, "ci")
    await cache.refresh()
    assert cache.lookup(new) is None and cache.any_keys
    listed = [key_json(r, used, None) for r, used in await store.list_keys()]
    assert listed[0]["state"] == "revoked" and listed[0]["prefix"] == new[:11]
    assert raw not in repr(listed) and new not in repr(listed)
    stored = repr(await store._query("SELECT * FROM keys")) + repr(
        await store._query("SELECT * FROM credentials")
    )
    assert raw not in stored and new not in stored
    await store.close()


async def test_ledger_rows_are_written_once_and_reported(database_url: str) -> None:
    store = await opened(database_url)
    await store.add_key(KeyRecord(name="k", prefix="gw_x"), "h")
    rows = [row(i) for i in range(10)]
    await store.write_usage(rows)
    await store.write_usage(rows[5:])  # a replayed batch
    assert await store.count_usage() == 10
    report = await store.usage_report(by="key")
    assert report == [
        {"key": "k", "requests": 10, "errors": 0, "tokens_in": 30, "tokens_out": 40, "cost": 5.0}
    ]
    assert (await store.usage_report(by="day"))[0]["requests"] == 10
    assert await store.usage_report(by="model", key="nobody") == []
    assert (await store.list_keys())[0][1] is not None  # last used, from the ledger
    with pytest.raises(ValueError, match="allowed"):
        await store.usage_report(by="1; DROP TABLE usage")
    await store.close()


@pytest.mark.parametrize("count", [1, 50, 105], ids=["one", "48+1+1", "2x48+8+1"])
@pytest.mark.parametrize("multi_row", [True, False], ids=["multi-row", "row-by-row"])
async def test_sqlite_ledger_rows_keep_every_value_exactly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, count: int, multi_row: bool
) -> None:
    """The SQLite store inserts a batch by multi-row statements of 48, 8 and 1 rows (or, the
    generic way, row by row): every value comes back as it went in, types included, whatever
    the batch's size."""
    if not multi_row:
        monkeypatch.setattr(sqlite_store.SQLiteStore, "_insert_usage", SQLStore._insert_usage)
    store = await opened(f"sqlite:///{tmp_path / 'exact.db'}")
    await store.add_key(KeyRecord(name="k", prefix="gw_x"), "h")
    odd = ['quote " back\\slash', "line\nbreak \u2028 \U0001f600 ключ", "", "null"]
    rows = [
        row(i, ts=1.7e9 + i / 7, end_user=odd[i % 4], backend=None if i % 2 else "b",
            tokens_in=2**40 + i, estimated=bool(i % 3), cost=i / 3, latency_ms=0.1 + i,
            ttft_ms=None if i % 2 else 1 / 3, streamed=i % 2 == 0)
        for i in range(count)
    ]  # fmt: skip
    await store.write_usage(rows)
    await store.write_usage(rows[::2])  # a replayed half: nothing twice
    got = await store._query(f"SELECT {', '.join(LEDGER_COLUMNS)} FROM usage ORDER BY ts")
    expected = [tuple(int(v) if isinstance(v, bool) else v for v in r.values()) for r in rows]
    assert [tuple(g) for g in got] == expected
    assert [[type(v) for v in g] for g in got] == [[type(v) for v in e] for e in expected]
    await store.close()


async def test_ledger_spools_through_a_postgres_outage(
    postgres: Postgres, pg_url: str, tmp_path: Path
) -> None:
    store = await opened(pg_url)
    ledger = Ledger(store, Spool(tmp_path / "spool.jsonl"), retry=0.2)
    ledger._queue.extend(row(i) for i in range(100))
    await ledger.flush()
    postgres.stop()
    try:
        ledger._queue.extend(row(i) for i in range(100, 300))
        await ledger.flush()
        assert ledger.spool.pending() and ledger.spooled == 200
        ledger._queue.extend(row(i) for i in range(300, 350))
        await asyncio.sleep(0.3)
        await ledger.flush()
    finally:
        postgres.start()
    await asyncio.sleep(0.3)
    await ledger.flush()
    assert not ledger.spool.pending()
    assert await store.count_usage() == 350
    ids = {r["request_id"] for r in await store.usage_rows()}
    assert ids == {f"r{i}" for i in range(350)}
    await store.close()


async def test_the_ledger_prunes_rows_past_the_retention(database_url: str, tmp_path: Path) -> None:
    """Rows older than the retention go (on SQLite and PostgreSQL); newer ones stay; the
    statement is the ledger's own hourly one."""
    store = await opened(database_url)
    now = time.time()
    old = [row(i, ts=now - 40 * 86400) for i in range(5)]
    new = [row(i, ts=now - 3600) for i in range(5, 12)]
    await store.write_usage(old + new)
    ledger = Ledger(store, Spool(tmp_path / "spool.jsonl"), retention_s=31 * 86400)
    assert await ledger.prune() == 5 and ledger.pruned == 5
    assert {r["request_id"] for r in await store.usage_rows()} == {f"r{i}" for i in range(5, 12)}
    assert await ledger.prune() == 0
    forever = Ledger(store, Spool(tmp_path / "spool2.jsonl"), retention_s=None)
    assert await forever.prune() == 0 and await store.count_usage() == 7
    await store.close()


def test_the_retention_is_at_least_the_longest_budget_period() -> None:
    from turnout.config import load_config
    from turnout.errors import ConfigError

    with pytest.raises(ConfigError, match="usage_retention_days"):
        load_config({"storage": {"usage_retention_days": 7}}, environ={})
    kept = load_config({"storage": {"usage_retention_days": None}}, environ={})
    assert kept.storage.usage_retention_days is None


def test_a_full_spool_drops_and_counts(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s.jsonl", max_bytes=4096)
    kept = spool.append([row(i) for i in range(100)])
    assert 0 < kept < 100 and spool.dropped == 100 - kept and spool.size() <= 4096


async def test_shared_limits_hold_across_instances(redis_url: str) -> None:
    from turnout.store.shared import SharedQuotas

    one, two = SharedQuotas(redis_url), SharedQuotas(redis_url)
    key = KeyRecord(name="team", prefix="", rpm=10, tpm=10_000)
    results = await asyncio.gather(
        *(q.admit(Admission(key, None, "chat", 100)) for q in [one, two] * 15)
    )
    admitted = [r for r in results if r.error is None]
    assert len(admitted) == 10
    refused = [r.error for r in results if r.error is not None]
    assert all(e.status == 429 and 0 < (e.retry_after or 0) <= 60 for e in refused)
    headers = refused[0].headers()
    assert headers["x-ratelimit-limit-requests"] == "10" and "Retry-After" in headers
    await one.close()
    await two.close()


async def test_shared_tokens_and_budget_settle(redis_url: str) -> None:
    from turnout.store.shared import SharedQuotas

    one, two = SharedQuotas(redis_url), SharedQuotas(redis_url)
    key = KeyRecord(name="b", prefix="", tpm=1000, budget=1.0, budget_period="1d")
    first = await one.admit(Admission(key, None, "chat", 800))
    assert first.ticket is not None
    assert (await two.admit(Admission(key, None, "chat", 800))).error is not None
    await one.settle_many([(first.ticket, 50, 1.5)])  # used 50 tokens; spent past the budget
    over = await two.admit(Admission(key, None, "chat", 10))
    assert over.error is not None and over.error.code == "budget_exceeded"
    tokens = KeyRecord(name="t", prefix="", tpm=1000)
    held = await one.admit(Admission(tokens, None, "chat", 800))
    assert held.ticket is not None
    assert (await two.admit(Admission(tokens, None, "chat", 800))).error is not None
    await one.settle_many([(held.ticket, 50, 0.0)])  # 750 of the 800 reserved come back
    assert (await two.admit(Admission(tokens, None, "chat", 800))).error is None
    await one.close()
    await two.close()


async def test_shared_admissions_batched_decide_as_one_at_a_time(redis_url: str) -> None:
    """Admissions that arrive together go in one script call and get exactly the decisions
    they would get one by one (the in-process counters, given the same order, are the
    reference): keys over requests, over tokens, over budget, and end users' own limits."""
    from turnout.access.quota import LocalQuotas
    from turnout.store.shared import SharedQuotas

    keys = [
        KeyRecord(name="r", prefix="", rpm=7),
        KeyRecord(name="t", prefix="", tpm=1000),
        KeyRecord(name="rt", prefix="", rpm=9, tpm=2000),
        KeyRecord(name="spent", prefix="", budget=1.0, budget_period="1d"),
        KeyRecord(name="open", prefix="", rpm=1000),
    ]
    asks = []
    for i in range(120):
        key = keys[i % len(keys)]
        user = f"u{i % 3}" if key.name == "open" else None
        asks.append(Admission(key, user, "chat", 100 * (1 + i % 4), user_rpm=3, user_tpm=None))
    shared, local = SharedQuotas(redis_url), LocalQuotas()
    await shared.seed_spend("spent", "1d", 2.0)
    local.seed_spend("spent", "1d", 2.0)
    expected = [local.admit_now(a, time.monotonic(), time.time()) for a in asks]
    got = await asyncio.gather(*(shared.admit(a) for a in asks))
    assert shared.calls == 1 and shared.carried == len(asks)

    def outcome(d: Any) -> tuple[Any, ...]:
        if d.error is None:
            return ("ok", d.headers[:1], d.ticket.user, d.ticket.reserved)
        return (d.error.code, str(d.error).split(";")[0])

    assert [outcome(d) for d in got] == [outcome(d) for d in expected]
    # r: its 7 requests; t: 200+300+400+100 tokens of 1000; rt: 8 asks fill its 2,000 tokens
    # before its 9 requests; spent: over budget; open: 3 for each of its 3 users
    assert sum(d.error is None for d in got) == 7 + 4 + 8 + 0 + 9
    # A batch of one goes at once, and the counters carried over: r has no request left.
    refused = (await shared.admit(Admission(keys[0], None, "chat", 1))).error
    assert refused is not None and refused.status == 429 and shared.calls == 2
    await shared.close()


async def test_a_request_that_leaves_its_batch_leaves_the_others_be(redis_url: str) -> None:
    from turnout.store.shared import SharedQuotas

    shared = SharedQuotas(redis_url)
    key = KeyRecord(name="k", prefix="", rpm=100)
    first = asyncio.ensure_future(shared.admit(Admission(key, None, "chat", 0)))
    await asyncio.sleep(0)  # its call is in flight: the next ones wait for the next batch
    rest = [asyncio.ensure_future(shared.admit(Admission(key, None, "chat", 0))) for _ in range(5)]
    await asyncio.sleep(0)
    rest[0].cancel()
    decisions = await asyncio.gather(first, *rest[1:])
    assert all(d.error is None for d in decisions) and shared.calls == 2
    assert rest[0].cancelled()
    await shared.close()


async def test_a_batch_that_fails_for_another_reason_leaves_nobody_waiting() -> None:
    from tests.support.servers import free_port
    from turnout.store.shared import SharedQuotas

    shared = SharedQuotas(f"redis://127.0.0.1:{free_port()}/0")

    async def broken(batch: Any) -> Any:
        await asyncio.sleep(0.01)
        raise RuntimeError("a bug")

    shared._call = broken  # type: ignore[method-assign]
    key = KeyRecord(name="k", prefix="", rpm=5)
    first = asyncio.ensure_future(shared.admit(Admission(key, None, "chat", 0)))
    await asyncio.sleep(0)
    queued = [
        asyncio.ensure_future(shared.admit(Admission(key, None, "chat", 0))) for _ in range(3)
    ]
    async with asyncio.timeout(5):
        results = await asyncio.gather(first, *queued, return_exceptions=True)
    assert all(isinstance(r, RuntimeError) for r in results)
    await shared.close()


async def test_redis_unreachable_allows_locally_or_denies() -> None:
    from tests.support.servers import free_port
    from turnout.store.shared import SharedQuotas

    url = f"redis://127.0.0.1:{free_port()}/0"
    key = KeyRecord(name="k", prefix="", rpm=1)
    allow = SharedQuotas(url, on_error="allow", timeout=0.2)
    assert (await allow.admit(Admission(key, None, "chat", 0))).error is None
    assert (await allow.admit(Admission(key, None, "chat", 0))).error is not None  # local rpm
    deny = SharedQuotas(url, on_error="deny", timeout=0.2)
    refused = (await deny.admit(Admission(key, None, "chat", 0))).error
    assert refused is not None and refused.status == 503
    await allow.close()
    await deny.close()
