"""The router: order a request's targets by its route's strategy, skip what is down, retry and fall
back, within the request's time limits.

For each route of the plan (its own, then its fallbacks) the strategy orders the options; options
whose last health probe failed go last. An option is skipped while its circuit is open or its
queue is full. A failure that allows it is retried on the same backend (the route's retry policy:
backoff with jitter, Retry-After honoured), then the next option is tried. A stream is committed
to a backend only once its first chunk has arrived; a failure before that is retried or falls
back like any other, a failure after it reaches the client as an error event, or, on a route
with ``stream_failover: continue``, is continued on the next target (`failover`). When every option
is cooling down the request waits up to ``recovery_wait`` for the first to recover, then gets 503
with Retry-After; when every queue is full, 429 with Retry-After.

No locks and no probes here: live numbers are counters on the event loop thread, and health is
one attribute read of the monitor's published snapshot.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

from ..errors import CapabilityError, GatewayError, NoBackendAvailableError
from ..providers.base import Kind, Provider
from ..telemetry.record import Trace
from ..wire.openai import CAPABILITY_PARAM
from ..wire.types import JSON, Call, Chunk, Native
from .attempt import Attempts, Backend, Committed, Expired, failure_class, request_timeout
from .breaker import Admission
from .catalog import Catalog, Target
from .failover import continuable, failover
from .health import HealthMonitor
from .routes import Option, RetryPolicy, Route, RouteTable
from .strategies import STRATEGIES, Pick, unfit

__all__ = ["Backend", "Router", "failure_class"]

T = TypeVar("T")

_PARAM = {**CAPABILITY_PARAM, "context_length": "messages"}


class _Run:
    """One request while the router works on it."""

    __slots__ = (
        "blocked",
        "body",
        "deadline",
        "full",
        "kind",
        "last",
        "native",
        "offered",
        "pick",
        "stream",
        "total",
        "trace",
        "tried",
        "unable",
    )

    def __init__(
        self,
        kind: Kind,
        body: JSON,
        stream: bool,
        trace: Trace,
        total: float | None,
        deadline: float | None,
        pick: Pick,
        native: Native | None = None,
    ) -> None:
        self.kind, self.body, self.stream, self.trace, self.pick = kind, body, stream, trace, pick
        self.native = native  # the client's own request, for a backend that speaks its dialect
        self.total, self.deadline = total, deadline
        self.last: GatewayError | None = None
        self.unable: CapabilityError | None = None  # the first backend that could not do it
        self.blocked: list[Backend] = []  # circuit open or cooling down
        self.full: list[Backend] = []  # every slot taken, queue full
        self.offered = self.tried = False


class Router:
    def __init__(
        self,
        catalog: Catalog,
        *,
        backoff_base: float = 0.1,
        backoff_cap: float = 2.0,
        retry_after_cap: float = 10.0,
        recovery_wait: float = 2.0,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self.catalog = catalog
        self.routes = RouteTable(catalog)
        self.defaults = RetryPolicy(None, backoff_base, backoff_cap, recovery_wait=recovery_wait)
        self.retry_after_cap = retry_after_cap
        self.health: HealthMonitor | None = None  # set by the gateway when the monitor runs
        self._rng = rng
        self._backends: dict[str, Backend] = {}
        self.attempts = Attempts()
        self._turns: dict[str, int] = {}
        # What strategies may weigh, bound once rather than per request.
        self._signals = (self._load, self.attempts.average, self._saturated, self._usable)

    # Live state.

    def backend(self, provider: Provider) -> Backend:
        state = self._backends.get(provider.name)
        if state is None or state.provider is not provider:
            state = self._backends[provider.name] = Backend(provider)
        return state

    def live(self) -> dict[str, dict[str, object]]:
        """Circuit and concurrency of every backend, for ``/stats`` and ``/metrics``."""
        return {name: self.backend(p).live() for name, p in self.catalog.providers.items()}

    def probe_result(self, name: str, ok: bool) -> None:
        """The health monitor reached a backend (an open circuit may try a request at once), or
        did not (failures held as one client's are confirmed: the circuit opens)."""
        state = self._backends.get(name)
        if state is not None:
            if ok:
                state.breaker.probe_ok()
            else:
                state.breaker.probe_failed()

    def _load(self, option: Option) -> float:
        return self.backend(option.target.provider).limiter.load()

    def _usable(self, option: Option) -> bool:
        backend = self.backend(option.target.provider)
        healthy = self.health is None or self.health.snapshot.ok(option.name)
        return healthy and not backend.limiter.full() and not backend.breaker.retry_in()

    def _saturated(self, option: Option) -> bool:
        return self.backend(option.target.provider).limiter.saturated()

    # Routing.

    async def complete(
        self, kind: Kind, body: JSON, *, trace: Trace | None = None, native: Native | None = None
    ) -> tuple[JSON, Target]:
        """The reply, from the first target that gives one; a `Relayed` one (``trace.
        passthrough``) when that target was sent ``native``, the client's own request."""
        result, target, _ = await self._route(
            kind, body, False, trace or Trace(), self.attempts.complete, native=native
        )
        return result, target

    async def stream(
        self, kind: Kind, body: JSON, *, trace: Trace | None = None, native: Native | None = None
    ) -> tuple[AsyncIterator[Chunk], Target]:
        trace = trace or Trace()
        chunks, target, route = await self._route(
            kind, body, True, trace, self.attempts.stream, native=native
        )
        # only then is the text kept; a relayed stream is in a dialect no other target continues
        if route.stream_failover and continuable(kind, body) and not trace.passthrough:
            return failover(self, kind, body, trace, chunks, target), target
        return chunks, target

    async def resume(
        self, kind: Kind, body: JSON, trace: Trace, skip: frozenset[str], deadline: float | None
    ) -> tuple[Committed, Target]:
        """A stream for the continuation of an answer (`failover`): routed like any stream,
        within the request's own ``deadline``, on any target but those in ``skip``."""
        chunks, target, _ = await self._route(
            kind, body, True, trace, self.attempts.stream, skip, deadline
        )
        return chunks, target

    def delay(
        self, attempt: int, error: GatewayError | None, policy: RetryPolicy | None = None
    ) -> float:
        """Exponential backoff with equal jitter (between half and all of the step); a backend's
        Retry-After wins when it is given and the policy honours it."""
        policy = policy or self.defaults
        if error is not None and error.retry_after is not None and policy.honour_retry_after:
            return min(error.retry_after, self.retry_after_cap)
        ceiling: float = min(policy.backoff_cap, policy.backoff_base * 2.0 ** (attempt - 1))
        return ceiling / 2 + self._rng() * ceiling / 2

    async def _route(
        self,
        kind: Kind,
        body: JSON,
        stream: bool,
        trace: Trace,
        once: Callable[..., Awaitable[T]],
        skip: frozenset[str] = frozenset(),
        deadline: float | None = None,
        native: Native | None = None,
    ) -> tuple[T, Target, Route]:
        routes = await self.routes.plan(body["model"])
        loop = asyncio.get_running_loop()
        total = trace.timeout or routes[0].total
        pick = Pick(kind, body, stream, self._rng, 0, *self._signals)
        run = _Run(kind, body, stream, trace, total, deadline or _deadline(total), pick, native)
        recover_by: float | None = None  # set when every option first turns out to be cooling
        while True:
            run.blocked, run.full, run.offered, run.tried = [], [], False, False
            for route in routes:
                ordered = self._order(route, pick, skip)
                run.offered = run.offered or bool(ordered)
                for option in self._healthy_first(ordered):
                    found = await self._on(option, route, run, once)
                    if found is not None:
                        return found[0], option.target, routes[0]
            if run.tried:
                failure = run.last or run.unable
                assert failure is not None
                raise failure  # a backend's failure says more than another one's inability
            if not run.offered:
                raise _unfit_error(body["model"], routes, pick)
            wait = min((b.breaker.retry_in() for b in run.blocked), default=math.inf)
            if recover_by is None:
                recover_by = loop.time() + (routes[0].retry or self.defaults).recovery_wait
                if run.deadline is not None:
                    recover_by = min(recover_by, run.deadline)
            if run.blocked and loop.time() + wait <= recover_by:
                t = time.perf_counter()
                await asyncio.sleep(max(wait, 0.01))  # the first circuit to half-open
                trace.wait_s += time.perf_counter() - t
                continue
            if run.full:
                first = run.full[0]
                raise first.limiter.refuse(first.provider.name, first.pace)
            raise _unavailable(body["model"], run.blocked, wait)

    def _order(self, route: Route, pick: Pick, skip: frozenset[str]) -> list[Option]:
        """The route's options in the order its strategy gives, less those in ``skip``."""
        if route.strategy == "round_robin":
            pick.turn = self._turns.get(route.name, 0)
            self._turns[route.name] = pick.turn + 1
        ordered = STRATEGIES[route.strategy](route.options, pick)
        return [o for o in ordered if o.name not in skip] if skip else ordered

    async def _on(
        self, option: Option, route: Route, run: _Run, once: Callable[..., Awaitable[T]]
    ) -> tuple[T] | None:
        """Try one option, with the route's retries; None when the next option should be tried."""
        provider = option.target.provider
        missing = provider.capabilities(option.target.model).lacks(run.pick.needs())
        if missing:  # the one place fitness is decided: a provider is never sent what it lacks
            run.tried = True
            run.unable = run.unable or provider.refusal(option.target.model, missing, run.body)
            return None
        backend = self.backend(provider)
        if backend.limiter.full():
            run.full.append(backend)
            return None
        admission = backend.breaker.admit()
        if admission is Admission.REFUSED:
            run.blocked.append(backend)
            return None
        run.tried = True
        trial = admission is Admission.TRIAL
        policy = route.retry or self.defaults
        retries = provider.config.max_retries if policy.max_retries is None else policy.max_retries
        call = Call(run.kind, run.body, option.target.model, run.stream)
        trace = run.trace
        first_token = trace.first_token_timeout or route.first_token or backend.first_token
        for attempt in range(retries + 1):
            if attempt and not await self._again(attempt, backend, policy, run):
                return None
            if run.native is not None:  # asked each attempt: a backend may learn it cannot
                call.native = run.native if provider.relays(call, run.native) else None
            try:
                value = await once(option, call, backend, trial, first_token, run.deadline, trace)
            except Expired:
                raise request_timeout(run.total, run.last, provider.name) from None
            except CapabilityError as exc:  # this backend cannot do it; the next one may
                run.unable = run.unable or exc
                return None
            except GatewayError as exc:
                run.last, trial = exc, False
                if not (exc.retryable or exc.fallback):
                    raise  # the request itself is wrong: no backend will take it
                if not _retry(exc, policy, self.retry_after_cap):
                    return None
                continue
            trace.backend, trace.served = provider.name, option.target.model
            trace.price_in, trace.price_out = option.price_in, option.price_out
            trace.passthrough = call.native is not None
            return (value,)
        return None

    async def _again(self, attempt: int, backend: Backend, policy: RetryPolicy, run: _Run) -> bool:
        """Wait before a retry; False when the backend should be left alone after all."""
        wait = self.delay(attempt, run.last, policy)
        if run.deadline is not None and _time_left(run.deadline) <= wait:
            raise request_timeout(run.total, run.last, backend.provider.name)
        if wait > 0:
            t = time.perf_counter()
            await asyncio.sleep(wait)
            run.trace.wait_s += time.perf_counter() - t
        if not backend.breaker.closed:
            return False  # this request's failures opened it
        if backend.limiter.full():
            run.full.append(backend)
            return False
        return True

    def _healthy_first(self, ordered: list[Option]) -> list[Option]:
        if self.health is None:
            return ordered
        snapshot = self.health.snapshot
        if all(snapshot.ok(o.name) for o in ordered):
            return ordered
        return [o for o in ordered if snapshot.ok(o.name)] + [
            o for o in ordered if not snapshot.ok(o.name)
        ]

    # One attempt on one backend.


def _retry(exc: GatewayError, policy: RetryPolicy, retry_after_cap: float) -> bool:
    kind = failure_class(exc)
    if kind not in policy.retry_on or not (exc.retryable or kind == "model_not_found"):
        return False
    if exc.retry_after is not None and policy.honour_retry_after:
        return exc.retry_after <= retry_after_cap  # beyond it: the next backend, at once
    return True


def _deadline(total: float | None) -> float | None:
    return asyncio.get_running_loop().time() + total if total else None


def _time_left(deadline: float) -> float:
    return deadline - asyncio.get_running_loop().time()


def _unavailable(model: str, blocked: list[Backend], wait: float) -> NoBackendAvailableError:
    parts = []
    for state in blocked:
        breaker = state.breaker
        if breaker.closed:
            why = "rate limited, waiting out its Retry-After"
        else:
            why = f"circuit {breaker.state.value} after {breaker.consecutive} failures"
            if breaker.last_error:
                why += f" (last: {breaker.last_error})"
        parts.append(f"'{state.provider.name}': {why}")
    seconds = max(1, math.ceil(wait)) if math.isfinite(wait) else 5
    listing = "; ".join(parts) or "no target is enabled"
    return NoBackendAvailableError(
        f"No backend for '{model}' is available now ({listing}). Retry in {seconds}s.",
        retry_after=seconds,
    )


def _unfit_error(model: str, routes: list[Route], pick: Pick) -> CapabilityError:
    reasons = []
    lacking: list[str] = []
    for route in routes:
        for option in route.options:
            missing = unfit(option, pick)
            lacking.extend(missing)
            reasons.append(f"{option.target.address} lacks {', '.join(missing) or 'nothing'}")
    param = _PARAM.get(lacking[0], "model") if lacking else "model"
    return CapabilityError(
        f"No backend for '{model}' can serve this request: {'; '.join(reasons)}.", param=param
    )
