"""Limits shared by every gateway instance, in Redis: one Lua script checks and reserves a
request's budget, requests and tokens atomically in one round trip (on Redis's own clock, so
instances need not agree on the time); settling runs off the request path, one pipeline per
telemetry batch. Key revocations travel on a pub/sub channel.

Counters: ``turnout:r:<counter>`` a sorted set of request times (the sliding window),
``turnout:t:<counter>`` a hash {level, stamp} (the token bucket), ``turnout:b:<key>:<period
start>`` the spend of a budget period. Each expires on its own when idle.

When Redis does not answer, ``limits.on_store_error`` decides: ``allow`` (the default) counts in
this process (`LocalQuotas`) and logs a warning; ``deny`` refuses with 503.
"""

from __future__ import annotations

import logging
import time
import uuid
from typing import Any

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

# KEYS: budget, then for each counter (key, user): window, bucket
# ARGV: budget (or -1), member, tokens, then per counter rpm (or -1), tpm (or -1)
# Returns {status, left_requests, reset_requests_ms, left_tokens, reset_tokens_ms, spent}
# status: 0 admitted, 1 budget, 2 + 2*i requests of counter i, 3 + 2*i tokens of counter i
_ADMIT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local window = 60000
local budget = tonumber(ARGV[1])
if budget >= 0 then
  local spent = tonumber(redis.call('GET', KEYS[1]) or '0')
  if spent >= budget then return {1, 0, 0, 0, 0, tostring(spent)} end
end
local member, tokens = ARGV[2], tonumber(ARGV[3])
local n = (#KEYS - 1) / 2
local out = {0, -1, 0, -1, 0, '0'}
local levels = {}
for i = 0, n - 1 do
  local rpm, tpm = tonumber(ARGV[4 + 2 * i]), tonumber(ARGV[5 + 2 * i])
  local wkey, bkey = KEYS[2 + 2 * i], KEYS[3 + 2 * i]
  if rpm >= 0 then
    redis.call('ZREMRANGEBYSCORE', wkey, '-inf', now - window)
    local count = redis.call('ZCARD', wkey)
    if count >= rpm then
      local oldest = redis.call('ZRANGE', wkey, 0, 0, 'WITHSCORES')
      return {2 + 2 * i, 0, tonumber(oldest[2]) + window - now, -1, 0, '0'}
    end
  end
  if tpm >= 0 then
    local state = redis.call('HMGET', bkey, 'level', 'stamp')
    local level, stamp = tonumber(state[1]) or tpm, tonumber(state[2]) or now
    level = math.min(tpm, level + (now - stamp) * tpm / window)
    local need = math.min(tokens, tpm)
    if level < need then
      return {3 + 2 * i, -1, 0, math.floor(level), math.ceil((need - level) * window / tpm), '0'}
    end
    levels[i] = level
  end
end
for i = 0, n - 1 do
  local rpm, tpm = tonumber(ARGV[4 + 2 * i]), tonumber(ARGV[5 + 2 * i])
  local wkey, bkey = KEYS[2 + 2 * i], KEYS[3 + 2 * i]
  if rpm >= 0 then
    redis.call('ZADD', wkey, now, member)
    redis.call('PEXPIRE', wkey, window)
    if i == 0 then
      local count = redis.call('ZCARD', wkey)
      local oldest = redis.call('ZRANGE', wkey, 0, 0, 'WITHSCORES')
      out[2] = rpm - count
      out[3] = tonumber(oldest[2]) + window - now
    end
  end
  if tpm >= 0 then
    local level = levels[i] - tokens
    redis.call('HSET', bkey, 'level', level, 'stamp', now)
    redis.call('PEXPIRE', bkey, window * 2)
    if i == 0 then
      out[4] = math.floor(level)
      out[5] = math.ceil((tpm - level) * window / tpm)
    end
  end
end
return out
"""

# KEYS: bucket of each counter. ARGV: tokens to give back (negative: owed), tpm of each counter
_SETTLE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local back = tonumber(ARGV[1])
for i = 1, #KEYS do
  local tpm = tonumber(ARGV[1 + i])
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
        self.tpm: dict[str, int] = {}  # counter -> its tpm, for settling

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
        key = request.key
        counters = [(f"k:{key.name}", key.rpm, key.tpm)]
        user = None
        if request.user is not None and (request.user_rpm or request.user_tpm):
            user = f"{key.name}\0{request.user}\0{request.endpoint}"
            counters.append((f"u:{user}", request.user_rpm, request.user_tpm))
        budget_key = "turnout:b:-"
        if key.budget is not None:
            start = int(period_start(key.budget_period, time.time()))
            budget_key = f"turnout:b:{key.name}:{start}"
        keys = [budget_key]
        args: list[Any] = [key.budget if key.budget is not None else -1, uuid.uuid4().hex]
        args.append(request.tokens)
        for name, rpm, tpm in counters:
            keys += [f"turnout:r:{name}", f"turnout:t:{name}"]
            args += [rpm if rpm is not None else -1, tpm if tpm is not None else -1]
            if tpm is not None:
                self.tpm[f"turnout:t:{name}"] = tpm
        try:
            status, left_r, reset_r, left_t, reset_t, spent = await self._admit(keys, args)
        except (RedisError, OSError) as exc:
            return await self._unreachable(request, exc)
        headers = headers_for(key.rpm, left_r, reset_r / 1000, key.tpm, left_t, reset_t / 1000)
        if status == 0:
            ticket = Ticket(
                key.name, user, request.tokens, key.budget_period, key.budget is not None
            )
            return Decision(ticket, None, headers)
        if status == 1:
            wall = time.time()
            begun = period_start(key.budget_period, wall)
            return over_budget(key, float(spent), begun + PERIODS[key.budget_period] - wall)
        which = (int(status) - 2) // 2
        what = f"key '{key.name}'" if which == 0 else f"user '{request.user}' on {request.endpoint}"
        _, rpm, tpm = counters[which]
        if int(status) % 2 == 0:
            return refusal(f"{what}: requests", rpm or 0, reset_r / 1000, headers)
        return refusal(f"{what}: tokens", tpm or 0, reset_t / 1000, headers)

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
        """Give back what each request reserved beyond its use, add its cost: one pipeline."""
        pipe = self.redis.pipeline(transaction=False)
        wall = time.time()
        for ticket, tokens, cost in items:
            if ticket.settled:
                continue
            ticket.settled = True
            buckets = [f"turnout:t:k:{ticket.key}"]
            if ticket.user:
                buckets.append(f"turnout:t:u:{ticket.user}")
            buckets = [b for b in buckets if b in self.tpm]
            if buckets and ticket.reserved != tokens:
                back = ticket.reserved - tokens
                await self._settle(buckets, [back, *(self.tpm[b] for b in buckets)], client=pipe)
            if ticket.budgeted and cost:
                start = period_start(ticket.period, wall)
                name = f"turnout:b:{ticket.key}:{int(start)}"
                pipe.incrbyfloat(name, cost)
                pipe.expireat(name, int(start + PERIODS[ticket.period]) + 1)
            self.local.settle_now(ticket_copy(ticket), tokens, cost, time.monotonic(), wall)
        if len(pipe):
            await pipe.execute()


def ticket_copy(ticket: Ticket) -> Ticket:
    return Ticket(ticket.key, None, 0, ticket.period, ticket.budgeted)
