"""The access core without I/O: keys, scopes, the sliding window, the token bucket, budgets and
the fair queue."""

from __future__ import annotations

import asyncio
import time

import pytest

from turnout.access.auth import credential, invalid
from turnout.access.keys import KeyRecord, generate_key, hash_key, key_prefix, parse_duration
from turnout.access.quota import Admission, Decision, LocalQuotas, _reset, reset_text
from turnout.routing.fairq import FairQueue


def test_keys_are_random_long_and_stored_only_as_a_hash() -> None:
    keys = {generate_key() for _ in range(1000)}
    assert len(keys) == 1000
    for key in keys:
        assert key.startswith("gw_") and len(key) == 35  # 24 random bytes: 192 bits
        assert hash_key(key) != key and len(hash_key(key)) == 64
        assert key_prefix(key) == key[:11]
    raw = next(iter(keys))
    assert raw not in invalid(raw).message and key_prefix(raw) in invalid(raw).message


def test_credentials_come_from_every_header_clients_send() -> None:
    assert credential([(b"authorization", b"Bearer gw_abc")]) == "gw_abc"
    assert credential([(b"authorization", b"bearer  gw_abc ")]) == "gw_abc"
    assert credential([(b"x-api-key", b"gw_xyz")]) == "gw_xyz"
    assert credential([(b"authorization", b"Basic Zm9v")]) is None
    assert credential([]) is None


def test_scope_patterns_and_expiry() -> None:
    key = KeyRecord(name="k", prefix="gw_", models=("gemma-*", "local/*"))
    assert key.allows("gemma-3-270m") and key.allows("local/x") and not key.allows("gpt-4o")
    assert KeyRecord(name="all", prefix="gw_").allows("anything")
    now = time.time()
    assert not KeyRecord(name="e", prefix="", expires_at=now - 1).live(now)
    assert not KeyRecord(name="r", prefix="", revoked_at=now - 1).live(now)
    assert parse_duration("30d") == 30 * 86400 and parse_duration("90s") == 90
    with pytest.raises(ValueError, match="unit"):
        parse_duration("soon")


def test_requests_per_minute_is_a_sliding_window() -> None:
    quotas = LocalQuotas()
    key = KeyRecord(name="k", prefix="", rpm=3)
    ask = Admission(key, None, "chat", 0)
    admitted = [quotas.admit_now(ask, t, 0).error is None for t in (0.0, 1.0, 2.0, 3.0, 59.9)]
    assert admitted == [True, True, True, False, False]
    refused = quotas.admit_now(ask, 30.0, 0)
    assert refused.error is not None and refused.error.status == 429
    assert refused.error.retry_after == pytest.approx(30.0)
    headers = refused.error.headers()
    assert headers["Retry-After"] == "30"
    assert headers["x-ratelimit-limit-requests"] == "3"
    assert headers["x-ratelimit-remaining-requests"] == "0"
    assert quotas.admit_now(ask, 60.0, 0).error is None  # the request at 0 s has left the window
    ok = quotas.admit_now(Admission(KeyRecord(name="j", prefix="", rpm=5), None, "chat", 0), 0, 0)
    assert (
        dict((k.decode(), v.decode()) for k, v in ok.headers)["x-ratelimit-remaining-requests"]
        == "4"
    )


def test_tokens_are_reserved_then_settled() -> None:
    quotas = LocalQuotas()
    key = KeyRecord(name="k", prefix="", tpm=1000)
    first = quotas.admit_now(Admission(key, None, "chat", 600), 0.0, 0)
    assert first.ticket is not None
    assert quotas.admit_now(Admission(key, None, "chat", 600), 0.0, 0).error is not None
    quotas.settle_now(first.ticket, 100, 0.0, 0.0, 0)  # used 100 of the 600 reserved
    assert quotas.admit_now(Admission(key, None, "chat", 600), 0.0, 0).error is None
    # A refused request holds nothing: the bucket refills at 1000 per 60 s.
    refused = quotas.admit_now(Admission(key, None, "chat", 900), 0.0, 0)
    assert refused.error is not None and refused.error.retry_after == pytest.approx(36.0)


def test_per_user_limits_are_keyed_by_user_and_endpoint() -> None:
    quotas = LocalQuotas()
    key = KeyRecord(name="k", prefix="")

    def ask(user: str, endpoint: str) -> bool:
        return quotas.admit_now(Admission(key, user, endpoint, 0, 1), 0.0, 0).error is None

    assert ask("ann", "chat") and ask("ann", "embedding") and ask("bob", "chat")
    assert not ask("ann", "chat")


def test_a_budget_is_a_soft_cap_per_period() -> None:
    quotas = LocalQuotas()
    key = KeyRecord(name="k", prefix="", budget=1.0, budget_period="1d")
    wall = 86400.0 * 100 + 10
    first = quotas.admit_now(Admission(key, None, "chat", 0), 0.0, wall)
    second = quotas.admit_now(Admission(key, None, "chat", 0), 0.0, wall)
    assert first.ticket and second.ticket
    quotas.settle_now(first.ticket, 0, 0.7, 0.0, wall)
    quotas.settle_now(second.ticket, 0, 0.7, 0.0, wall)  # crosses the budget: it completed
    refused = quotas.admit_now(Admission(key, None, "chat", 0), 0.0, wall)
    assert refused.error is not None and refused.error.code == "budget_exceeded"
    assert refused.error.retry_after == pytest.approx(86400 - 10)
    assert quotas.admit_now(Admission(key, None, "chat", 0), 0.0, wall + 86400).error is None


def test_reset_text_is_openais_spelling() -> None:
    assert [reset_text(s) for s in (0.25, 6, 90.2)] == ["250ms", "6s", "1m31s"]
    # The header values come from a table and a fast path: the same text for every time.
    times = [-1.0, 0.0, 0.0004, 0.0005, 0.0015, 0.25, 0.9994, 0.9996, 1.0, 1.0001, 59.5, 600.0]
    times += [600.2, 3600.0, *(i / 7 for i in range(5000))]
    assert [_reset(t) for t in times] == [reset_text(t).encode() for t in times]


def test_a_user_refused_gives_back_what_the_key_took() -> None:
    quotas = LocalQuotas()
    key = KeyRecord(name="k", prefix="", rpm=2, tpm=1000)

    def ask(user: str) -> Decision:
        return quotas.admit_now(Admission(key, user, "chat", 100, 1, None), 0.0, 0)

    assert ask("ann").error is None
    refused = ask("ann")  # ann's own limit: one a minute
    assert refused.error is not None and "user 'ann' on chat" in str(refused.error)
    ok = ask("bob")  # the key's second request (ann's refused one holds nothing of the key's)
    assert ok.error is None
    headers = {k.decode(): v.decode() for k, v in ok.headers}
    assert headers["x-ratelimit-remaining-requests"] == "0"
    assert headers["x-ratelimit-remaining-tokens"] == "800"
    assert headers["x-ratelimit-reset-tokens"] == "12s"  # 200 tokens at 1000 a minute
    over = ask("cy")
    assert over.error is not None and "key 'k': requests" in str(over.error)


async def test_fair_queue_lets_a_quiet_key_past_a_flood() -> None:
    queue = FairQueue()
    order: list[str] = []
    waiters = []
    for i in range(8):
        future = queue.push("flood", 1)
        future.add_done_callback(lambda _, i=i: order.append(f"flood{i}"))
        waiters.append(future)
    quiet = queue.push("quiet", 1)
    quiet.add_done_callback(lambda _: order.append("quiet"))
    heavy = queue.push("vip", 4)
    heavy.add_done_callback(lambda _: order.append("vip"))
    popped = 0
    while queue.pop():
        popped += 1
    await asyncio.sleep(0)  # run the done callbacks
    assert popped == 10
    assert order.index("quiet") <= 2 and order.index("vip") <= 2
    assert [o for o in order if o.startswith("flood")] == [f"flood{i}" for i in range(8)]
