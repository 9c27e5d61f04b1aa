"""Managing keys: create, list, revoke, rotate; shared by `turnout keys` and ``/v1/keys``.

The raw key exists only in `create_key`'s and `rotate_key`'s return value, shown once to whoever
asked; what is stored and listed is its hash and its prefix. A change is announced on Redis (when
``storage.redis_url`` is set) so that every instance reloads its keys at once; without Redis they
see it within a second anyway (turnout/access/cache.py).
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Sequence
from typing import Any

from ..access.keys import (
    KeyRecord,
    generate_key,
    hash_key,
    key_prefix,
    parse_duration,
    parse_period,
)
from .sql import SQLStore

__all__ = ["KeyError_", "announce", "create_key", "key_json", "revoke_key", "rotate_key"]

log = logging.getLogger("turnout.store")

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
#: how long a rotated-out key keeps working unless told otherwise
DEFAULT_GRACE = "1h"


class KeyError_(ValueError):
    """A key operation that cannot be done (bad name, exists, unknown), said plainly."""


async def create_key(
    store: SQLStore,
    name: str,
    *,
    models: Sequence[str] = (),
    rpm: int | None = None,
    tpm: int | None = None,
    budget: float | None = None,
    budget_period: str = "30d",
    expires: str | None = None,
    priority: int = 1,
    admin: bool = False,
) -> tuple[str, KeyRecord]:
    """A new key: (the raw key, to show once; its record)."""
    if not _NAME.match(name):
        raise KeyError_(
            f"key name {name!r} must be 1-64 letters, digits, '.', '_' or '-', starting with a "
            "letter or digit"
        )
    for value, what in ((rpm, "--rpm"), (tpm, "--tpm"), (priority, "--priority")):
        if value is not None and value < 1:
            raise KeyError_(f"{what} must be at least 1, got {value}")
    if budget is not None and budget < 0:
        raise KeyError_(f"--budget must be 0 or more, got {budget}")
    try:
        parse_period(budget_period)
        expires_at = time.time() + parse_duration(expires) if expires else None
    except ValueError as exc:
        raise KeyError_(str(exc)) from None
    if any(record.name == name for record, _ in await store.list_keys()):
        raise KeyError_(f"a key named {name!r} exists already (revoked keys keep their name)")
    raw = generate_key()
    record = KeyRecord(
        name=name,
        prefix=key_prefix(raw),
        models=tuple(models),
        rpm=rpm,
        tpm=tpm,
        budget=budget,
        budget_period=budget_period,
        expires_at=expires_at,
        priority=priority,
        admin=admin,
    )
    await store.add_key(record, hash_key(raw))
    log.info("key %r created (%s)", name, record.prefix)
    return raw, record


async def revoke_key(store: SQLStore, name: str) -> None:
    if not await store.revoke_key(name):
        raise KeyError_(f"no live key named {name!r}")
    log.info("key %r revoked", name)


async def rotate_key(store: SQLStore, name: str, grace: str = DEFAULT_GRACE) -> tuple[str, float]:
    """A new secret for ``name``: (the raw key, when the old one stops working)."""
    try:
        until = time.time() + parse_duration(grace)
    except ValueError as exc:
        raise KeyError_(str(exc)) from None
    live = {r.name for r, _ in await store.list_keys() if r.revoked_at is None}
    if name not in live:
        raise KeyError_(f"no live key named {name!r}")
    raw = generate_key()
    await store.rotate_key(name, hash_key(raw), key_prefix(raw), until)
    log.info("key %r rotated (%s); the old one works until %.0f", name, key_prefix(raw), until)
    return raw, until


async def announce(redis_url: str | None) -> None:
    """Tell every instance to reload its keys now (best effort: they poll anyway)."""
    if not redis_url:
        return
    import redis.asyncio as aioredis

    from .shared import CHANNEL

    client: Any = aioredis.Redis.from_url(redis_url, socket_connect_timeout=1.0)
    try:
        await client.publish(CHANNEL, b"changed")
    except Exception as exc:  # the poll covers it within a second
        log.warning("could not announce a key change on Redis: %s", exc)
    finally:
        await client.aclose()


def key_json(record: KeyRecord, last_used: float | None, spent: float | None) -> dict[str, Any]:
    """What a list shows of a key: never the key, only its prefix."""
    now = time.time()
    state = "active"
    if record.revoked_at is not None:
        state = "revoked"
    elif record.expires_at is not None and record.expires_at <= now:
        state = "expired"
    return {
        "name": record.name,
        "prefix": record.prefix,
        "models": list(record.models) or ["*"],
        "rpm": record.rpm,
        "tpm": record.tpm,
        "budget": record.budget,
        "budget_period": record.budget_period,
        "spent": round(spent, 6) if spent is not None else None,
        "priority": record.priority,
        "admin": record.admin,
        "state": state,
        "created_at": record.created_at,
        "last_used": last_used,
        "expires_at": record.expires_at,
    }
