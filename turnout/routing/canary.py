"""Health that proves generation: the canary, and the hold-out of a backend that flaps.

The cheap probe (``/health``, the model list...) says a backend's server answers; it does not say
that the model generates. The canary asks each of a backend's models for one token
(``max_tokens: 1``) every ``health.canary_interval`` seconds (every ``health.interval`` while
it fails, so that a recovery is seen soon); one that has no token within
``health.canary_timeout``, or fails, marks its backend down, which the router then tries last.

Which backends: off by default. ``health.canary: true`` turns it on for local backends (on this
machine or the local network); a cloud one needs its own ``providers.<name>.canary: true`` (each
canary is a billed request), which also turns it on or off for one local backend. Off for local
backends by default as well, because it costs them: a generation every interval for every model,
which loads a model that a runtime loads on demand (and so keeps it loaded, or cycles several
through memory), and delays a client that arrives while it runs on a one-slot backend.

Which models: those the provider's ``models:`` lists, else every model it serves; models that
cannot chat are not asked. One model failing marks the whole backend down (health is per backend).

What a canary must not do:

- count as a client's request: it is made straight to the provider, with no trace, so neither
  the statistics nor the usage ledger see it;
- cut or delay a stream: it runs only while the backend serves nothing through this gateway, and
  holds one of its concurrency slots while it runs (so a one-slot backend such as
  llama-cpp-python's server, which ends the stream it serves when any other request arrives, gets
  the client's request after the canary, never during it);
- wait for a busy backend: a backend serving requests is skipped (its own requests prove it, and
  their timeouts catch a hang), and keeps its last canary result.

A backend that goes down again soon after it came back (within ``health.flap_stable`` seconds)
has flapped; once it answers again it is held out (reported down, with ``held_until``) for
``health.flap_cooldown`` seconds, doubling with each flap up to ``health.flap_max_cooldown``
(`FlapPolicy.hold`). It is forgiven once it has stayed up ``flap_stable`` seconds after its hold.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from ..errors import GatewayError
from ..providers.base import Provider
from ..wire.types import Call
from .attempt import Backend
from .limits import Limiter
from .routes import is_local

__all__ = ["Canary", "CanaryResult", "FlapPolicy", "Flaps", "probe_json"]

#: what a canary asks: one token of anything
PROMPT = [{"role": "user", "content": "Say OK."}]
_FLOW = "turnout-canary"  # its flow in the backend's fair queue


@dataclass(frozen=True, slots=True)
class CanaryResult:
    ok: bool
    latency_ms: float | None  # per model asked
    detail: str
    checked_at: float  # wall-clock time

    def to_json(self) -> dict[str, object]:
        return probe_json(self.ok, self.latency_ms, self.detail, self.checked_at)


def probe_json(
    ok: bool, latency_ms: float | None, detail: str, checked_at: float
) -> dict[str, object]:
    """A probe's or a canary's result as ``/stats`` and ``/v1/providers`` show it."""
    return {
        "ok": ok,
        "latency_ms": None if latency_ms is None else round(latency_ms, 2),
        "detail": detail or None,
        "checked_at": round(checked_at, 3),
    }


class Canary:
    """Asks backends for one token (module docstring)."""

    def __init__(
        self,
        backend: Callable[[Provider], Backend],
        served: Callable[[Provider], list[str]],
        *,
        local: bool = False,
        timeout: float = 30.0,
    ) -> None:
        self._backend = backend
        self._served = served
        self.local = local  # on for local backends unless their own setting says otherwise
        self.timeout = timeout

    def enabled(self, provider: Provider) -> bool:
        own = provider.config.canary
        return own if own is not None else self.local and is_local(provider)

    def wanted(self, providers: Mapping[str, Provider]) -> bool:
        """Whether any backend, now or discovered later, may have a canary."""
        return self.local or any(p.config.canary for p in providers.values())

    def models(self, provider: Provider) -> list[str]:
        names = [m.name for m in provider.declared_models] or self._served(provider)
        return [name for name in names if provider.capabilities(name).chat]

    async def ask(self, provider: Provider) -> CanaryResult | None:
        """One token from each of the backend's models; None when it was not asked (busy
        serving, or no model to ask)."""
        limiter = self._backend(provider).limiter
        models = self.models(provider)
        if limiter.in_flight or limiter.waiting or not models:
            return None
        started = time.perf_counter()
        for model in models:
            try:
                async with asyncio.timeout(self.timeout):
                    await _one_token(provider, limiter, model)
            except TimeoutError:
                why = f"no token within {self.timeout:g}s"
            except GatewayError as exc:
                why = exc.detail
            except Exception as exc:  # a canary must never end the monitor
                why = f"{type(exc).__name__}: {exc}"
            else:
                continue
            return CanaryResult(False, None, f"{model}: {why}", time.time())
        latency = (time.perf_counter() - started) * 1000 / len(models)
        return CanaryResult(True, latency, "", time.time())


async def _one_token(provider: Provider, limiter: Limiter, model: str) -> None:
    await limiter.enter(provider, _FLOW)  # a client's request now waits for this one
    try:
        body = {"model": model, "messages": PROMPT, "max_tokens": 1, "stream": False}
        await provider.complete(Call("chat", body, model, False))
    finally:
        limiter.leave(provider)


@dataclass(frozen=True, slots=True)
class FlapPolicy:
    cooldown: float = 10.0  # 0: never held out
    max_cooldown: float = 300.0
    stable: float = 300.0

    def hold(self, flaps: int) -> float:
        """Seconds a backend is held out after its ``flaps``-th flap: the cooldown, doubling
        with each flap, capped."""
        if flaps <= 0 or self.cooldown <= 0:
            return 0.0
        return float(min(self.cooldown * 2.0 ** (flaps - 1), self.max_cooldown))


class Flaps:
    """One backend's record of going down and up."""

    __slots__ = ("flaps", "held_until", "policy", "up", "up_since")

    def __init__(self, policy: FlapPolicy) -> None:
        self.policy = policy
        self.flaps = 0
        self.up = True  # as a backend never probed counts
        self.up_since: float | None = None  # when it last came back; None: never went down
        self.held_until = 0.0

    def observe(self, ok: bool, now: float) -> bool:
        """The backend's health at ``now`` (monotonic seconds); whether it may take requests."""
        if ok and not self.up:  # back
            self.up, self.up_since = True, now
            if self.flaps:
                self.held_until = now + self.policy.hold(self.flaps)
        elif not ok and self.up:  # down
            self.up = False
            if self.up_since is not None and now - self._trusted_since() < self.policy.stable:
                self.flaps += 1  # down again soon after it came back
        elif ok and self.flaps and now - self._trusted_since() >= self.policy.stable:
            self.flaps = 0  # up long enough: forgiven
        return ok and now >= self.held_until

    def _trusted_since(self) -> float:
        return max(self.up_since or 0.0, self.held_until)
