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
    "Counters",
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
    if seconds < 1:  # a big bucket refills what one request took in milliseconds
        return b"%dms" % round(seconds * 1000) if seconds > 0 else b"0ms"
    if seconds <= 600:
        return _WHOLE[math.ceil(seconds)]
    return reset_text(seconds).encode()


_LIMIT_R, _LEFT_R, _RESET_R = (
    b"x-ratelimit-limit-requests",
    b"x-ratelimit-remaining-requests",
    b"x-ratelimit-reset-requests",
)
_LIMIT_T, _LEFT_T, _RESET_T = (
    b"x-ratelimit-limit-tokens",
    b"x-ratelimit-remaining-tokens",
    b"x-ratelimit-reset-tokens",
)


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
            (_LIMIT_R, b"%d" % rpm),
            (_LEFT_R, b"%d" % max(0, left_requests)),
            (_RESET_R, _reset(reset_requests)),
        )
    if tpm is not None:
        out += (
            (_LIMIT_T, b"%d" % tpm),
            (_LEFT_T, b"%d" % max(0, int(left_tokens))),
            (_RESET_T, _reset(reset_tokens)),
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


class Counters:
    """One limited party's counters, found with one look-up: a key's, or an end user's on an
    endpoint. Requests: a sliding window of their times, at most ``rpm`` in any `WINDOW`
    seconds. Tokens: a bucket of ``tpm``, refilled at ``tpm`` per `WINDOW`, that may owe tokens
    (settling takes what a request used beyond its reservation). And the constant half of the
    rate-limit headers they report. One method takes both, the request's hot path."""

    __slots__ = ("level", "limit_r", "limit_t", "rpm", "stamp", "times", "tpm")

    def __init__(self, rpm: int | None, tpm: int | None, now: float) -> None:
        self.rpm, self.tpm = rpm, tpm
        self.times: deque[float] = deque()  # admitted requests' times, oldest first
        self.level = float(tpm or 0)  # tokens in the bucket
        self.stamp = now  # when the level was last brought up to date
        self.limit_r = (_LIMIT_R, b"%d" % (rpm or 0))
        self.limit_t = (_LIMIT_T, b"%d" % (tpm or 0))

    def take(
        self, tokens: int, now: float
    ) -> tuple[list[tuple[bytes, bytes]], str | None, int, float]:
        """Take one request and ``tokens``: (headers, None, 0, 0.0) when admitted; else
        (headers, "requests" or "tokens", the limit, seconds to wait), nothing taken. A request
        larger than the bucket is admitted when the bucket is full (it could never fit)."""
        headers: list[tuple[bytes, bytes]] = []
        rpm, tpm = self.rpm, self.tpm
        left_r, reset_r = 0, 0.0
        if rpm is not None:
            times = self.times
            while times and times[0] <= now - WINDOW:
                times.popleft()
            if len(times) >= rpm:
                reset_r = times[0] + WINDOW - now
                return headers_for(rpm, 0, reset_r, tpm, 0, 0), "requests", rpm, reset_r
            times.append(now)
            left_r, reset_r = rpm - len(times), times[0] + WINDOW - now
            headers += (self.limit_r, (_LEFT_R, b"%d" % left_r), (_RESET_R, _reset(reset_r)))
        if tpm is not None:
            rate = tpm / WINDOW
            level = self.level + (now - self.stamp) * rate
            if level > tpm:
                level = float(tpm)
            self.stamp = now
            need = tokens if tokens < tpm else tpm
            if level < need:
                self.level = level
                if rpm is not None:
                    self.times.pop()
                wait = (need - level) / rate
                return headers_for(rpm, left_r, reset_r, tpm, level, wait), "tokens", tpm, wait
            self.level = level = level - tokens
            left = b"%d" % level if level > 0 else b"0"
            headers += (self.limit_t, (_LEFT_T, left), (_RESET_T, _reset((tpm - level) / rate)))
        return headers, None, 0, 0.0

    def give(self, tokens: float, now: float) -> None:
        """Put ``tokens`` back in the bucket (negative: take them, the bucket may owe)."""
        tpm = self.tpm
        if tpm is not None:
            level = min(float(tpm), self.level + (now - self.stamp) * (tpm / WINDOW))
            self.level = min(float(tpm), level + tokens)
            self.stamp = now

    def give_back(self, tokens: int, now: float) -> None:
        """Undo a `take` (a later counter refused the request)."""
        if self.rpm is not None:
            self.times.pop()
        self.give(tokens, now)


class LocalQuotas:
    """The counters of one process (a single gateway, or a fallback when Redis is away)."""

    def __init__(self) -> None:
        self.keys: dict[str, Counters] = {}  # by key name
        self.users: dict[str, Counters] = {}  # by `Admission.user_counter`
        self.spend: dict[tuple[str, float], float] = {}

    def seed_spend(self, key: str, period: str, amount: float) -> None:
        """What the ledger says ``key`` spent in its current period (at start-up)."""
        start = period_start(period, time.time())
        self.spend[(key, start)] = max(self.spend.get((key, start), 0.0), amount)

    def spent(self, key: str, period: str) -> float:
        return self.spend.get((key, period_start(period, time.time())), 0.0)

    @staticmethod
    def _counters(
        table: dict[str, Counters], name: str, rpm: int | None, tpm: int | None, now: float
    ) -> Counters:
        counters = table.get(name)
        if counters is None or counters.rpm != rpm or counters.tpm != tpm:
            counters = table[name] = Counters(rpm, tpm, now)  # new limits count afresh
        return counters

    async def admit(self, request: Admission) -> Decision:
        return self.admit_now(request, time.monotonic(), time.time())

    def admit_now(self, request: Admission, now: float, wall: float) -> Decision:
        key = request.key
        if key.budget is not None:
            start = period_start(key.budget_period, wall)
            spent = self.spend.get((key.name, start), 0.0)
            if spent >= key.budget:
                return over_budget(key, spent, start + PERIODS[key.budget_period] - wall)
        tokens = request.tokens
        mine = self._counters(self.keys, key.name, key.rpm, key.tpm, now)
        headers, over, limit, retry = mine.take(tokens, now)
        if over is not None:
            return refusal(f"{_who(request, 0)}: {over}", limit, retry, headers)
        user = request.user_counter()
        if user is not None:
            theirs = self._counters(self.users, user, request.user_rpm, request.user_tpm, now)
            own, over, limit, retry = theirs.take(tokens, now)
            headers = headers or own  # the key's own counters are what the headers report
            if over is not None:
                mine.give_back(tokens, now)
                return refusal(f"{_who(request, 1)}: {over}", limit, retry, headers)
        ticket = Ticket(key.name, user, tokens, key.budget_period, key.budget is not None)
        return Decision(ticket, None, headers)

    async def settle(self, ticket: Ticket, tokens: int, cost: float) -> None:
        self.settle_now(ticket, tokens, cost, time.monotonic(), time.time())

    def settle_now(self, ticket: Ticket, tokens: int, cost: float, now: float, wall: float) -> None:
        if ticket.settled:
            return
        ticket.settled = True
        back = ticket.reserved - tokens  # negative: the bucket owes tokens
        counters = self.keys.get(ticket.key)
        if counters is not None:
            counters.give(back, now)
        if ticket.user is not None:
            counters = self.users.get(ticket.user)
            if counters is not None:
                counters.give(back, now)
        if ticket.budgeted and cost:
            slot = (ticket.key, period_start(ticket.period, wall))
            self.spend[slot] = self.spend.get(slot, 0.0) + cost
