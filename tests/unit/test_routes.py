"""Route groups through the router: targets, fallback chains, retry policies, timeouts, circuits,
and waiting for a cooling backend."""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
import yaml

from tests.unit.test_routing import MemoryProvider, RecordingRouter, body, read_all
from turnout.config import RouteConfig, load_config
from turnout.errors import (
    BackendError,
    BackendRateLimitedError,
    BackendTimeoutError,
    BackendUnavailableError,
    ConfigError,
    ModelNotFoundError,
    NoBackendAvailableError,
)
from turnout.routing import Catalog
from turnout.telemetry import Trace
from turnout.wire.types import JSON, Call, Chunk


def routes(**spec: dict[str, Any]) -> dict[str, RouteConfig]:
    out = {}
    for name, route in spec.items():
        targets = [{"model": "m", **t} for t in route.pop("targets")]
        out[name] = RouteConfig.model_validate({"targets": targets, **route})
    return out


async def router(*providers: MemoryProvider, **spec: dict[str, Any]) -> RecordingRouter:
    catalog = Catalog({p.name: p for p in providers}, routes=routes(**spec))
    await catalog.refresh()
    return RecordingRouter(catalog)


def ask(model: str) -> JSON:
    return body(model)


class Slow(MemoryProvider):
    """Takes ``delay`` seconds to answer, or to send each stream chunk."""

    delay = 0.0

    async def complete(self, call: Call) -> JSON:
        await asyncio.sleep(self.delay)
        return await super().complete(call)

    async def stream(self, call: Call) -> AsyncIterator[Chunk]:
        inner = super().stream(call)
        try:
            async for chunk in inner:
                await asyncio.sleep(self.delay)
                yield chunk
        finally:
            await inner.aclose()  # type: ignore[attr-defined]


async def test_routes_are_listed_and_resolved_like_models() -> None:
    a, b = MemoryProvider("a", ["m"]), MemoryProvider("b", ["m"])
    r = await router(a, b, gemma={"targets": [{"provider": "b"}, {"provider": "a"}]})
    catalog = r.catalog
    assert catalog.ids()[-1] == "gemma"
    assert catalog.model_objects()[-1]["id"] == "gemma"
    assert [t.address for t in await catalog.resolve("gemma")] == ["b/m", "a/m"]
    _, target = await r.complete("chat", ask("gemma"))
    assert target.address == "b/m"
    assert a.calls == [] and b.calls[0].model == "m" and b.calls[0].body["model"] == "gemma"


async def test_an_alias_may_name_a_route_and_targets_take_the_served_spelling() -> None:
    class Tagged(MemoryProvider):
        def matches(self, requested: str, served: str) -> bool:
            return served in (requested, f"{requested}:latest")

    a = Tagged("a", ["llama3.2:latest"])
    catalog = Catalog(
        {"a": a},
        {"fast": "local"},
        routes=routes(local={"targets": [{"provider": "a", "model": "llama3.2"}]}),
    )
    await catalog.refresh()
    _, target = await RecordingRouter(catalog).complete("chat", ask("fast"))
    assert target.address == "a/llama3.2:latest"


async def test_fallback_chain_across_route_groups() -> None:
    local = MemoryProvider("local", ["m"], outcomes=[BackendUnavailableError("local down")])
    lan = MemoryProvider("lan", ["m"], outcomes=[BackendUnavailableError("lan down")])
    cloud = MemoryProvider("cloud", ["m"])
    r = await router(
        local,
        lan,
        cloud,
        chat={"targets": [{"provider": "local"}], "fallbacks": ["near", "far"]},
        near={"targets": [{"provider": "lan"}], "fallbacks": ["far"]},
        far={"targets": [{"provider": "cloud"}]},
    )
    assert [route.name for route in await r.routes.plan("chat")] == ["chat", "near", "far"]
    _, target = await r.complete("chat", ask("chat"))
    assert target.provider is cloud
    assert (len(local.calls), len(lan.calls), len(cloud.calls)) == (1, 1, 1)


async def test_a_disabled_provider_leaves_its_route() -> None:
    a = MemoryProvider("a", ["m"])
    catalog = Catalog(
        {"a": a}, routes=routes(r={"targets": [{"provider": "gone"}, {"provider": "a"}]})
    )
    assert [t.address for t in await catalog.resolve("r")] == ["a/m"]
    empty = Catalog({"a": a}, routes=routes(r={"targets": [{"provider": "gone"}]}))
    with pytest.raises(NoBackendAvailableError, match="Every provider of route 'r' is disabled"):
        await empty.resolve("r")


async def test_route_retry_policy_overrides_the_providers() -> None:
    a = MemoryProvider("a", ["m"], max_retries=0, outcomes=[BackendUnavailableError("x")] * 3)
    r = await router(
        a,
        g={
            "targets": [{"provider": "a"}],
            "retry": {"max_retries": 3, "backoff_base": 1, "backoff_cap": 3},
        },
    )
    _, target = await r.complete("chat", ask("g"))
    assert target.provider is a and len(a.calls) == 4
    assert r.delays == pytest.approx([0.75, 1.5, 2.25])  # the route's backoff, mid-jitter


@pytest.mark.parametrize(
    ("error", "retry_on", "calls"),
    [
        (BackendError("HTTP 500"), ["5xx"], 2),
        (BackendError("HTTP 500"), ["timeout"], 1),
        (BackendTimeoutError("slow"), ["timeout"], 2),
        (BackendUnavailableError("refused"), ["5xx"], 1),
        (ModelNotFoundError("loading"), ["model_not_found"], 2),
        (ModelNotFoundError("gone"), ["connection", "timeout", "429", "5xx"], 1),
        (BackendRateLimitedError("slow down"), [429], 2),
    ],
)
async def test_retry_on_chooses_the_failure_classes(
    error: BackendError, retry_on: list[Any], calls: int
) -> None:
    a = MemoryProvider("a", ["m"], outcomes=[error])
    b = MemoryProvider("b", ["m"])
    r = await router(
        a,
        b,
        g={
            "targets": [{"provider": "a"}, {"provider": "b"}],
            "retry": {"max_retries": 1, "retry_on": retry_on},
        },
    )
    _, target = await r.complete("chat", ask("g"))
    assert len(a.calls) == calls
    assert target.provider is (a if calls == 2 else b)


async def test_honour_retry_after_can_be_turned_off() -> None:
    limited = BackendRateLimitedError("busy", retry_after=7)
    a = MemoryProvider("a", ["m"], outcomes=[limited])
    r = await router(
        a,
        g={
            "targets": [{"provider": "a"}],
            "retry": {"max_retries": 1, "honour_retry_after": False},
        },
    )
    await r.complete("chat", ask("g"))
    assert r.delays == pytest.approx([0.075])  # backoff, not the 7 s


async def test_route_total_timeout_bounds_the_whole_request() -> None:
    a = Slow("a", ["m"], max_retries=5)
    a.delay = 10
    r = await router(a, g={"targets": [{"provider": "a"}], "timeouts": {"total": 0.1}})
    started = time.monotonic()
    with pytest.raises(BackendTimeoutError) as info:
        await r.complete("chat", ask("g"))
    assert time.monotonic() - started < 1
    err = info.value
    assert (err.status, err.code, err.retryable, err.fallback) == (
        504,
        "request_timeout",
        False,
        False,
    )
    assert err.message == "The request did not complete within its timeout of 0.1s."
    assert r.backend(a).breaker.consecutive == 0  # the request ran out of time, not the backend


async def test_the_request_timeout_override_wins_over_the_route() -> None:
    a = Slow("a", ["m"])
    a.delay = 0.3
    r = await router(a, g={"targets": [{"provider": "a"}], "timeouts": {"total": 0.05}})
    trace = Trace()
    trace.timeout = 5
    _, target = await r.complete("chat", ask("g"), trace=trace)
    assert target.provider is a
    assert trace.attempts[0][:3] == ("a", "m", True)


async def test_first_token_timeout_falls_back_before_anything_is_sent() -> None:
    slow = Slow("slow", ["m"], outcomes=[["late"]])
    slow.delay = 5
    fast = MemoryProvider("fast", ["m"], outcomes=[["now"]])
    r = await router(
        slow,
        fast,
        g={
            "targets": [{"provider": "slow"}, {"provider": "fast"}],
            "timeouts": {"first_token": 0.05},
        },
    )
    chunks, target = await r.stream("chat", ask("g"))
    assert target.provider is fast and await read_all(chunks) == ["now"]
    assert slow.closed_streams == 1 and slow.in_use == 0
    assert r.backend(slow).breaker.consecutive == 1


async def test_a_backends_total_timeout_ends_a_committed_stream_with_an_error() -> None:
    a = Slow("a", ["m"], outcomes=[["1", "2", "3", "4", "5"]])
    a.delay = 0.04
    a.config = a.config.model_copy(update={"total_timeout": 0.1})
    r = await router(a, g={"targets": [{"provider": "a"}]})
    chunks, _ = await r.stream("chat", ask("g"))
    got = []
    with pytest.raises(BackendTimeoutError, match=r"total_timeout of 0\.1s") as info:
        async for chunk in chunks:
            got.append(chunk.data["delta"])
    assert 1 <= len(got) < 5 and info.value.backend == "a"
    assert a.in_use == 0 and a.closed_streams == 1


async def test_circuit_opens_and_requests_skip_the_backend() -> None:
    a = MemoryProvider("a", ["m"], outcomes=[BackendUnavailableError("down")] * 100)
    b = MemoryProvider("b", ["m"])
    r = await router(a, b, g={"targets": [{"provider": "a"}, {"provider": "b"}]})
    for _ in range(20):
        _, target = await r.complete("chat", ask("g"))
        assert target.provider is b
    assert len(a.calls) == 5  # the default breaker: 5 failures in a row
    assert r.live()["a"]["circuit"]["state"] == "open"


async def test_every_circuit_open_waits_for_the_first_to_recover() -> None:
    a = MemoryProvider("a", ["m"], outcomes=[BackendUnavailableError("down")])
    a.config = a.config.model_copy(
        update={"breaker": a.config.breaker.model_copy(update={"failures": 1, "cooldown": 0.2})}
    )
    r = await router(a, g={"targets": [{"provider": "a"}]})
    with pytest.raises(BackendUnavailableError):
        await r.complete("chat", ask("g"))
    started = time.monotonic()
    trace = Trace()
    _, target = await r.complete("chat", ask("g"), trace=trace)  # waits, then the trial works
    waited = time.monotonic() - started
    assert target.provider is a and 0.1 < waited < 1
    assert trace.wait_s == pytest.approx(waited, abs=0.05)
    assert r.backend(a).breaker.closed


async def test_no_recovery_within_the_wait_is_a_503_with_retry_after() -> None:
    a = MemoryProvider("a", ["m"], outcomes=[BackendUnavailableError("backend 'a' is unreachable")])
    a.config = a.config.model_copy(
        update={"breaker": a.config.breaker.model_copy(update={"failures": 1, "cooldown": 4})}
    )
    r = await router(a, g={"targets": [{"provider": "a"}], "retry": {"recovery_wait": 0.2}})
    with pytest.raises(BackendUnavailableError):
        await r.complete("chat", ask("g"))
    started = time.monotonic()
    with pytest.raises(NoBackendAvailableError) as info:
        await r.complete("chat", ask("g"))
    assert time.monotonic() - started < 0.1  # nothing can recover in 0.2 s: no point waiting
    err = info.value
    assert (err.status, err.retry_after, err.headers()) == (503, 4, {"Retry-After": "4"})
    assert "'a': circuit open after 1 failures (last: backend 'a' is unreachable)" in err.message
    assert len(a.calls) == 1


async def test_a_429_cools_the_backend_for_its_retry_after() -> None:
    a = MemoryProvider("a", ["m"], outcomes=[BackendRateLimitedError("busy", retry_after=0.2)])
    r = await router(a, g={"targets": [{"provider": "a"}]})
    with pytest.raises(BackendRateLimitedError):
        await r.complete("chat", ask("g"))
    assert r.backend(a).breaker.closed  # rate limited is not broken
    started = time.monotonic()
    _, target = await r.complete("chat", ask("g"))  # waits out the Retry-After, then goes
    assert target.provider is a and 0.1 < time.monotonic() - started < 1


async def test_a_stream_dropped_unread_frees_its_slot() -> None:
    a = MemoryProvider("a", ["m"], max_concurrency=1, outcomes=[["x", "y"], ["again"]])
    r = await router(a, g={"targets": [{"provider": "a"}]})
    chunks, _ = await r.stream("chat", ask("g"))
    assert r.backend(a).limiter.in_flight == 1
    del chunks
    gc.collect()
    assert r.backend(a).limiter.in_flight == 0
    again, _ = await asyncio.wait_for(r.stream("chat", ask("g")), 1)
    assert await read_all(again) == ["again"]


async def test_attempts_are_traced() -> None:
    a = MemoryProvider("a", ["m"], max_retries=1, outcomes=[BackendUnavailableError("x")] * 2)
    b = MemoryProvider("b", ["m"], outcomes=[["c1", "c2"]])
    r = await router(a, b, g={"targets": [{"provider": "a"}, {"provider": "b"}]})
    trace = Trace()
    chunks, _ = await r.stream("chat", ask("g"), trace=trace)
    await read_all(chunks)
    assert [(n, ok, code) for n, _, ok, code, _, _ in trace.attempts] == [
        ("a", False, "backend_unavailable"),
        ("a", False, "backend_unavailable"),
        ("b", True, None),
    ]
    assert trace.ttft_s is not None and trace.attempts[-1][5] == trace.ttft_s
    assert (trace.backend, trace.served, trace.price_in) == ("b", "m", 0.0)
    assert trace.wait_s > 0  # the backoff before a's retry


# --- configuration ----------------------------------------------------------------------------

PROVIDERS = {"a": {"type": "openai", "endpoint": "http://127.0.0.1:1"}, "b": {"type": "ollama"}}


def load(routes: dict[str, Any], **extra: Any) -> Any:
    return load_config({"providers": PROVIDERS, "routes": routes, **extra}, environ={})


def test_route_configuration_defaults() -> None:
    route = load({"g": {"targets": [{"provider": "a"}]}}).routes["g"]
    assert route.strategy == "priority" and route.fallbacks == []
    assert route.retry.retry_on == ["connection", "429", "5xx", "protocol"]  # not timeouts
    assert (route.retry.max_retries, route.retry.recovery_wait) == (None, 2.0)
    assert (route.timeouts.first_token, route.timeouts.total) == (None, None)
    target = route.targets[0]
    assert (target.model, target.weight, target.priority, target.cost_per_1k_input) == (
        None,
        1.0,
        0,
        None,
    )
    config = load({})
    assert (config.health.enabled, config.health.interval, config.health.timeout) == (True, 10, 2)
    provider = config.providers["a"]
    assert (provider.queue_size, provider.breaker.failures, provider.breaker.cooldown) == (64, 5, 5)


def test_yaml_numbers_and_environment_overrides() -> None:
    yaml_route = yaml.safe_load("targets: [{provider: a}]\nretry: {retry_on: [429, 5xx]}")
    assert load({"g": yaml_route}).routes["g"].retry.retry_on == ["429", "5xx"]
    config = load_config(
        {"providers": PROVIDERS, "routes": {"g": {"targets": [{"provider": "a"}]}}},
        environ={"TURNOUT_ROUTES__G__STRATEGY": "least_busy", "TURNOUT_HEALTH__INTERVAL": "3"},
    )
    assert config.routes["g"].strategy == "least_busy" and config.health.interval == 3


@pytest.mark.parametrize(
    ("routes", "extra", "message"),
    [
        (
            {"g": {"targets": [{"provider": "c"}]}},
            {},
            "routes.g.targets[0].provider: unknown provider 'c'; configured: a, b",
        ),
        (
            {"g": {"targets": [{"provider": "a"}], "fallbacks": ["nope"]}},
            {},
            "routes.g.fallbacks[0]: 'nope' is not another route; routes: none",
        ),
        (
            {
                "x": {"targets": [{"provider": "a"}], "fallbacks": ["y"]},
                "y": {"targets": [{"provider": "b"}], "fallbacks": ["x"]},
            },
            {},
            "routes.x.fallbacks: the chain x -> y -> x is a cycle",
        ),
        (
            {"fast": {"targets": [{"provider": "a"}]}},
            {"aliases": {"fast": "a/m"}},
            "routes.fast: also an alias",
        ),
        ({"a/m": {"targets": [{"provider": "a"}]}}, {}, "routes.a/m: starts with provider 'a/'"),
        (
            {"g": {"strategy": "fastest", "targets": [{"provider": "a"}]}},
            {},
            "routes.g.strategy: Input should be 'priority', 'cost', 'round_robin'",
        ),
        (
            {"g": {"targets": [{"provider": "a"}], "retry": {"retry_on": ["4xx"]}}},
            {},
            "routes.g.retry.retry_on: unknown failure class '4xx'; allowed: connection, timeout",
        ),
        (
            {"g": {"targets": [{"provider": "a", "weight": 0}], "strategy": "weighted"}},
            {},
            "routes.g: strategy 'weighted' needs a target with a weight above 0",
        ),
        ({"g": {"targets": []}}, {}, "routes.g.targets: List should have at least 1 item"),
        (
            {"g": {"targets": [{"provider": "a"}], "timeouts": {"connect": 1}}},
            {},
            "routes.g.timeouts.connect: unknown setting; allowed: first_token, total",
        ),
        ({}, {"health": {"interval": 0}}, "health.interval: Input should be greater than 0"),
        (
            {},
            {"providers": {"a": {"type": "openai", "breaker": {"failures": 0}}}},
            "providers.a.breaker.failures: Input should be greater than or equal to 1",
        ),
    ],
)
def test_invalid_routing_settings_name_the_key(
    routes: dict[str, Any], extra: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError) as info:
        load(routes, **extra)
    assert message in str(info.value)
