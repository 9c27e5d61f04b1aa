"""Route groups: what a requested name maps to, compiled once per model-list refresh.

A name configured under ``routes:`` maps to its targets (provider, model, weight, priority,
prices), a strategy, a retry policy, timeouts, fallback routes tried after its own targets, and
what a stream cut mid-way gets (``stream_failover``).
Any other name becomes an implicit route: the catalog's targets for it in configured order,
strategy ``priority``, each backend's own ``max_retries``, which is exactly how turnout routes
without a ``routes:`` section.
"""

from __future__ import annotations

import ipaddress
import math
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from ..config import RetryConfig, RouteConfig
from ..providers.base import Provider
from .catalog import Catalog, Target

__all__ = ["Option", "RetryPolicy", "Route", "RouteTable", "is_local"]

_LOCAL_SUFFIXES = (".local", ".lan", ".internal", ".home.arpa", ".localhost")
_CACHE_LIMIT = 1024  # implicit routes kept per generation: names clients made up cannot pile up


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    max_retries: int | None = None  # None: each backend's own max_retries
    backoff_base: float = 0.1
    backoff_cap: float = 2.0
    retry_on: frozenset[str] = frozenset(("connection", "429", "5xx", "protocol"))  # as config
    honour_retry_after: bool = True
    recovery_wait: float = 2.0

    @classmethod
    def from_config(cls, config: RetryConfig) -> RetryPolicy:
        return cls(
            config.max_retries,
            config.backoff_base,
            config.backoff_cap,
            frozenset(config.retry_on),
            config.honour_retry_after,
            config.recovery_wait,
        )


@dataclass(frozen=True, slots=True)
class Option:
    """One target of a route, with what the strategies weigh it by."""

    target: Target
    weight: float = 1.0
    priority: int = 0
    price_in: float | None = 0.0  # per 1,000 tokens; None: unknown
    price_out: float | None = 0.0
    index: int = 0  # position in the configuration: the last tie-breaker

    @property
    def price(self) -> float:
        """Prompt plus completion price of 1,000 tokens each; unknown sorts after every price."""
        if self.price_in is None and self.price_out is None:
            return math.inf
        return (self.price_in or 0.0) + (self.price_out or 0.0)

    @property
    def name(self) -> str:
        return self.target.provider.name


@dataclass(frozen=True, slots=True)
class Route:
    name: str
    options: tuple[Option, ...]
    strategy: str = "priority"
    retry: RetryPolicy | None = None  # None: the router's defaults
    first_token: float | None = None
    total: float | None = None
    fallbacks: tuple[str, ...] = field(default=())
    stream_failover: bool = False  # ``stream_failover: continue``


def is_local(provider: Provider) -> bool:
    """Whether a backend runs on this machine or the local network (its unset price is then 0):
    no endpoint (in-process), a loopback or private address, or a name that is not public DNS."""
    endpoint = getattr(provider, "base_url", None) or provider.config.endpoint
    if not endpoint:
        return True
    host = (urlsplit(endpoint).hostname or "").lower()
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host == "localhost" or "." not in host or host.endswith(_LOCAL_SUFFIXES)
    return address.is_private or address.is_loopback or address.is_link_local


def default_prices(provider: Provider) -> tuple[float | None, float | None]:
    config = provider.config
    price_in, price_out = config.cost_per_1k_input, config.cost_per_1k_output
    if price_in is None and price_out is None and is_local(provider):
        return 0.0, 0.0
    return price_in, price_out


class RouteTable:
    """Compiles routes for the router; cached until the catalog's model lists change."""

    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog
        self._cache: dict[str, list[Route]] = {}
        self._generation = -1

    async def plan(self, name: str) -> list[Route]:
        """The routes to try for ``name``: its own, then its fallbacks (depth first, once each)."""
        if self._generation != self.catalog.generation:
            self._cache.clear()
            self._generation = self.catalog.generation
        cached = self._cache.get(name)
        if cached is not None:
            return cached
        key = self.catalog.aliases.get(name, name)
        if key in self.catalog.routes:
            routes = [self._compile(n) for n in self._chain(key)]
        else:
            targets = await self.catalog.resolve(name)  # may refresh: compile after it
            routes = [self._implicit(name, targets)]
        if self._generation != self.catalog.generation:
            self._cache.clear()
            self._generation = self.catalog.generation
        if len(self._cache) >= _CACHE_LIMIT:
            self._cache.clear()
        self._cache[name] = routes
        return routes

    def _chain(self, name: str) -> list[str]:
        order: list[str] = []
        stack = [name]
        while stack:
            current = stack.pop()
            if current in order:
                continue
            order.append(current)
            stack.extend(reversed(self.catalog.routes[current].fallbacks))
        return order

    def _compile(self, name: str) -> Route:
        config: RouteConfig = self.catalog.routes[name]
        options = []
        for index, item in enumerate(config.targets):
            provider = self.catalog.providers.get(item.provider)
            if provider is None:  # disabled: the route keeps its other targets
                continue
            price_in, price_out = default_prices(provider)
            if item.cost_per_1k_input is not None or item.cost_per_1k_output is not None:
                price_in, price_out = item.cost_per_1k_input, item.cost_per_1k_output
            options.append(
                Option(
                    self.catalog.target(provider, item.model or name),
                    item.weight,
                    item.priority,
                    price_in,
                    price_out,
                    index,
                )
            )
        options.sort(key=lambda o: (o.priority, o.index))
        return Route(
            name,
            tuple(options),
            config.strategy,
            RetryPolicy.from_config(config.retry),
            config.timeouts.first_token,
            config.timeouts.total,
            tuple(config.fallbacks),
            config.stream_failover == "continue",
        )

    @staticmethod
    def _implicit(name: str, targets: list[Target]) -> Route:
        options = []
        for index, target in enumerate(targets):
            price_in, price_out = default_prices(target.provider)
            options.append(Option(target, 1.0, 0, price_in, price_out, index))
        return Route(name, tuple(options))
