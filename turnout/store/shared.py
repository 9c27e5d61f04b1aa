"""Limits shared by every gateway instance, in Redis: one Lua script checks and reserves the
budget, requests and tokens of a batch of requests atomically in one round trip (on Redis's own
clock, so instances need not agree on the time); settling runs off the request path, one script
call per telemetry batch. Key revocations travel on a pub/sub channel.

**Batches.** A request's admission joins a queue; one call is in flight at a time, and the
requests that arrive while it is carry on together in the next (group commit). Alone, a request
goes at once (one round trip, as unbatched); at 64 connections a call carries a dozen or more,
and the client's cost per request (redis-py's command packing, its connection pool, the reply:
some 60 µs a call) is shared among them. Inside the script each admission is checked and
reserved in turn, exactly as if it had come alone; the batch only shares the reading and the
writing of each counter.

Counters: ``turnout:r:<counter>`` a sorted set of request times (the sliding window),
``turnout:t:<counter>`` a hash {level, stamp} (the token bucket), ``turnout:b:<key>:<period
start>`` the spend of a budget period. Each expires on its own when idle.

When Redis does not answer, ``limits.on_store_error`` decides: ``allow`` (the default) counts in
this process (`LocalQuotas`) and logs a warning; ``deny`` refuses with 503.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import defaultdict
from itertools import count
from typing import Any

import orjson
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from ..access.keys import PERIODS, period_start
from ..access.quota import (
    Admission,
    Decision,
    LocalQuotas,
    Ticket,
    headers_for,
    over_budget,
    refusal,
)
from ..errors import GatewayError
from . import safe_url

__all__ = ["CHANNEL", "SharedQuotas"]

log = logging.getLogger("turnout.store")

CHANNEL = "turnout:keys"
#: admissions in one script call at most (the rest wait for the next)
BATCH = 256

# KEYS: every key the batch touches, each once.
# ARGV[1]: JSON, one entry per admission: [budget key's index (0: none), budget, tokens,
#   [[window key's index, bucket key's index, rpm (-1: none), tpm (-1: none)], ...]]
#   (the key's own counter first, then the end user's)
# ARGV[2]: this batch's prefix for the window's members (unique to the process and batch)
# Returns six values per admission: status, left requests, ms until a request frees, left
# tokens, ms until the tokens are back, spent. Status: 0 admitted, 1 over budget, 2 * i over
# the requests of counter i (from 1), 2 * i + 1 over its tokens.
_ADMIT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local window = 60000
local spent, size, oldest, members, level = {}, {}, {}, {}, {}
local out = {}
for j, a in ipairs(cjson.decode(ARGV[1])) do
  local bi, budget, tokens, counters = a[1], a[2], a[3], a[4]
  local status, lr, rr, lt, rt, sp = 0, -1, 0, -1, 0, '0'
  if bi > 0 then
    if spent[bi] == nil then spent[bi] = tonumber(redis.call('GET', KEYS[bi]) or '0') end
    if spent[bi] >= budget then status, sp = 1, tostring(spent[bi]) end
  end
  if status == 0 then
    for i, c in ipairs(counters) do
      local wi, ki, rpm, tpm = c[1], c[2], c[3], c[4]
      if rpm >= 0 then
        if size[wi] == nil then
          redis.call('ZREMRANGEBYSCORE', KEYS[wi], '-inf', now - window)
          size[wi] = redis.call('ZCARD', KEYS[wi])
          local first = redis.call('ZRANGE', KEYS[wi], 0, 0, 'WITHSCORES')
          oldest[wi] = tonumber(first[2] or now)
          members[wi] = {}
        end
        if size[wi] >= rpm then
          status, lr, rr = 2 * i, 0, oldest[wi] + window - now
          break
        end
      end
      if tpm >= 0 then
        if level[ki] == nil then
          local state = redis.call('HMGET', KEYS[ki], 'level', 'stamp')
          local held, stamp = tonumber(state[1]) or tpm, tonumber(state[2]) or now
          level[ki] = math.min(tpm, held + (now - stamp) * tpm / window)
        end
        local need = math.min(tokens, tpm)
        if level[ki] < need then
          status, lt = 2 * i + 1, math.floor(level[ki])
          rt = math.ceil((need - level[ki]) * window / tpm)
          break
        end
      end
    end
  end
  if status == 0 then
    for i, c in ipairs(counters) do
      local wi, ki, rpm, tpm = c[1], c[2], c[3], c[4]
      if rpm >= 0 then
        if size[wi] == 0 then oldest[wi] = now end
        size[wi] = size[wi] + 1
        local m = members[wi]
        m[#m + 1] = now
        m[#m + 1] = ARGV[2] .. j
        if i == 1 then lr, rr = rpm - size[wi], oldest[wi] + window - now end
      end
      if tpm >= 0 then
        level[ki] = level[ki] - tokens
        if i == 1 then
          lt, rt = math.floor(level[ki]), math.ceil((tpm - level[ki]) * window / tpm)
        end
      end
    end
  end
  out[#out + 1] = status
  out[#out + 1] = lr
  out[#out + 1] = rr
  out[#out + 1] = lt
  out[#out + 1] = rt
  out[#out + 1] = sp
end
for wi, m in pairs(members) do
  if #m > 0 then redis.call('ZADD', KEYS[wi], unpack(m)) end
  redis.call('PEXPIRE', KEYS[wi], window)
end
for ki, held in pairs(level) do
  redis.call('HSET', KEYS[ki], 'level', held, 'stamp', now)
  redis.call('PEXPIRE', KEYS[ki], window * 2)
end
return out
"""

# KEYS: buckets. ARGV: per bucket, tokens to give back (negative: owed) and its tpm
_SETTLE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
for i = 1, #KEYS do
  local back, tpm = tonumber(ARGV[2 * i - 1]), tonumber(ARGV[2 * i])
  local state = redis.call('HMGET', KEYS[i], 'level', 'stamp')
  if state[1] then
    local level = math.min(tpm, tonumber(state[1]) + (now - tonumber(state[2])) * tpm / 60000)
    redis.call('HSET', KEYS[i], 'level', math.min(tpm, level + back), 'stamp', now)
    redis.call('PEXPIRE', KEYS[i], 120000)
  end
end
return 1
"""


class StoreUnavailableError(GatewayError):
    status = 503
    type = "service_unavailable"
    code = "limits_unavailable"


_Waiting = tuple[Admission, "asyncio.Future[Decision]"]


class SharedQuotas:
    def __init__(self, url: str, *, on_error: str = "allow", timeout: float = 1.0) -> None:
        self.url = url
        self.on_error = on_error
        self.redis: Any = aioredis.Redis.from_url(
            url, socket_timeout=timeout, socket_connect_timeout=timeout
        )
        self.local = LocalQuotas()
        self._admit = self.redis.register_script(_ADMIT)
        self._settle = self.redis.register_script(_SETTLE)
        self._warned = 0.0
        self.tpm: dict[str, int] = {}  # bucket -> its tpm, for settling
        self._queue: list[_Waiting] = []
        self._runner: asyncio.Future[None] | None = None  # sends batches while any wait
        self._batches = count()
        self._members = os.urandom(6).hex()  # this process's members in the windows
        self.calls = 0  # script calls made, and admissions they carried (for the tests)
        self.carried = 0

    async def close(self) -> None:
        await self.redis.aclose()

    def spent(self, key: str, period: str) -> float:
        return self.local.spent(key, period)

    async def seed_spend(self, key: str, period: str, amount: float) -> None:
        """The ledger's spend for ``key``'s current period, unless Redis already has one."""
        start = period_start(period, time.time())
        name = f"turnout:b:{key}:{int(start)}"
        await self.redis.set(name, repr(amount), nx=True, exat=int(start + PERIODS[period]) + 1)

    async def admit(self, request: Admission) -> Decision:
        """Check and reserve, in the next batch (at once when none is in flight)."""
        future: asyncio.Future[Decision] = asyncio.get_running_loop().create_future()
        self._queue.append((request, future))
        if self._runner is None:
            self._runner = asyncio.ensure_future(self._run())
        return await future

    async def _run(self) -> None:
        """Send the queue, batch after batch, until it is empty; a task of its own, so that a
        request that leaves does not cut the others' call short."""
        try:
            while self._queue:
                batch, self._queue = self._queue[:BATCH], self._queue[BATCH:]
                try:
                    decisions = await self._call(batch)
                except (RedisError, OSError) as exc:
                    decisions = [await self._unreachable(r, exc) for r, _ in batch]
                except BaseException as exc:  # a bug, or the loop closing: nobody hangs
                    waiting, self._queue = batch + self._queue, []
                    for _, future in waiting:
                        if future.done():
                            continue
                        if isinstance(exc, asyncio.CancelledError):
                            future.cancel()
                        else:
                            future.set_exception(exc)
                    raise
                for (_, future), decision in zip(batch, decisions, strict=True):
                    if not future.done():  # its request may have left
                        future.set_result(decision)
        finally:
            self._runner = None

    async def _call(self, batch: list[_Waiting]) -> list[Decision]:
        keys: dict[str, int] = {}  # Redis key -> its index in KEYS (from 1)
        entries: list[Any] = []
        for request, _ in batch:
            key = request.key
            budget = 0
            if key.budget is not None:
                start = int(period_start(key.budget_period, time.time()))
                budget = keys.setdefault(f"turnout:b:{key.name}:{start}", len(keys) + 1)
            counters = []
            for name, rpm, tpm in _counters(request):
                window = keys.setdefault(f"turnout:r:{name}", len(keys) + 1)
                bucket = keys.setdefault(f"turnout:t:{name}", len(keys) + 1)
                counters.append(
                    (window, bucket, -1 if rpm is None else rpm, -1 if tpm is None else tpm)
                )
                if tpm is not None:
                    self.tpm[f"turnout:t:{name}"] = tpm
            entries.append((budget, key.budget or 0, request.tokens, counters))
        prefix = f"{self._members}.{next(self._batches):x}."
        out = await self._admit(list(keys), [orjson.dumps(entries), prefix])
        self.calls += 1
        self.carried += len(batch)
        return [_decision(request, out[6 * i : 6 * i + 6]) for i, (request, _) in enumerate(batch)]

    async def _unreachable(self, request: Admission, exc: BaseException) -> Decision:
        now = time.monotonic()
        if now - self._warned > 30:
            self._warned = now
            log.warning(
                "Redis at %s is unreachable (%s); limits.on_store_error=%s: %s",
                safe_url(self.url),
                exc,
                self.on_error,
                "counting in this process" if self.on_error == "allow" else "refusing requests",
            )
        if self.on_error == "deny":
            err = StoreUnavailableError(
                "The shared limits store (storage.redis_url) is unreachable and "
                "limits.on_store_error is 'deny'.",
                retry_after=1.0,
            )
            return Decision(None, err, [])  # type: ignore[arg-type]
        return await self.local.admit(request)

    async def settle(self, ticket: Ticket, tokens: int, cost: float) -> None:
        await self.settle_many([(ticket, tokens, cost)])

    async def settle_many(self, items: list[tuple[Ticket, int, float]]) -> None:
        """Give back what each request reserved beyond its use, add its cost: the tokens and
        the spend added up per counter, then one script call and a pipeline."""
        wall = time.time()
        back: dict[str, int] = defaultdict(int)  # bucket -> tokens to give back
        costs: dict[tuple[str, float, str], float] = defaultdict(float)
        for ticket, tokens, cost in items:
            if ticket.settled:
                continue
            ticket.settled = True
            if ticket.reserved != tokens:
                for bucket in (
                    f"turnout:t:k:{ticket.key}",
                    ticket.user and f"turnout:t:u:{ticket.user}",
                ):
                    if bucket and bucket in self.tpm:
                        back[bucket] += ticket.reserved - tokens
            if ticket.budgeted and cost:
                costs[(ticket.key, period_start(ticket.period, wall), ticket.period)] += cost
            self.local.settle_now(ticket_copy(ticket), tokens, cost, time.monotonic(), wall)
        pipe = self.redis.pipeline(transaction=False)
        if back:
            args: list[int] = []
            for bucket, tokens_back in back.items():
                args += [tokens_back, self.tpm[bucket]]
            await self._settle(list(back), args, client=pipe)
        for (key, start, period), cost in costs.items():
            name = f"turnout:b:{key}:{int(start)}"
            pipe.incrbyfloat(name, cost)
            pipe.expireat(name, int(start + PERIODS[period]) + 1)
        if len(pipe):
            await pipe.execute()


def _counters(request: Admission) -> list[tuple[str, int | None, int | None]]:
    """The request's counters: its key's, then its end user's (when users are limited)."""
    key = request.key
    out = [(f"k:{key.name}", key.rpm, key.tpm)]
    user = request.user_counter()
    if user is not None:
        out.append((f"u:{user}", request.user_rpm, request.user_tpm))
    return out


def _decision(request: Admission, row: list[Any]) -> Decision:
    key = request.key
    status, left_r, reset_r, left_t, reset_t, spent = row
    status = int(status)
    headers = headers_for(key.rpm, left_r, reset_r / 1000, key.tpm, left_t, reset_t / 1000)
    if status == 0:
        ticket = Ticket(
            key.name,
            request.user_counter(),
            request.tokens,
            key.budget_period,
            key.budget is not None,
        )
        return Decision(ticket, None, headers)
    if status == 1:
        wall = time.time()
        begun = period_start(key.budget_period, wall)
        return over_budget(key, float(spent), begun + PERIODS[key.budget_period] - wall)
    which = status // 2 - 1
    what = f"key '{key.name}'" if which == 0 else f"user '{request.user}' on {request.endpoint}"
    _, rpm, tpm = _counters(request)[which]
    if status % 2 == 0:
        return refusal(f"{what}: requests", rpm or 0, reset_r / 1000, headers)
    return refusal(f"{what}: tokens", tpm or 0, reset_t / 1000, headers)


def ticket_copy(ticket: Ticket) -> Ticket:
    return Ticket(ticket.key, None, 0, ticket.period, ticket.budgeted)
