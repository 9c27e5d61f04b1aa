"""Per-key and per-user limits, sans I/O: requests per minute (a sliding window: never more than
``rpm`` in any 60 s), tokens per minute (a token bucket: a request reserves its estimate before
the call and settles with the real count after it; the bucket may go into debt, so a limit lags
by at most one request) and a spend budget per period (a soft cap: the request that crosses it
completes; the next one is refused).

`LocalQuotas` keeps the counters in this process; `turnout/store/shared.py` keeps the same
counters in Redis for several instances, with one atomic script per check. Both answer a
`Decision` that carries OpenAI's ``x-ratelimit-*`` headers.
"""

from __future__ import annotations

import math
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Protocol

from ..errors import GatewayError
from .keys import PERIODS, KeyRecord, period_start

__all__ = [
    "WINDOW",
    "Admission",
    "Decision",
    "LocalQuotas",
    "Quotas",
    "RateLimitError",
    "Ticket",
    "reset_text",
]

WINDOW = 60.0  # seconds: "per minute"


class RateLimitError(GatewayError):
    """A key or end user over its requests, tokens or budget: 429 with Retry-After."""

    status = 429
    type = "rate_limit_error"
    code = "rate_limit_exceeded"

    def __init__(self, message: str, *, headers: list[tuple[bytes, bytes]], **kw: object) -> None:
        super().__init__(message, **kw)  # type: ignore[arg-type]
        self.rate_headers = headers

    def headers(self) -> dict[str, str]:
        out = super().headers()
        for name, value in self.rate_headers:
            out[name.decode()] = value.decode()
        return out


@dataclass(slots=True)
class Admission:
    """What one request asks of the limits."""

    key: KeyRecord
    user: str | None
    endpoint: str  # chat, completion, embedding
    tokens: int  # reserved: max_tokens plus an estimate of the prompt
    user_rpm: int | None = None
    user_tpm: int | None = None

    def user_counter(self) -> str | None:
        """The end user's counter (key, user, endpoint) when users are limited, else None."""
        if self.user is None or not (self.user_rpm or self.user_tpm):
            return None
        return f"{self.key.name}\0{self.user}\0{self.endpoint}"


@dataclass(slots=True)
class Ticket:
    """An admitted request's reservation, settled once with what it really used."""

    key: str
    user: str | None  # the user counter's name, when users are limited
    reserved: int
    period: str
    budgeted: bool
    settled: bool = False


@dataclass(slots=True)
class Decision:
    ticket: Ticket | None
    error: RateLimitError | None
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)


class Quotas(Protocol):
    async def admit(self, request: Admission) -> Decision: ...

    async def settle(self, ticket: Ticket, tokens: int, cost: float) -> None: ...

    def spent(self, key: str, period: str) -> float: ...


def reset_text(seconds: float) -> str:
    """OpenAI's spelling of a reset time: ``6s``, ``1m30s``, ``250ms``."""
    if seconds < 1:
        return f"{max(0, round(seconds * 1000))}ms"
    whole = math.ceil(seconds)
    minutes, secs = divmod(whole, 60)
    return f"{minutes}m{secs}s" if minutes else f"{secs}s"


#: `reset_text` of each whole second up to ten minutes, as header values (every response of a
#: limited key carries two)
_WHOLE = [reset_text(s).encode() for s in range(601)]


def _reset(seconds: float) -> bytes:
    if 1 <= seconds <= 600:
        return _WHOLE[math.ceil(seconds)]
    return reset_text(seconds).encode()


def headers_for(
    rpm: int | None,
    left_requests: int,
    reset_requests: float,
    tpm: int | None,
    left_tokens: float,
    reset_tokens: float,
) -> list[tuple[bytes, bytes]]:
    out: list[tuple[bytes, bytes]] = []
    if rpm is not None:
        out += (
            (b"x-ratelimit-limit-requests", b"%d" % rpm),
            (b"x-ratelimit-remaining-requests", b"%d" % max(0, left_requests)),
            (b"x-ratelimit-reset-requests", _reset(reset_requests)),
        )
    if tpm is not None:
        out += (
            (b"x-ratelimit-limit-tokens", b"%d" % tpm),
            (b"x-ratelimit-remaining-tokens", b"%d" % max(0, int(left_tokens))),
            (b"x-ratelimit-reset-tokens", _reset(reset_tokens)),
        )
    return out


def refusal(what: str, limit: int, retry: float, headers: list[tuple[bytes, bytes]]) -> Decision:
    return Decision(
        None,
        RateLimitError(
            f"{what} is over its limit of {limit} per minute; retry after {math.ceil(retry)} s.",
            headers=headers,
            retry_after=max(retry, 0.001),
        ),
        headers,
    )


def over_budget(key: KeyRecord, spent: float, reset: float) -> Decision:
    err = RateLimitError(
        f"key '{key.name}' has spent {spent:.4f} of its budget of {key.budget} for the "
        f"{key.budget_period} period; it resets in {math.ceil(reset)} s.",
        headers=[],
        code="budget_exceeded",
        retry_after=reset,
    )
    return Decision(None, err, [])


def _who(request: Admission, counter: int) -> str:
    """What a refusal names: the key (counter 0) or the end user on the endpoint."""
    if counter == 0:
        return f"key '{request.key.name}'"
    return f"user '{request.user}' on {request.endpoint}"


class Window:
    """Sliding window of request times: at most ``limit`` in any `WINDOW` seconds."""

    __slots__ = ("limit", "times")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.times: deque[float] = deque()

    def take(self, now: float) -> tuple[bool, int, float]:
        """(admitted, remaining, seconds until a slot frees)"""
        times = self.times
        while times and times[0] <= now - WINDOW:
            times.popleft()
        if len(times) >= self.limit:
            return False, 0, times[0] + WINDOW - now
        times.append(now)
        reset = times[0] + WINDOW - now
        return True, self.limit - len(times), reset


class Bucket:
    """Token bucket of ``capacity`` tokens, refilled at capacity per `WINDOW`; may owe tokens."""

    __slots__ = ("capacity", "level", "stamp")

    def __init__(self, capacity: int, now: float) -> None:
        self.capacity = capacity
        self.level = float(capacity)
        self.stamp = now

    def _refill(self, now: float) -> None:
        rate = self.capacity / WINDOW
        self.level = min(float(self.capacity), self.level + (now - self.stamp) * rate)
        self.stamp = now

    def take(self, n: int, now: float) -> tuple[bool, float, float]:
        """(admitted, tokens left, seconds until ``n`` would fit); a request larger than the
        bucket is admitted when the bucket is full (it could never fit otherwise)."""
        self._refill(now)
        need = min(n, self.capacity)
        rate = self.capacity / WINDOW
        if self.level < need:
            return False, self.level, (need - self.level) / rate
        self.level -= n
        return True, self.level, (self.capacity - self.level) / rate

    def give(self, n: float, now: float) -> None:
        self._refill(now)
        self.level = min(float(self.capacity), self.level + n)


class LocalQuotas:
    """The counters of one process (a single gateway, or a fallback when Redis is away)."""

    def __init__(self) -> None:
        self.windows: dict[str, Window] = {}
        self.buckets: dict[str, Bucket] = {}
        self.spend: dict[tuple[str, float], float] = {}

    def seed_spend(self, key: str, period: str, amount: float) -> None:
        """What the ledger says ``key`` spent in its current period (at start-up)."""
        start = period_start(period, time.time())
        self.spend[(key, start)] = max(self.spend.get((key, start), 0.0), amount)

    def spent(self, key: str, period: str) -> float:
        return self.spend.get((key, period_start(period, time.time())), 0.0)

    def _window(self, name: str, limit: int) -> Window:
        window = self.windows.get(name)
        if window is None or window.limit != limit:
            window = self.windows[name] = Window(limit)
        return window

    def _bucket(self, name: str, limit: int, now: float) -> Bucket:
        bucket = self.buckets.get(name)
        if bucket is None or bucket.capacity != limit:
            bucket = self.buckets[name] = Bucket(limit, now)
        return bucket

    async def admit(self, request: Admission) -> Decision:
        return self.admit_now(request, time.monotonic(), time.time())

    def admit_now(self, request: Admission, now: float, wall: float) -> Decision:
        key = request.key
        if key.budget is not None:
            start = period_start(key.budget_period, wall)
            spent = self.spend.get((key.name, start), 0.0)
            if spent >= key.budget:
                return over_budget(key, spent, start + PERIODS[key.budget_period] - wall)
        user = request.user_counter()
        headers: list[tuple[bytes, bytes]] = []
        taken: list[tuple[str, int]] = []  # (counter, tokens taken; -1: a window's entry)
        for i, (name, rpm, tpm) in enumerate(
            ((f"k\0{key.name}", key.rpm, key.tpm),)
            if user is None
            else (
                (f"k\0{key.name}", key.rpm, key.tpm),
                (f"u\0{user}", request.user_rpm, request.user_tpm),
            )
        ):
            left_r, reset_r, left_t, reset_t = 0, 0.0, 0.0, 0.0
            if rpm is not None:
                ok, left_r, reset_r = self._window(name, rpm).take(now)
                if not ok:
                    self._undo(taken, now)
                    hdrs = headers or headers_for(rpm, 0, reset_r, tpm, 0, 0)
                    return refusal(f"{_who(request, i)}: requests", rpm, reset_r, hdrs)
                taken.append((name, -1))
            if tpm is not None:
                ok, left_t, reset_t = self._bucket(name, tpm, now).take(request.tokens, now)
                if not ok:
                    self._undo(taken, now)
                    hdrs = headers or headers_for(rpm, left_r, reset_r, tpm, left_t, reset_t)
                    return refusal(f"{_who(request, i)}: tokens", tpm, reset_t, hdrs)
                taken.append((name, request.tokens))
            if not headers:  # the key's own counters are what the headers report
                headers = headers_for(rpm, left_r, reset_r, tpm, left_t, reset_t)
        ticket = Ticket(key.name, user, request.tokens, key.budget_period, key.budget is not None)
        return Decision(ticket, None, headers)

    def _undo(self, taken: list[tuple[str, int]], now: float) -> None:
        for name, tokens in taken:
            if tokens < 0:
                self.windows[name].times.pop()
            else:
                self.buckets[name].give(tokens, now)

    async def settle(self, ticket: Ticket, tokens: int, cost: float) -> None:
        self.settle_now(ticket, tokens, cost, time.monotonic(), time.time())

    def settle_now(self, ticket: Ticket, tokens: int, cost: float, now: float, wall: float) -> None:
        if ticket.settled:
            return
        ticket.settled = True
        for name in (f"k\0{ticket.key}", f"u\0{ticket.user}" if ticket.user else None):
            bucket = self.buckets.get(name) if name else None
            if bucket is not None:
                bucket.give(ticket.reserved - tokens, now)  # negative: the bucket owes tokens
        if ticket.budgeted and cost:
            slot = (ticket.key, period_start(ticket.period, wall))
            self.spend[slot] = self.spend.get(slot, 0.0) + cost
