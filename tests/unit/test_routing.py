"""Model addressing (Catalog) and routing (Router) with in-memory providers."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any, ClassVar

import pytest

from turnout.config import ProviderConfig
from turnout.errors import (
    BackendError,
    BackendProtocolError,
    BackendRateLimitedError,
    BackendRejectedError,
    BackendTimeoutError,
    BackendUnavailableError,
    CapabilityError,
    GatewayError,
    ModelNotFoundError,
)
from turnout.providers.base import Health, ModelInfo, Provider
from turnout.routing import Catalog, Router, Target
from turnout.routing.routes import RetryPolicy
from turnout.wire.types import JSON, Call, Capabilities, Chunk

Outcome = JSON | GatewayError | list[Any]


class MemoryProvider(Provider):
    """A provider served from memory: scripted outcomes, counted calls and slots."""

    dialect: ClassVar[str] = "memory"

    def __init__(
        self,
        name: str,
        serves: list[str] | None = None,
        *,
        declared: list[str] | None = None,
        max_retries: int = 0,
        max_concurrency: int | None = None,
        outcomes: list[Outcome] | None = None,
    ) -> None:
        config = ProviderConfig(
            type="openai",
            models=declared or [],
            max_retries=max_retries,
            max_concurrency=max_concurrency,
        )
        super().__init__(name, config)
        self.serves = serves  # None: list_models fails
        self.outcomes = list(outcomes or [])
        self.calls: list[Call] = []
        self.listed = 0
        self.in_use = 0
        self.closed_streams = 0

    async def list_models(self) -> list[ModelInfo]:
        self.listed += 1
        if self.serves is None:
            raise BackendUnavailableError(f"{self.name} is down")
        return [ModelInfo(id=m, owned_by=self.name, created=7) for m in self.serves]

    async def probe(self) -> Health:
        return Health(True)

    def _next(self, call: Call) -> Outcome:
        self.calls.append(call)
        outcome = self.outcomes.pop(0) if self.outcomes else {"served_by": self.name}
        if isinstance(outcome, GatewayError):
            raise outcome
        return outcome

    async def complete(self, call: Call) -> JSON:
        outcome = self._next(call)
        assert isinstance(outcome, dict)
        return {**outcome, "model": call.model}

    async def stream(self, call: Call) -> AsyncIterator[Chunk]:
        outcome = self._next(call)
        assert isinstance(outcome, list)
        try:
            for item in outcome:
                if isinstance(item, GatewayError):
                    raise item
                yield Chunk({"delta": item, "model": call.model})
        finally:
            self.closed_streams += 1

    async def acquire(self) -> None:
        await super().acquire()
        self.in_use += 1

    def release(self) -> None:
        self.in_use -= 1
        super().release()


class RecordingRouter(Router):
    """Records every backoff it would wait, and waits none of it."""

    def __init__(self, catalog: Catalog, **kw: Any) -> None:
        super().__init__(catalog, rng=lambda: 0.5, **kw)
        self.delays: list[float] = []

    def delay(
        self, attempt: int, error: GatewayError | None, policy: RetryPolicy | None = None
    ) -> float:
        self.delays.append(super().delay(attempt, error, policy))
        return 0.0


def catalog(
    *providers: MemoryProvider,
    aliases: dict[str, str] | None = None,
    miss_refresh_seconds: float = 5.0,
) -> Catalog:
    return Catalog(
        {p.name: p for p in providers}, aliases, miss_refresh_seconds=miss_refresh_seconds
    )


async def ready(*providers: MemoryProvider, **kw: Any) -> Catalog:
    cat = catalog(*providers, **kw)
    await cat.refresh()
    return cat


def addresses(targets: list[Target]) -> list[str]:
    return [t.address for t in targets]


def body(model: str = "m") -> JSON:
    return {"model": model, "messages": [{"role": "user", "content": "hi"}]}


# --- Catalog --------------------------------------------------------------------------------


async def test_provider_slash_model() -> None:
    cat = await ready(MemoryProvider("a", ["m", "n"]), MemoryProvider("b", ["m"]))
    assert addresses(await cat.resolve("a/n")) == ["a/n"]
    assert addresses(await cat.resolve("b/m")) == ["b/m"]


async def test_bare_name_in_configured_order_every_time() -> None:
    providers = [MemoryProvider(n, ["shared", n + "-only"]) for n in ("zeta", "alpha", "mid")]
    cat = await ready(*providers)
    for _ in range(50):
        assert addresses(await cat.resolve("shared")) == [
            "zeta/shared",
            "alpha/shared",
            "mid/shared",
        ]
    assert addresses(await cat.resolve("alpha-only")) == ["alpha/alpha-only"]


async def test_declared_models_come_first_and_are_not_repeated() -> None:
    provider = MemoryProvider("a", ["x", "y"], declared=["y", "z"])
    cat = await ready(provider)
    assert cat.served(provider) == ["y", "z", "x"]
    assert addresses(await cat.resolve("z")) == ["a/z"]


async def test_model_name_with_a_slash_that_is_not_a_provider() -> None:
    cat = await ready(MemoryProvider("vllm", ["meta-llama/Llama-3.1-8B"]))
    assert addresses(await cat.resolve("meta-llama/Llama-3.1-8B")) == [
        "vllm/meta-llama/Llama-3.1-8B"
    ]
    assert addresses(await cat.resolve("vllm/meta-llama/Llama-3.1-8B")) == [
        "vllm/meta-llama/Llama-3.1-8B"
    ]


async def test_aliases() -> None:
    cat = await ready(
        MemoryProvider("a", ["m"]),
        MemoryProvider("b", ["m", "big"]),
        aliases={"fast": "b/m", "smart": "big", "everywhere": "m"},
    )
    assert addresses(await cat.resolve("fast")) == ["b/m"]
    assert addresses(await cat.resolve("smart")) == ["b/big"]
    assert addresses(await cat.resolve("everywhere")) == ["a/m", "b/m"]


async def test_provider_slash_unknown_lists_what_it_serves() -> None:
    cat = await ready(MemoryProvider("a", ["m", "n"]), MemoryProvider("b", ["x"]))
    with pytest.raises(ModelNotFoundError) as info:
        await cat.resolve("a/x")
    err = info.value
    assert (err.status, err.code, err.param) == (404, "model_not_found", "model")
    assert err.message == "The model 'x' is not served by provider 'a' (it serves: m, n)."


async def test_unknown_bare_name_lists_available_ids() -> None:
    cat = await ready(
        MemoryProvider("a", ["m"]), MemoryProvider("b", ["x"]), aliases={"fast": "a/m"}
    )
    with pytest.raises(ModelNotFoundError) as info:
        await cat.resolve("gpt-9")
    assert info.value.status == 404
    assert info.value.message == (
        "The model 'gpt-9' does not exist or no configured provider serves it "
        "(available: a/m, b/x, fast)."
    )


async def test_long_listings_are_cut() -> None:
    cat = await ready(MemoryProvider("a", [f"m{i}" for i in range(20)]))
    with pytest.raises(ModelNotFoundError) as info:
        await cat.resolve("nope")
    assert info.value.message.endswith("a/m10, a/m11 and 8 more).")


async def test_nothing_known() -> None:
    cat = await ready(MemoryProvider("a", None))
    with pytest.raises(ModelNotFoundError, match=r"\(available: none known\)"):
        await cat.resolve("m")


async def test_provider_with_unknown_list_forwards_provider_slash_model() -> None:
    down = MemoryProvider("down", None)
    cat = await ready(down, MemoryProvider("up", ["m"]))
    assert cat.known(down) is False
    targets = await cat.resolve("down/anything:7b")
    assert addresses(targets) == ["down/anything:7b"]
    assert targets[0].provider is down
    # a bare name is never guessed onto it
    assert addresses(await cat.resolve("m")) == ["up/m"]


async def test_failed_refresh_keeps_the_previous_answer() -> None:
    provider = MemoryProvider("a", ["m"])
    cat = await ready(provider)
    provider.serves = None
    await cat.refresh()
    assert cat.served(provider) == ["m"]


async def test_refresh_on_miss_finds_a_model_that_appeared() -> None:
    provider = MemoryProvider("a", ["m"])
    cat = await ready(provider, miss_refresh_seconds=0)
    assert provider.listed == 1
    provider.serves = ["m", "new"]
    assert addresses(await cat.resolve("new")) == ["a/new"]
    assert provider.listed == 2
    assert addresses(await cat.resolve("a/new")) == ["a/new"]
    assert provider.listed == 2  # a hit never refreshes


async def test_refresh_on_miss_at_most_once_per_interval() -> None:
    provider = MemoryProvider("a", ["m"])
    cat = catalog(provider, miss_refresh_seconds=3600)
    # Never refreshed yet: the first miss refreshes.
    with pytest.raises(ModelNotFoundError):
        await cat.resolve("new")
    assert provider.listed == 1
    provider.serves = ["m", "new"]
    for _ in range(5):
        with pytest.raises(ModelNotFoundError):
            await cat.resolve("new")
        with pytest.raises(ModelNotFoundError):
            await cat.resolve("a/new")
    assert provider.listed == 1
    await cat.refresh()  # the background refresh
    assert addresses(await cat.resolve("new")) == ["a/new"]


async def test_refresh_bounded_by_timeout() -> None:
    class Hanging(MemoryProvider):
        async def list_models(self) -> list[ModelInfo]:
            await asyncio.Event().wait()
            return []

    cat = catalog(Hanging("h", []), MemoryProvider("a", ["m"]))
    await cat.refresh(timeout=0.05)
    assert addresses(await cat.resolve("m")) == ["a/m"]


async def test_model_objects_and_ids() -> None:
    cat = await ready(
        MemoryProvider("a", ["m"], declared=["d"]),
        MemoryProvider("b", None),
        aliases={"fast": "a/m"},
    )
    assert cat.ids() == ["a/d", "a/m", "fast"]
    objects = cat.model_objects()
    assert [(o["id"], o["owned_by"], o["object"]) for o in objects] == [
        ("a/d", "a", "model"),
        ("a/m", "a", "model"),
        ("fast", "a/m", "model"),
    ]
    assert objects[1]["created"] == 7
    assert isinstance(objects[0]["created"], int)
    assert objects[0]["created"] > 1_600_000_000


# --- Router: completions ------------------------------------------------------------------------


async def test_retry_then_fallback() -> None:
    a = MemoryProvider("a", ["m"], max_retries=2, outcomes=[BackendUnavailableError("down")] * 3)
    b = MemoryProvider("b", ["m"])
    router = RecordingRouter(await ready(a, b), backoff_base=0.1, backoff_cap=2.0)
    result, target = await router.complete("chat", body())
    assert result == {"served_by": "b", "model": "m"}
    assert target.address == "b/m"
    assert len(a.calls) == 3
    assert len(b.calls) == 1
    assert router.delays == pytest.approx([0.075, 0.15])  # attempts 1 and 2, mid-jitter
    assert (a.in_use, b.in_use) == (0, 0)


async def test_retry_succeeds_on_the_same_target() -> None:
    a = MemoryProvider("a", ["m"], max_retries=2, outcomes=[BackendError("HTTP 500")])
    b = MemoryProvider("b", ["m"])
    router = RecordingRouter(await ready(a, b))
    _, target = await router.complete("chat", body())
    assert target.address == "a/m"
    assert (len(a.calls), len(b.calls)) == (2, 0)


async def test_call_carries_the_backend_model_name() -> None:
    a = MemoryProvider("a", ["real"])
    router = RecordingRouter(await ready(a, aliases={"nice": "a/real"}))
    await router.complete("chat", body("nice"))
    call = a.calls[0]
    assert (call.kind, call.model, call.stream) == ("chat", "real", False)
    assert call.body["model"] == "nice"


async def test_no_retry_and_no_fallback_when_rejected() -> None:
    a = MemoryProvider("a", ["m"], max_retries=3, outcomes=[BackendRejectedError("too long")])
    b = MemoryProvider("b", ["m"])
    router = RecordingRouter(await ready(a, b))
    with pytest.raises(BackendRejectedError) as info:
        await router.complete("chat", body())
    assert info.value.backend == "a"
    assert (len(a.calls), len(b.calls)) == (1, 0)
    assert router.delays == []
    assert a.in_use == 0


async def test_capability_error_is_not_retried_but_the_next_backend_may_serve() -> None:
    a = MemoryProvider("a", ["m"], max_retries=3, outcomes=[CapabilityError("no tools")])
    b = MemoryProvider("b", ["m"])
    _, target = await RecordingRouter(await ready(a, b)).complete("chat", body())
    assert target.provider is b
    assert (len(a.calls), len(b.calls)) == (1, 1)


async def test_capability_error_when_no_backend_can() -> None:
    a = MemoryProvider("a", ["m"], max_retries=3, outcomes=[CapabilityError("a: no tools")])
    b = MemoryProvider("b", ["m"], outcomes=[CapabilityError("b: no tools")])
    with pytest.raises(CapabilityError, match="a: no tools"):
        await RecordingRouter(await ready(a, b)).complete("chat", body())
    assert (len(a.calls), len(b.calls)) == (1, 1)


class NoTools(MemoryProvider):
    default_capabilities: ClassVar[Capabilities] = Capabilities(tools=False)


TOOLS = [{"type": "function", "function": {"name": "f"}}]


@pytest.mark.parametrize("stream", [False, True])
async def test_what_a_target_lacks_is_decided_before_it_is_called(stream: bool) -> None:
    a, b = NoTools("a", ["m"]), MemoryProvider("b", ["m"], outcomes=[["hi"]] if stream else [])
    router = RecordingRouter(await ready(a, b))  # the default strategy: priority, not capability
    _, target = await (router.stream if stream else router.complete)(
        "chat", {**body(), "tools": TOOLS, "stream": stream}
    )
    assert target.provider is b
    assert (len(a.calls), len(b.calls)) == (0, 1)
    assert a.in_use == 0
    only = RecordingRouter(await ready(NoTools("a", ["m"])))
    with pytest.raises(CapabilityError) as info:
        await only.complete("chat", {**body(), "tools": TOOLS})
    assert (info.value.param, info.value.status, info.value.fallback) == ("tools", 400, True)
    assert info.value.message == (
        "Backend 'a' cannot serve this request: it lacks tools "
        "(declare it in the configuration if the model can)."
    )


async def test_a_failure_elsewhere_says_more_than_a_capability_error() -> None:
    a = MemoryProvider("a", ["m"], outcomes=[CapabilityError("a: no vision")])
    b = MemoryProvider("b", ["m"], outcomes=[BackendUnavailableError("b is down")])
    with pytest.raises(BackendUnavailableError, match="b is down"):
        await RecordingRouter(await ready(a, b)).complete("chat", body())


async def test_fallback_on_model_not_found_without_retry() -> None:
    a = MemoryProvider("a", ["m"], max_retries=3, outcomes=[ModelNotFoundError("gone")])
    b = MemoryProvider("b", ["m"])
    router = RecordingRouter(await ready(a, b))
    _, target = await router.complete("chat", body())
    assert target.address == "b/m"
    assert (len(a.calls), len(b.calls)) == (1, 1)
    assert router.delays == []


async def test_auth_failure_falls_back_without_retrying_the_same_backend() -> None:
    denied = BackendError("a refused credentials", code="backend_auth_failed")
    denied.retryable = False
    a = MemoryProvider("a", ["m"], max_retries=3, outcomes=[denied])
    b = MemoryProvider("b", ["m"])
    router = RecordingRouter(await ready(a, b))
    _, target = await router.complete("chat", body())
    assert target.address == "b/m"
    assert (len(a.calls), len(b.calls)) == (1, 1)
    assert router.delays == []


async def test_all_targets_fail_raises_the_last_error() -> None:
    a = MemoryProvider("a", ["m"], max_retries=1, outcomes=[BackendUnavailableError("a down")] * 2)
    b = MemoryProvider("b", ["m"], max_retries=0, outcomes=[BackendTimeoutError("b slow")])
    router = RecordingRouter(await ready(a, b))
    with pytest.raises(BackendTimeoutError) as info:
        await router.complete("chat", body())
    assert info.value.message == "b slow"
    assert info.value.backend == "b"
    assert (len(a.calls), len(b.calls)) == (2, 1)


async def test_error_keeps_a_backend_it_already_names() -> None:
    a = MemoryProvider("a", ["m"], outcomes=[BackendRejectedError("x", backend="upstream-x")])
    with pytest.raises(BackendRejectedError) as info:
        await RecordingRouter(await ready(a)).complete("chat", body())
    assert info.value.backend == "upstream-x"


async def test_unknown_model_is_not_routed() -> None:
    a = MemoryProvider("a", ["m"])
    with pytest.raises(ModelNotFoundError):
        await RecordingRouter(await ready(a)).complete("chat", body("other"))
    assert a.calls == []


async def test_retry_after_is_honoured() -> None:
    limited = BackendRateLimitedError("busy", retry_after=1.5)
    a = MemoryProvider("a", ["m"], max_retries=2, outcomes=[limited])
    router = RecordingRouter(await ready(a))
    _, target = await router.complete("chat", body())
    assert target.address == "a/m"
    assert router.delays == [1.5]


async def test_retry_after_beyond_the_cap_falls_back_at_once() -> None:
    limited = BackendRateLimitedError("busy", retry_after=60)
    a = MemoryProvider("a", ["m"], max_retries=2, outcomes=[limited])
    b = MemoryProvider("b", ["m"])
    router = RecordingRouter(await ready(a, b), retry_after_cap=10)
    _, target = await router.complete("chat", body())
    assert target.address == "b/m"
    assert len(a.calls) == 1
    assert router.delays == []


async def test_real_backoff_waits_are_short() -> None:
    a = MemoryProvider("a", ["m"], max_retries=2, outcomes=[BackendUnavailableError("x")] * 2)
    router = Router(await ready(a), backoff_base=0.001, backoff_cap=0.002)
    _, target = await router.complete("chat", body())
    assert target.address == "a/m"
    assert len(a.calls) == 3


# --- Router.delay --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("attempt", "low", "high"),
    [(1, 0.05, 0.1), (2, 0.1, 0.2), (3, 0.2, 0.4), (5, 0.8, 1.6), (6, 1.0, 2.0), (30, 1.0, 2.0)],
)
def test_delay_jitter_bounds(attempt: int, low: float, high: float) -> None:
    def router(rng: Callable[[], float]) -> Router:
        return Router(catalog(), backoff_base=0.1, backoff_cap=2.0, rng=rng)

    assert router(lambda: 0.0).delay(attempt, None) == pytest.approx(low)
    assert router(lambda: 1.0).delay(attempt, None) == pytest.approx(high)
    real = Router(catalog(), backoff_base=0.1, backoff_cap=2.0)
    for _ in range(200):
        assert low <= real.delay(attempt, None) <= high


def test_delay_prefers_retry_after_up_to_the_cap() -> None:
    router = Router(catalog(), retry_after_cap=10.0, rng=lambda: 0.0)
    assert router.delay(1, BackendRateLimitedError("x", retry_after=3.0)) == 3.0
    assert router.delay(1, BackendRateLimitedError("x", retry_after=0.0)) == 0.0
    assert router.delay(1, BackendRateLimitedError("x", retry_after=99.0)) == 10.0
    assert router.delay(1, BackendError("x")) == 0.05


# --- Router: streams ----------------------------------------------------------------------------


async def read_all(stream: AsyncIterator[Chunk]) -> list[Any]:
    return [chunk.data["delta"] async for chunk in stream]


async def test_stream_falls_back_when_failing_before_the_first_chunk() -> None:
    a = MemoryProvider("a", ["m"], max_retries=1, outcomes=[[BackendUnavailableError("x")]] * 2)
    b = MemoryProvider("b", ["m"], outcomes=[["he", "llo"]])
    router = RecordingRouter(await ready(a, b))
    chunks, target = await router.stream("chat", body())
    assert target.address == "b/m"
    assert await read_all(chunks) == ["he", "llo"]
    assert (len(a.calls), len(b.calls)) == (2, 1)
    assert a.calls[0].stream is True
    assert a.closed_streams == 2
    assert (a.in_use, b.in_use) == (0, 0)


async def test_stream_failure_raised_synchronously_releases_the_slot() -> None:
    class Eager(MemoryProvider):
        def stream(self, call: Call) -> AsyncIterator[Chunk]:  # type: ignore[override]
            self.calls.append(call)
            raise CapabilityError("this backend cannot stream")

    a = Eager("a", ["m"], max_concurrency=1)
    with pytest.raises(CapabilityError):
        await RecordingRouter(await ready(a)).stream("chat", body())
    assert a.in_use == 0
    await asyncio.wait_for(a.acquire(), 1)  # the slot is really free


async def test_empty_stream_is_a_protocol_error() -> None:
    a = MemoryProvider("a", ["m"], max_concurrency=1, outcomes=[[]])
    with pytest.raises(BackendProtocolError) as info:
        await RecordingRouter(await ready(a)).stream("chat", body())
    assert info.value.message == "backend 'a' ended the stream before sending anything"
    assert info.value.backend == "a"
    assert a.in_use == 0


async def test_empty_stream_is_retried_and_falls_back() -> None:
    a = MemoryProvider("a", ["m"], max_retries=1, outcomes=[[], []])
    b = MemoryProvider("b", ["m"], outcomes=[["ok"]])
    chunks, target = await RecordingRouter(await ready(a, b)).stream("chat", body())
    assert target.address == "b/m"
    assert await read_all(chunks) == ["ok"]


async def test_failure_after_the_first_chunk_reaches_the_consumer() -> None:
    a = MemoryProvider(
        "a", ["m"], max_concurrency=1, outcomes=[["x", BackendUnavailableError("cut")]]
    )
    b = MemoryProvider("b", ["m"])
    chunks, _ = await RecordingRouter(await ready(a, b)).stream("chat", body())
    got: list[Any] = []
    with pytest.raises(BackendUnavailableError, match="cut"):
        async for chunk in chunks:
            got.append(chunk.data["delta"])
    assert got == ["x"]
    assert b.calls == []
    assert a.in_use == 0


async def test_slot_released_after_success_and_failure() -> None:
    a = MemoryProvider(
        "a", ["m"], max_concurrency=1, outcomes=[{"ok": 1}, BackendRejectedError("no"), ["a"]]
    )
    router = RecordingRouter(await ready(a))
    await router.complete("chat", body())
    assert a.in_use == 0
    with pytest.raises(BackendRejectedError):
        await router.complete("chat", body())
    assert a.in_use == 0
    chunks, _ = await router.stream("chat", body())
    assert a.in_use == 1  # held while the stream is open
    assert await read_all(chunks) == ["a"]
    assert a.in_use == 0


async def test_slot_released_when_the_consumer_stops_early() -> None:
    a = MemoryProvider("a", ["m"], max_concurrency=1, outcomes=[["1", "2", "3"], ["again"]])
    router = RecordingRouter(await ready(a))
    chunks, _ = await router.stream("chat", body())
    assert isinstance(chunks, AsyncIterator)
    first = await anext(chunks)
    assert first.data["delta"] == "1"
    assert a.in_use == 1
    await chunks.aclose()  # type: ignore[attr-defined]
    assert a.in_use == 0
    assert a.closed_streams == 1
    # the single slot is free for the next request at once
    again, _ = await asyncio.wait_for(router.stream("chat", body()), 1)
    assert await read_all(again) == ["again"]


async def test_concurrency_limit_queues_in_order() -> None:
    a = MemoryProvider("a", ["m"], max_concurrency=1, outcomes=[["first"], ["second"]])
    router = RecordingRouter(await ready(a))
    first, _ = await router.stream("chat", body())
    waiting = asyncio.ensure_future(router.stream("chat", body()))
    for _ in range(5):  # let it run as far as it can: up to the semaphore
        await asyncio.sleep(0)
    assert not waiting.done()
    assert len(a.calls) == 1  # the second call never reached the backend
    assert await read_all(first) == ["first"]
    second, _ = await asyncio.wait_for(waiting, 1)
    assert await read_all(second) == ["second"]
    assert a.in_use == 0
