"""Strategies: each pure function's ordering, then the same strategies through the router with
in-memory providers (live load, moving averages, health, capabilities)."""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from typing import Any

import pytest

from tests.unit.test_routing import MemoryProvider, RecordingRouter, read_all
from turnout.config import STRATEGIES as CONFIGURED, ProviderConfig, RouteConfig
from turnout.errors import CapabilityError
from turnout.providers.base import Health
from turnout.routing import Catalog, Target
from turnout.routing.health import HealthMonitor
from turnout.routing.routes import Option, default_prices, is_local
from turnout.routing.strategies import (
    STRATEGIES,
    Pick,
    capability,
    cost,
    least_busy,
    least_latency,
    prefix_affinity,
    priority,
    prompt_prefix,
    round_robin,
    weighted,
)
from turnout.wire.types import JSON

IMAGE = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}


def provider(name: str, **config: Any) -> MemoryProvider:
    """A memory provider serving ``m``, with configuration settings of a real one."""
    p = MemoryProvider(name, ["m"])
    p.config = ProviderConfig.model_validate({"type": "openai", "max_retries": 0, **config})
    return p


def opt(name: str, index: int = 0, **fields: Any) -> Option:
    return Option(Target(MemoryProvider(name, ["m"]), "m"), index=index, **fields)


def names(options: list[Option]) -> list[str]:
    return [o.name for o in options]


def chat(text: str = "hi", **extra: Any) -> JSON:
    return {"model": "g", "messages": [{"role": "user", "content": text}], **extra}


def pick(body: JSON | None = None, **fields: Any) -> Pick:
    return Pick("chat", body or chat(), **fields)


def test_every_configurable_strategy_exists() -> None:
    assert set(STRATEGIES) == set(CONFIGURED)


# --- the pure functions ----------------------------------------------------------------------


def test_priority_lowest_first_then_configuration_order() -> None:
    options = [opt("a", 0, priority=1), opt("b", 1), opt("c", 2), opt("d", 3, priority=-1)]
    assert names(priority(options, pick())) == ["d", "b", "c", "a"]


def test_cost_cheapest_first_local_free_unknown_remote_last() -> None:
    options = [
        opt("cloud", 0, price_in=0.5, price_out=1.5),
        opt("unpriced-cloud", 1, price_in=None, price_out=None),
        opt("local", 2),  # default 0 / 0
        opt("cheap-cloud", 3, price_in=0.1, price_out=None),
    ]
    assert names(cost(options, pick())) == ["local", "cheap-cloud", "cloud", "unpriced-cloud"]


@pytest.mark.parametrize(
    ("endpoint", "local"),
    [
        (None, True),
        ("http://127.0.0.1:8080", True),
        ("http://localhost:11434", True),
        ("http://10.0.0.5:8000", True),
        ("http://192.168.1.20", True),
        ("http://[::1]:8000", True),
        ("http://gpu-box:8000", True),
        ("http://ollama.local:11434", True),
        ("https://api.openai.com", False),
        ("https://generativelanguage.googleapis.com", False),
        ("http://8.8.8.8:80", False),
    ],
)
def test_what_counts_as_local(endpoint: str | None, local: bool) -> None:
    assert is_local(provider("p", endpoint=endpoint)) is local


def test_default_prices() -> None:
    assert default_prices(provider("l", endpoint="http://127.0.0.1")) == (0.0, 0.0)
    assert default_prices(provider("r", endpoint="https://api.x.com")) == (None, None)
    priced = provider("r", endpoint="https://api.x.com", cost_per_1k_input=0.3)
    assert default_prices(priced) == (0.3, None)
    assert default_prices(provider("l", cost_per_1k_output=2.0)) == (None, 2.0)


def test_round_robin_rotates_over_usable_options() -> None:
    options = [opt("a", 0), opt("b", 1), opt("c", 2)]
    firsts = [round_robin(options, pick(turn=t))[0].name for t in range(6)]
    assert firsts == ["a", "b", "c", "a", "b", "c"]
    assert names(round_robin(options, pick(turn=1))) == ["b", "c", "a"]
    without_b = pick(usable=lambda o: o.name != "b")
    orders = [
        names(round_robin(options, Pick("chat", chat(), turn=t, usable=without_b.usable)))
        for t in range(4)
    ]
    assert orders == [["a", "c", "b"], ["c", "a", "b"], ["a", "c", "b"], ["c", "a", "b"]]


@pytest.mark.parametrize("weights", [(1, 3), (5, 3, 2), (70, 20, 10)])
def test_weighted_first_picks_match_the_weights(weights: tuple[int, ...]) -> None:
    options = [opt(chr(ord("a") + i), i, weight=w) for i, w in enumerate(weights)]
    rng = random.Random(20261122).random
    firsts = Counter(weighted(options, pick(rng=rng))[0].name for _ in range(10_000))
    for option in options:
        share = firsts[option.name] / 10_000
        assert abs(share - option.weight / sum(weights)) < 0.02, (option.name, share)


def test_weighted_orders_everything_and_zero_weight_comes_last() -> None:
    options = [opt("never", 0, weight=0), opt("a", 1, weight=1), opt("b", 2, weight=1)]
    rng = random.Random(1).random
    for _ in range(200):
        order = names(weighted(options, pick(rng=rng)))
        assert sorted(order) == ["a", "b", "never"] and order[-1] == "never"


def test_least_latency_uses_first_token_for_streams_total_otherwise() -> None:
    averages = {"a": (2.0, 0.1), "b": (0.5, 0.9), "new": None}

    def latency(option: Option, stream: bool) -> float | None:
        pair = averages[option.name]
        return None if pair is None else pair[1 if stream else 0]

    options = [opt("a", 0), opt("b", 1), opt("new", 2)]
    assert names(least_latency(options, pick(latency=latency))) == ["new", "b", "a"]
    assert names(least_latency(options, pick(latency=latency, stream=True))) == ["new", "a", "b"]


def test_least_busy() -> None:
    loads = {"a": 2.0, "b": 0.0, "c": 0.5}
    options = [opt("a", 0), opt("b", 1), opt("c", 2)]
    assert names(least_busy(options, pick(load=lambda o: loads[o.name]))) == ["b", "c", "a"]


def test_capability_filters_by_what_the_request_needs() -> None:
    plain = provider("plain", models=[{"name": "m", "supports_tools": False}])
    seeing = provider("seeing", models=[{"name": "m", "supports_vision": True}])
    short = provider("short", models=[{"name": "m", "context_length": 64}])
    options = [Option(Target(p, "m"), index=i) for i, p in enumerate((plain, seeing, short))]
    tools = [{"type": "function", "function": {"name": "f"}}]
    assert names(capability(options, pick())) == ["plain", "seeing", "short"]
    assert names(capability(options, pick(chat(tools=tools)))) == ["seeing", "short"]
    assert names(capability(options, pick(chat(tools=tools, tool_choice="none")))) == [
        "plain",
        "seeing",
        "short",
    ]
    image = {"model": "g", "messages": [{"role": "user", "content": [IMAGE]}]}
    assert names(capability(options, pick(image))) == ["seeing"]
    long = chat("word " * 100)  # about 125 tokens: more than 64
    assert names(capability(options, pick(long))) == ["plain", "seeing"]
    assert names(capability(options, pick(chat(max_tokens=100)))) == ["plain", "seeing"]


def conversation(opening: str, turns: int) -> JSON:
    messages = [{"role": "system", "content": "You are terse."}]
    messages.append({"role": "user", "content": opening})
    for i in range(turns):
        messages += [
            {"role": "assistant", "content": f"a{i}"},
            {"role": "user", "content": f"q{i}"},
        ]
    return {"model": "g", "messages": messages}


def test_prefix_affinity_keeps_a_prefix_on_one_replica_and_spreads_prefixes() -> None:
    options = [opt("r1", 0), opt("r2", 1), opt("r3", 2)]
    homes = Counter()
    for n in range(300):
        seen = {
            prefix_affinity(options, pick(conversation(f"topic {n}", t)))[0].name for t in range(5)
        }
        assert len(seen) == 1, "a growing conversation stays on its replica"
        homes[seen.pop()] += 1
    assert min(homes.values()) >= 300 * 0.2, homes  # rendezvous hashing spreads the prefixes


def test_prefix_affinity_shares_a_long_system_prompt() -> None:
    options = [opt("r1", 0), opt("r2", 1), opt("r3", 2)]
    system = "Rules: " + "be precise. " * 100  # over PREFIX_CHARS
    homes = {
        prefix_affinity(
            options,
            pick(
                {
                    "messages": [
                        {"role": "system", "content": system},
                        {"role": "user", "content": q},
                    ]
                }
            ),
        )[0].name
        for q in ("a", "b", "c", "d")
    }
    assert len(homes) == 1
    assert prompt_prefix("chat", {"messages": [{"role": "user", "content": "x" * 5000}]}) == (
        "user:" + "x" * 1019
    )


def test_prefix_affinity_falls_back_to_least_busy_when_home_is_saturated() -> None:
    options = [opt("r1", 0), opt("r2", 1), opt("r3", 2)]
    body = conversation("hello", 0)
    home = prefix_affinity(options, pick(body))[0].name
    loads = {"r1": 0.5, "r2": 0.5, "r3": 0.5, home: 1.0}
    busy = pick(body, load=lambda o: loads[o.name], saturated=lambda o: o.name == home)
    order = names(prefix_affinity(options, busy))
    assert order[-1] == home and len(order) == 3


# --- through the router ----------------------------------------------------------------------


def route(strategy: str, *targets: dict[str, Any], **extra: Any) -> RouteConfig:
    items = [{"model": "m", **t} for t in targets]
    return RouteConfig.model_validate({"strategy": strategy, "targets": items, **extra})


async def router_for(
    providers: list[MemoryProvider], routes: dict[str, RouteConfig], **kw: Any
) -> RecordingRouter:
    catalog = Catalog({p.name: p for p in providers}, routes=routes)
    await catalog.refresh()
    return RecordingRouter(catalog, **kw)


async def served(router: RecordingRouter, n: int, model: str = "g", **extra: Any) -> list[str]:
    out = []
    for _ in range(n):
        _, target = await router.complete("chat", {**chat(**extra), "model": model})
        out.append(target.provider.name)
    return out


class Probed(MemoryProvider):
    """A memory provider whose health probe says what the test sets."""

    up = True

    async def probe(self) -> Health:
        return Health(self.up, 1.0, "" if self.up else "connection refused")


async def test_cost_first_prefers_local_while_it_is_healthy() -> None:
    local = Probed("local", ["m"])
    local.config = ProviderConfig.model_validate({"type": "ollama", "max_retries": 0})
    cloud = Probed("cloud", ["m"])
    cloud.config = ProviderConfig.model_validate(
        {
            "type": "openai",
            "endpoint": "https://api.example.com",
            "cost_per_1k_input": 0.15,
            "cost_per_1k_output": 0.6,
            "max_retries": 0,
        }
    )
    router = await router_for(
        [cloud, local], {"g": route("cost", {"provider": "cloud"}, {"provider": "local"})}
    )
    monitor = HealthMonitor({"local": local, "cloud": cloud})
    router.health = monitor
    await monitor.check()
    assert await served(router, 3) == ["local"] * 3
    local.up = False
    await monitor.check()  # the snapshot says local is down: the cloud goes first
    assert await served(router, 2) == ["cloud"] * 2
    local.up = True
    await monitor.check()
    assert await served(router, 2) == ["local"] * 2
    assert local.calls and all(c.model == "m" for c in local.calls)


async def test_round_robin_spreads_requests_over_replicas() -> None:
    ps = [MemoryProvider(n, ["m"]) for n in ("a", "b", "c")]
    router = await router_for(ps, {"g": route("round_robin", *({"provider": p.name} for p in ps))})
    assert await served(router, 6) == ["a", "b", "c", "a", "b", "c"]


async def test_weighted_through_the_router() -> None:
    ps = [MemoryProvider(n, ["m"]) for n in ("a", "b")]
    routes = {
        "g": route("weighted", {"provider": "a", "weight": 9}, {"provider": "b", "weight": 1})
    }
    catalog = Catalog({p.name: p for p in ps}, routes=routes)
    router = RecordingRouter(catalog)
    router._rng = random.Random(5).random
    counts = Counter(await served(router, 2000))
    assert abs(counts["a"] / 2000 - 0.9) < 0.02, counts


async def test_least_latency_learns_a_moving_average() -> None:
    class Slow(MemoryProvider):
        delay = 0.0

        async def complete(self, call: Any) -> JSON:
            await asyncio.sleep(self.delay)
            return await super().complete(call)

    fast, slow = Slow("fast", ["m"]), Slow("slow", ["m"])
    fast.delay, slow.delay = 0.001, 0.03
    routes = {"g": route("least_latency", {"provider": "slow"}, {"provider": "fast"})}
    router = await router_for([slow, fast], routes)
    first = await served(router, 2)
    assert first == ["slow", "fast"]  # each unmeasured one gets measured first
    assert await served(router, 5) == ["fast"] * 5
    averages = router.attempts.averages
    assert averages["slow/m"][0] > averages["fast/m"][0]
    assert averages["fast/m"][1] is None  # no stream yet: no time to first token


async def test_least_busy_avoids_a_replica_holding_a_stream() -> None:
    a = MemoryProvider("a", ["m"], outcomes=[["1", "2"]])
    b = MemoryProvider("b", ["m"])
    router = await router_for(
        [a, b], {"g": route("least_busy", {"provider": "a"}, {"provider": "b"})}
    )
    held, target = await router.stream("chat", chat())
    assert target.provider is a
    assert await served(router, 2) == ["b", "b"]
    await read_all(held)
    assert await served(router, 1) == ["a"]


async def test_prefix_affinity_through_the_router() -> None:
    ps = [MemoryProvider(n, ["m"], max_concurrency=1) for n in ("r1", "r2", "r3")]
    routes = {"g": route("prefix_affinity", *({"provider": p.name} for p in ps))}
    router = await router_for(ps, routes)
    body = {**conversation("the same opening", 0), "model": "g"}
    homes = set()
    for turns in range(4):
        _, target = await router.complete(
            "chat", {**conversation("the same opening", turns), "model": "g"}
        )
        homes.add(target.provider.name)
    assert len(homes) == 1
    home = homes.pop()
    next(p for p in ps if p.name == home).outcomes = [["x"]]
    held, target = await router.stream("chat", body)  # the home replica's only slot is taken
    assert target.provider.name == home
    _, elsewhere = await router.complete("chat", body)
    assert elsewhere.provider.name != home  # overloaded: least busy instead of queueing
    await read_all(held)


async def test_capability_through_the_router_and_when_nothing_fits() -> None:
    plain = provider("plain", models=[{"name": "m", "supports_tools": False}])
    smart = provider("smart", models=[{"name": "m", "supports_vision": True}])
    routes = {"g": route("capability", {"provider": "plain"}, {"provider": "smart"})}
    router = await router_for([plain, smart], routes)
    tools = [{"type": "function", "function": {"name": "f"}}]
    assert await served(router, 1) == ["plain"]
    assert await served(router, 1, tools=tools) == ["smart"]
    image = {"model": "g", "messages": [{"role": "user", "content": [IMAGE]}], "tools": tools}
    smart.config = ProviderConfig.model_validate({"type": "openai", "models": ["m"]})
    router.routes._cache.clear()
    with pytest.raises(CapabilityError) as info:
        await router.complete("chat", image)
    assert info.value.param == "tools"  # the first thing lacking, in Capabilities.lacks order
    assert "plain/m lacks tools, vision; smart/m lacks vision" in info.value.message
    assert plain.calls[-1].body.get("tools") is None and len(smart.calls) == 1


def test_prefix_home_is_the_same_in_every_process() -> None:
    """The replica a prefix goes to must not depend on the process's str-hash salt."""
    import subprocess
    import sys

    code = (
        "from turnout.routing.strategies import stable_hash;"
        "print(stable_hash('You are a helpful assistant.'), stable_hash('local/gemma'))"
    )
    runs = {
        subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            check=True,
            env={"PYTHONHASHSEED": seed},
        ).stdout
        for seed in ("1", "2", "3")
    }
    assert len(runs) == 1, runs
