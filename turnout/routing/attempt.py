"""One attempt on one backend: take its slot, call it within its time limits, and settle the
outcome (its circuit, the moving averages ``least_latency`` reads, the request's trace). A stream's
attempt lives on in `Committed` until the stream ends, fails or is dropped.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

from ..errors import (
    BackendProtocolError,
    BackendRateLimitedError,
    BackendTimeoutError,
    BackendUnavailableError,
    GatewayError,
    ModelNotFoundError,
)
from ..providers.base import Provider
from ..telemetry.record import Trace
from ..wire.types import JSON, Call, Chunk
from .breaker import Breaker
from .deadlines import timeout_at
from .limits import Limiter
from .routes import Option, is_local

__all__ = [
    "COUNTED",
    "Attempts",
    "Backend",
    "Committed",
    "Expired",
    "close_stream",
    "earliest",
    "failure_class",
    "request_timeout",
]

_ALPHA = 0.3  # weight of the newest sample in the moving averages
#: a stream's first-token timeout when neither the request, its route nor its backend sets one:
#: a local backend may load its model first; a cloud one that is silent this long is stuck
FIRST_TOKEN_LOCAL, FIRST_TOKEN_CLOUD = 120.0, 60.0
COUNTED = frozenset({"connection", "timeout", "5xx", "protocol"})  # what opens a circuit


def failure_class(exc: GatewayError) -> str | None:
    """The retry class of a failure (``retry_on``): connection, timeout, 429, 5xx, protocol,
    model_not_found; None for a request the backend refused."""
    if isinstance(exc, BackendRateLimitedError):
        return "429"
    if isinstance(exc, BackendTimeoutError):
        return "timeout"
    if isinstance(exc, ModelNotFoundError):
        return "model_not_found"
    if isinstance(exc, BackendProtocolError):
        return "protocol"
    if isinstance(exc, BackendUnavailableError):
        return "connection"
    return "5xx" if exc.retryable else None


class Backend:
    """What the router knows, live, about one backend."""

    __slots__ = ("breaker", "first_token", "limiter", "pace", "provider")

    def __init__(self, provider: Provider) -> None:
        config = provider.config
        self.provider = provider
        self.first_token = config.first_token_timeout or (
            FIRST_TOKEN_LOCAL if is_local(provider) else FIRST_TOKEN_CLOUD
        )
        self.breaker = Breaker(config.breaker)
        self.limiter = Limiter(config.max_concurrency, config.queue_size)
        self.pace: float | None = None  # moving average of seconds per call

    def live(self) -> dict[str, object]:
        return {"circuit": self.breaker.snapshot(), "concurrency": self.limiter.snapshot()}


class Expired(Exception):
    """The request's own deadline passed (not one backend's timeout)."""


class Attempts:
    """Runs attempts, and keeps per target the moving averages of their latency."""

    def __init__(self) -> None:
        self.averages: dict[str, list[float | None]] = {}  # address: [total, first token]

    def average(self, option: Option, stream: bool) -> float | None:
        averages = self.averages.get(option.target.address)
        return None if averages is None else averages[1 if stream else 0]

    def observe(self, option: Option, backend: Backend, seconds: float, ttft: float | None) -> None:
        averages = self.averages.setdefault(option.target.address, [None, None])
        for i, sample in ((0, seconds), (1, ttft)):
            if sample is not None:
                old = averages[i]
                averages[i] = sample if old is None else old + _ALPHA * (sample - old)
        backend.pace = (
            seconds if backend.pace is None else backend.pace + _ALPHA * (seconds - backend.pace)
        )

    async def _enter(
        self, backend: Backend, trial: bool, deadline: float | None, trace: Trace
    ) -> None:
        waited = time.perf_counter()
        timer = None if deadline is None else timeout_at(deadline)
        try:
            if timer is None:  # no time limit: no timer to set up and cancel
                await backend.limiter.enter(backend.provider, trace.key, trace.priority)
            else:
                async with timer:
                    await backend.limiter.enter(backend.provider, trace.key, trace.priority)
        except TimeoutError:
            backend.breaker.abandon(trial)
            if timer is not None and timer.expired():
                raise Expired from None
            raise
        except BaseException:
            backend.breaker.abandon(trial)
            raise
        trace.wait_s += time.perf_counter() - waited

    async def complete(
        self,
        option: Option,
        call: Call,
        backend: Backend,
        trial: bool,
        first_token: float | None,
        deadline: float | None,
        trace: Trace,
    ) -> JSON:
        provider = backend.provider
        await self._enter(backend, trial, deadline, trace)
        started = trace.call_started()
        end_at = earliest(deadline, provider.config.total_timeout)
        timer = None if end_at is None else timeout_at(end_at)
        try:
            if timer is None:
                result = await provider.complete(call)
            else:
                async with timer:
                    result = await provider.complete(call)
        except TimeoutError:
            if timer is None or not timer.expired():
                _abandon(backend, trial, trace, started)
                raise
            exc = _timed_out(option, backend, trial, trace, started, deadline, None)
            raise exc from None
        except GatewayError as exc:
            _failed(option, backend, trial, trace, started, exc, None)
            raise
        except BaseException:
            _abandon(backend, trial, trace, started)
            raise
        finally:
            backend.limiter.leave(provider)
        ended = trace.call_ended(started)
        backend.breaker.success(trial, trace.client)
        self.observe(option, backend, ended - started, None)
        trace.attempts.append(
            (provider.name, option.target.model, True, None, ended - started, None)
        )
        return result

    async def stream(
        self,
        option: Option,
        call: Call,
        backend: Backend,
        trial: bool,
        first_token: float | None,
        deadline: float | None,
        trace: Trace,
    ) -> Committed:
        provider = backend.provider
        await self._enter(backend, trial, deadline, trace)
        started = trace.call_started()
        end_at = earliest(deadline, provider.config.total_timeout)
        first_at = earliest(end_at, first_token)
        timer = None if first_at is None else timeout_at(first_at)
        stream: AsyncIterator[Chunk] | None = None
        try:
            stream = provider.stream(call)  # may raise at once if not an async generator
            if timer is None:
                first = await anext(stream)
            else:
                async with timer:
                    first = await anext(stream)
        except BaseException as raised:
            backend.limiter.leave(provider)
            if stream is not None:
                await close_stream(stream)
            if isinstance(raised, StopAsyncIteration):
                empty = BackendProtocolError(
                    f"backend '{provider.name}' ended the stream before sending anything",
                    backend=provider.name,
                )
                _failed(option, backend, trial, trace, started, empty, None)
                raise empty from None
            if isinstance(raised, TimeoutError) and timer is not None and timer.expired():
                late = first_token if first_at != end_at else None
                raise _timed_out(option, backend, trial, trace, started, deadline, late) from None
            if isinstance(raised, GatewayError):
                _failed(option, backend, trial, trace, started, raised, None)
            else:
                _abandon(backend, trial, trace, started)
            raise
        ended = trace.call_ended(started)
        backend.breaker.success(trial, trace.client)  # alive: a trial ends here, not at the end
        trace.ttft_s = ended - started
        return Committed(self, option, backend, first, stream, started, end_at, deadline, trace)


def _failed(
    option: Option,
    backend: Backend,
    trial: bool,
    trace: Trace,
    started: float,
    exc: GatewayError,
    ttft: float | None,
) -> None:
    name = backend.provider.name
    exc.backend = exc.backend or name
    ended = trace.call_ended(started) if trace.started_call is not None else time.perf_counter()
    kind = failure_class(exc)
    if kind in COUNTED:
        backend.breaker.failure(exc.detail, trial, trace.client)
    else:
        backend.breaker.abandon(trial)
        if kind == "429" and exc.retry_after:
            backend.breaker.cool(exc.retry_after)
    trace.attempts.append((name, option.target.model, False, exc.code, ended - started, ttft))


def _abandon(backend: Backend, trial: bool, trace: Trace, started: float) -> None:
    backend.breaker.abandon(trial)
    if trace.started_call is not None:
        trace.call_ended(started)


def _timed_out(
    option: Option,
    backend: Backend,
    trial: bool,
    trace: Trace,
    started: float,
    deadline: float | None,
    first_token: float | None,
) -> BaseException:
    name = backend.provider.name
    if deadline is not None and asyncio.get_running_loop().time() >= deadline - 1e-3:
        _abandon(backend, trial, trace, started)
        trace.attempts.append(
            (
                name,
                option.target.model,
                False,
                "request_timeout",
                time.perf_counter() - started,
                None,
            )
        )
        return Expired()
    if first_token is not None:
        why = f"sent nothing within its first-token timeout of {first_token:g}s"
    else:
        limit = backend.provider.config.total_timeout
        why = f"did not finish within its total_timeout of {limit:g}s"
    exc = BackendTimeoutError(f"backend '{name}' {why}", backend=name)
    _failed(option, backend, trial, trace, started, exc, None)
    return exc


class Committed:
    """The rest of a stream after its first chunk. Holds the backend's slot until the stream ends,
    fails or is closed, then settles the attempt; a stream dropped unread still frees its slot."""

    __slots__ = (
        "_attempts",
        "_backend",
        "_deadline",
        "_done",
        "_end_at",
        "_first",
        "_idle",
        "_option",
        "_rest",
        "_started",
        "_trace",
    )

    def __init__(
        self,
        attempts: Attempts,
        option: Option,
        backend: Backend,
        first: Chunk,
        rest: AsyncIterator[Chunk],
        started: float,
        end_at: float | None,
        deadline: float | None,
        trace: Trace,
    ) -> None:
        self._attempts, self._option, self._backend = attempts, option, backend
        self._first: Chunk | None = first
        self._rest, self._started, self._trace = rest, started, trace
        self._end_at, self._deadline = end_at, deadline
        self._idle = backend.provider.config.idle_timeout
        self._done = False

    def __aiter__(self) -> Committed:
        return self

    @property
    def deadline(self) -> float | None:
        """The request's own deadline (loop time), which a continuation keeps to."""
        return self._deadline

    async def __anext__(self) -> Chunk:
        first = self._first
        if first is not None:
            self._first = None
            return first
        if self._done:
            raise StopAsyncIteration
        # One timer per chunk, at the earlier of the idle limit and the end of the call.
        idle_at = asyncio.get_running_loop().time() + self._idle
        end_at = self._end_at
        timer = timeout_at(idle_at if end_at is None or idle_at < end_at else end_at)
        try:
            async with timer:
                return await anext(self._rest)
        except StopAsyncIteration:
            await self._finish(None)
            raise
        except TimeoutError:
            if not timer.expired():
                await self._finish(None, abandoned=True)
                raise
            exc = self._late(end_at is None or idle_at < end_at)
            await self._finish(exc)
            raise exc from None
        except GatewayError as exc:
            exc.backend = exc.backend or self._backend.provider.name
            await self._finish(exc)
            raise
        except BaseException:
            await self._finish(None, abandoned=True)
            raise

    async def aclose(self) -> None:
        if not self._done:
            await self._finish(None, abandoned=True)

    def _late(self, idle: bool) -> GatewayError:
        name = self._backend.provider.name
        loop_now = asyncio.get_running_loop().time()
        if idle:
            exc = BackendTimeoutError(
                f"backend '{name}' sent nothing for {self._idle:g}s in the middle of a stream "
                "(its idle_timeout)",
                backend=name,
            )
        elif self._deadline is not None and loop_now >= self._deadline - 1e-3:
            exc = request_timeout(None, None, name)
        else:
            limit = self._backend.provider.config.total_timeout
            exc = BackendTimeoutError(
                f"backend '{name}' did not finish within its total_timeout of {limit:g}s",
                backend=name,
            )
        return exc

    async def _finish(self, exc: GatewayError | None, abandoned: bool = False) -> None:
        self._done = True
        backend, option = self._backend, self._option
        backend.limiter.leave(backend.provider)
        seconds = time.perf_counter() - self._started
        ttft = self._trace.ttft_s
        if exc is not None:
            if failure_class(exc) in COUNTED and exc.code != "request_timeout":
                backend.breaker.failure(exc.detail, source=self._trace.client)
            code: str | None = exc.code
        else:
            code = "cancelled" if abandoned else None
            if not abandoned:
                self._attempts.observe(option, backend, seconds, ttft)
        ok = exc is None and not abandoned
        self._trace.attempts.append(
            (backend.provider.name, option.target.model, ok, code, seconds, ttft)
        )
        await close_stream(self._rest)

    def __del__(self) -> None:
        if not self._done:  # never iterated nor closed: give the slot back all the same
            self._done = True
            self._backend.limiter.leave(self._backend.provider)


def request_timeout(
    total: float | None, last: GatewayError | None, backend: str | None
) -> BackendTimeoutError:
    limit = f" of {total:g}s" if total else ""
    cause = f"; last failure: {last.message}" if last is not None else ""
    exc = BackendTimeoutError(
        f"The request did not complete within its timeout{limit}{cause}.",
        code="request_timeout",
        backend=backend,
    )
    exc.retryable = exc.fallback = False
    return exc


def earliest(deadline: float | None, seconds: float | None) -> float | None:
    if seconds is None:
        return deadline
    when = asyncio.get_running_loop().time() + seconds
    return when if deadline is None else min(deadline, when)


async def close_stream(stream: AsyncIterator[Chunk]) -> None:
    aclose = getattr(stream, "aclose", None)
    if aclose is not None:
        await aclose()
