"""The router: try a request's targets in order, retrying retryable failures with backoff.

A stream is committed to a backend only once its first chunk has arrived; a failure before that
is retried or falls back like any other. Each target's concurrency slot is held for the whole
call (for a stream, until it ends or the client goes away).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

from ..errors import BackendProtocolError, GatewayError
from ..providers.base import JSON, Call, Chunk, Provider
from .catalog import Catalog, Target

__all__ = ["Router"]

T = TypeVar("T")


class Router:
    def __init__(
        self,
        catalog: Catalog,
        *,
        backoff_base: float = 0.1,
        backoff_cap: float = 2.0,
        retry_after_cap: float = 10.0,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self.catalog = catalog
        self.backoff_base = backoff_base
        self.backoff_cap = backoff_cap
        self.retry_after_cap = retry_after_cap
        self._rng = rng

    async def complete(self, kind: str, body: JSON) -> tuple[JSON, Target]:
        targets = await self.catalog.resolve(body["model"])
        return await self._attempt(targets, kind, body, False, self._complete_once)

    async def stream(self, kind: str, body: JSON) -> tuple[AsyncIterator[Chunk], Target]:
        targets = await self.catalog.resolve(body["model"])
        return await self._attempt(targets, kind, body, True, self._open_stream)

    def delay(self, attempt: int, error: GatewayError | None) -> float:
        """Exponential backoff with equal jitter (between half and all of the step); a backend's
        Retry-After wins when it is given."""
        if error is not None and error.retry_after is not None:
            return min(error.retry_after, self.retry_after_cap)
        ceiling: float = min(self.backoff_cap, self.backoff_base * 2.0 ** (attempt - 1))
        return ceiling / 2 + self._rng() * ceiling / 2

    async def _attempt(
        self,
        targets: list[Target],
        kind: str,
        body: JSON,
        stream: bool,
        once: Callable[[Provider, Call], Awaitable[T]],
    ) -> tuple[T, Target]:
        last: GatewayError | None = None
        for target in targets:
            call = Call(kind, body, target.model, stream)
            for attempt in range(target.provider.config.max_retries + 1):
                if attempt:
                    await asyncio.sleep(self.delay(attempt, last))
                try:
                    return await once(target.provider, call), target
                except GatewayError as exc:
                    exc.backend = exc.backend or target.provider.name
                    last = exc
                    if not (exc.retryable or exc.fallback):
                        raise  # the request itself is wrong: no backend will take it
                    if not exc.retryable:
                        break  # this backend will not serve it; the next one may
                    if exc.retry_after is not None and exc.retry_after > self.retry_after_cap:
                        break
        assert last is not None, "resolve() never returns an empty target list"
        raise last

    @staticmethod
    async def _complete_once(provider: Provider, call: Call) -> JSON:
        await provider.acquire()
        try:
            return await provider.complete(call)
        finally:
            provider.release()

    @staticmethod
    async def _open_stream(provider: Provider, call: Call) -> AsyncIterator[Chunk]:
        await provider.acquire()
        stream: AsyncIterator[Chunk] | None = None
        try:
            stream = provider.stream(call)  # may raise at once if not an async generator
            first = await anext(stream)
        except StopAsyncIteration:
            provider.release()
            raise BackendProtocolError(
                f"backend '{provider.name}' ended the stream before sending anything",
                backend=provider.name,
            ) from None
        except BaseException:
            provider.release()
            if stream is not None:
                await _close(stream)
            raise
        return _committed(provider, first, stream)


async def _committed(
    provider: Provider, first: Chunk, rest: AsyncIterator[Chunk]
) -> AsyncIterator[Chunk]:
    try:
        yield first
        async for chunk in rest:
            yield chunk
    finally:
        provider.release()
        await _close(rest)


async def _close(stream: AsyncIterator[Chunk]) -> None:
    aclose = getattr(stream, "aclose", None)
    if aclose is not None:
        await aclose()
