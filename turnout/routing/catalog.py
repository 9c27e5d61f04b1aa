"""Model addressing: ``provider/model``, a bare model name, an alias, or a route's name.

A bare name that several providers serve resolves to all of them in configured order (the first
is tried first, the rest are fallbacks), never at random. What each provider serves is what its
configuration declares plus what it last reported; the list is refreshed in the background and,
at most once per ``miss_refresh_seconds``, when a request names a model nobody is known to serve.
A route's name (``routes:``) resolves to its configured targets; `turnout.routing.routes` adds
its strategy and policies.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass

from ..config import RouteConfig
from ..errors import GatewayError, ModelNotFoundError, NoBackendAvailableError
from ..providers.base import ModelInfo, Provider

__all__ = ["Catalog", "Target"]

log = logging.getLogger("turnout.catalog")


@dataclass(slots=True, frozen=True)
class Target:
    provider: Provider
    model: str

    @property
    def address(self) -> str:
        return f"{self.provider.name}/{self.model}"


class Catalog:
    def __init__(
        self,
        providers: dict[str, Provider],
        aliases: dict[str, str] | None = None,
        *,
        routes: Mapping[str, RouteConfig] | None = None,
        miss_refresh_seconds: float = 5.0,
    ) -> None:
        self.providers = providers
        self.aliases = dict(aliases or {})
        self.routes = dict(routes or {})
        #: bumped whenever what the providers serve may have changed (caches compare it)
        self.generation = 0
        self._reported: dict[str, list[ModelInfo] | None] = dict.fromkeys(providers)
        self._miss_refresh_seconds = miss_refresh_seconds
        self._last_refresh = -math.inf  # never: monotonic time may start near 0 after a boot
        self._refresh_lock = asyncio.Lock()

    def served(self, provider: Provider) -> list[str]:
        names = [m.name for m in provider.declared_models]
        for info in self._reported.get(provider.name) or ():
            if info.id not in names:
                names.append(info.id)
        return names

    def known(self, provider: Provider) -> bool:
        return bool(provider.declared_models) or self._reported.get(provider.name) is not None

    async def refresh(self, timeout: float = 5.0) -> None:
        """Ask every provider what it serves, concurrently; keep the old answer on failure."""
        async with self._refresh_lock:
            names = list(self.providers)
            results = await asyncio.gather(
                *(asyncio.wait_for(self.providers[n].list_models(), timeout) for n in names),
                return_exceptions=True,
            )
            for name, result in zip(names, results, strict=True):
                if isinstance(result, BaseException):
                    why = result.message if isinstance(result, GatewayError) else repr(result)
                    log.info("could not list models of provider %s: %s", name, why)
                else:
                    self._reported[name] = result
            self._last_refresh = time.monotonic()
            self.generation += 1

    async def resolve(self, name: str) -> list[Target]:
        """Every target that serves ``name``, in the order to try them."""
        try:
            return self._resolve(name)
        except ModelNotFoundError:
            if time.monotonic() - self._last_refresh < self._miss_refresh_seconds:
                raise
        await self.refresh()
        return self._resolve(name)

    def target(self, provider: Provider, model: str) -> Target:
        """``model`` on ``provider``, spelled as the provider reports it when it does
        (``llama3.2`` is served as ``llama3.2:latest``)."""
        for served in self.served(provider):
            if provider.matches(model, served):
                return Target(provider, served)
        return Target(provider, model)

    def _resolve(self, name: str) -> list[Target]:
        name = self.aliases.get(name, name)
        route = self.routes.get(name)
        if route is not None:
            targets = [
                self.target(self.providers[t.provider], t.model or name)
                for t in route.targets
                if t.provider in self.providers
            ]
            if not targets:
                raise NoBackendAvailableError(
                    f"Every provider of route '{name}' is disabled "
                    f"({', '.join(t.provider for t in route.targets)})."
                )
            return targets
        prefix, slash, rest = name.partition("/")
        if slash and prefix in self.providers:
            provider = self.providers[prefix]
            if not self.known(provider):
                return [Target(provider, rest)]
            for served in self.served(provider):
                if provider.matches(rest, served):
                    return [Target(provider, served)]
            raise ModelNotFoundError(
                f"The model '{rest}' is not served by provider '{prefix}' "
                f"(it serves: {_listing(self.served(provider))}).",
                param="model",
            )
        targets = [
            Target(provider, served)
            for provider in self.providers.values()
            for served in self.served(provider)
            if provider.matches(name, served)
        ]
        if not targets:
            raise ModelNotFoundError(
                f"The model '{name}' does not exist or no configured provider serves it "
                f"(available: {_listing(self.ids())}).",
                param="model",
            )
        # One target per provider: the first spelling that matched.
        first: dict[str, Target] = {}
        for target in targets:
            first.setdefault(target.provider.name, target)
        return list(first.values())

    def meta(self, provider: str, model: str) -> dict[str, object]:
        """What a backend reported about one of its models (Ollama's details, the engine...)."""
        for info in self._reported.get(provider) or ():
            if info.id == model:
                return dict(info.meta)
        return {}

    def ids(self) -> list[str]:
        ids = [f"{p.name}/{m}" for p in self.providers.values() for m in self.served(p)]
        return ids + [a for a in [*self.aliases, *self.routes] if a not in ids]

    def model_objects(self) -> list[dict[str, object]]:
        """``GET /v1/models`` entries: models as ``provider/model``, then aliases and routes."""
        now = int(time.time())
        out: list[dict[str, object]] = []
        for provider in self.providers.values():
            reported = {m.id: m for m in self._reported.get(provider.name) or ()}
            for model in self.served(provider):
                info = reported.get(model)
                out.append(
                    {
                        "id": f"{provider.name}/{model}",
                        "object": "model",
                        "created": info.created if info and info.created else now,
                        "owned_by": provider.name,
                        # local models: the engine that runs them (llama-cpp, transformers...)
                        **_engine(info),
                    }
                )
        for alias, target in self.aliases.items():
            out.append({"id": alias, "object": "model", "created": now, "owned_by": target})
        for name in self.routes:
            out.append({"id": name, "object": "model", "created": now, "owned_by": "turnout"})
        return out


def _engine(info: ModelInfo | None) -> dict[str, object]:
    engine = info.meta.get("engine") if info is not None else None
    return {"engine": engine} if engine else {}


def _listing(names: list[str], limit: int = 12) -> str:
    if not names:
        return "none known"
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")
