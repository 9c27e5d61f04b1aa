"""`Access`: one gateway's keys, limits and usage ledger, put together from turnout/access and
the stores here. The gateway asks it who a request is (`authenticate`, from memory) and whether
it may go (`admit`: in memory, or one Redis round trip); the rest runs in the background: the
key cache's refresh, the ledger's writes, the settling of each request's reservation (from
telemetry's drain, in batches).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Iterable, Sequence
from typing import Any

from ..access.auth import ADMIN, credential, invalid, missing, out_of_scope
from ..access.cache import KeyCache
from ..access.keys import KeyRecord, period_start, same_hash
from ..access.quota import Admission, Decision, LocalQuotas
from ..config import Config
from ..telemetry import Telemetry, Trace
from . import data_dir, open_store
from .ledger import Ledger
from .spool import Spool

__all__ = ["Access"]

log = logging.getLogger("turnout.store")


class Access:
    def __init__(self, config: Config, telemetry: Telemetry) -> None:
        self.config = config
        self.telemetry = telemetry
        storage = config.storage
        self.store = open_store(storage.database_url)
        self.cache = KeyCache(self.store)
        spool = Spool(
            storage.spool_path or data_dir() / "usage-spool.jsonl", storage.spool_max_bytes
        )
        days = storage.usage_retention_days
        self.ledger = Ledger(self.store, spool, retention_s=None if days is None else days * 86400)
        self.quotas: Any = LocalQuotas()
        self.shared: Any = None  # SharedQuotas when storage.redis_url is set
        admin = config.server.admin_key
        self._admin_key = admin.get_secret_value() if admin is not None else None
        self._listener: asyncio.Task[None] | None = None
        self._settling: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        await self.store.open()  # migrations; a database that is down stops the start here
        await self.cache.refresh(force=True)
        self.cache.start()
        if self.config.storage.redis_url:
            from .shared import SharedQuotas

            self.shared = SharedQuotas(
                self.config.storage.redis_url, on_error=self.config.limits.on_store_error
            )
            self.quotas = self.shared
            self._listener = asyncio.create_task(self._listen(), name="turnout-key-events")
        await self._seed_spend()
        self.telemetry.add_sink(self._drained)
        self.ledger.start()

    async def close(self) -> None:
        """After telemetry's last flush: write what is queued, then let go of the stores."""
        if self._listener is not None:
            self._listener.cancel()
            await asyncio.gather(self._listener, return_exceptions=True)
        await self.cache.close()
        if self._settling:
            await asyncio.gather(*self._settling, return_exceptions=True)
        await self.ledger.close()
        if self.shared is not None:
            await self.shared.close()
        await self.store.close()

    async def _seed_spend(self) -> None:
        budgeted = [k for k in self.cache.keys.values() if k.budget is not None]
        if not budgeted:
            return
        now = time.time()
        for period in {k.budget_period for k in budgeted}:
            spent = await self.store.spend_since(period_start(period, now))
            local = self.shared.local if self.shared is not None else self.quotas
            for key in budgeted:
                if key.budget_period == period and key.name in spent:
                    local.seed_spend(key.name, period, spent[key.name])
                    if self.shared is not None:
                        with contextlib.suppress(Exception):  # Redis away: counted locally
                            await self.shared.seed_spend(key.name, period, spent[key.name])

    async def _listen(self) -> None:
        """Reload keys whenever any instance announces a change (a revocation, above all)."""
        from .shared import CHANNEL

        while True:
            try:
                pubsub = self.shared.redis.pubsub()
                await pubsub.subscribe(CHANNEL)
                async for message in pubsub.listen():
                    if message.get("type") == "message":
                        self.cache.poke()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.debug("key events: %s; listening again in 1 s", exc)
                await asyncio.sleep(1.0)

    # The request path.

    @property
    def required(self) -> bool:
        return self.config.auth.required or self.cache.any_keys

    def authenticate(self, headers: Iterable[tuple[bytes, bytes]], path: str) -> KeyRecord | None:
        """The key a request's headers carry (`ADMIN` for ``server.admin_key``); None when keys
        are not in use and none was sent. Raises `AuthenticationError` (401)."""
        raw = credential(headers)
        if raw is None:
            if self.required:
                raise missing(path)
            return None
        if self._admin_key is not None and same_hash(raw, self._admin_key):
            return ADMIN
        record = self.cache.lookup(raw)
        if record is not None:
            return record
        if self.required:
            raise invalid(raw)
        return None  # an open gateway: a client's placeholder key is not an error

    def admit(
        self, trace: Trace, kind: str, body: dict[str, Any], tokens: int
    ) -> Awaitable[None] | None:
        """Raise 403 for a model outside the key's scope, 429 over a limit or budget; else
        reserve, and leave the rate-limit headers on the trace. The limits of this process
        decide at once (None); Redis's are an awaitable that raises or reserves."""
        key: KeyRecord = trace.principal
        model = body.get("model") or ""
        if not key.allows(model):
            raise out_of_scope(key, model)
        limits = self.config.limits
        user_limited = trace.user is not None and (
            limits.user_rpm is not None or limits.user_tpm is not None
        )
        if key.rpm is None and key.tpm is None and key.budget is None and not user_limited:
            return None  # nothing to count: no round trip, no reservation
        request = Admission(
            key,
            trace.user if user_limited else None,
            kind,
            tokens,
            limits.user_rpm,
            limits.user_tpm,
        )
        if self.shared is not None:
            return self._admit_shared(trace, request)
        _decided(trace, self.quotas.admit_now(request, time.monotonic(), time.time()))
        return None

    async def _admit_shared(self, trace: Trace, request: Admission) -> None:
        _decided(trace, await self.shared.admit(request))

    def needs_tokens(self, trace: Trace) -> bool:
        key: KeyRecord = trace.principal
        return key.tpm is not None or self.config.limits.user_tpm is not None

    # Off the request path.

    def _drained(self, traces: Sequence[Trace]) -> None:
        self.ledger.sink(traces)
        done = [
            (t.ticket, (t.tokens_in or 0) + (t.tokens_out or 0), t.cost)
            for t in traces
            if t.ticket is not None and not t.ticket.settled
        ]
        if not done:
            return
        if self.shared is None:
            now, wall = time.monotonic(), time.time()
            for ticket, tokens, cost in done:
                self.quotas.settle_now(ticket, tokens, cost, now, wall)
            return
        task = asyncio.ensure_future(self._settle_shared(done))
        self._settling.add(task)
        task.add_done_callback(self._settling.discard)

    async def _settle_shared(self, done: list[Any]) -> None:
        try:
            await self.shared.settle_many(done)
        except Exception as exc:
            log.warning("could not settle %d reservations on Redis: %s", len(done), exc)


def _decided(trace: Trace, decision: Decision) -> None:
    if decision.error is not None:
        raise decision.error
    trace.ticket = decision.ticket
    trace.rate_headers = decision.headers or None
