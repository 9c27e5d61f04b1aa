"""Strategies: each a small pure function that orders a route's options for one request.

A strategy sees the options and a `Pick` (the request plus the live numbers it may weigh: load,
moving-average latency, a random source, a turn counter) and returns the options to try, best
first. It never sends anything and never changes state; the router keeps the numbers and skips
options whose circuit is open or whose health probe failed.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from ..wire.openai import prompt_text
from ..wire.types import JSON, Kind, needs
from .routes import Option

__all__ = ["STRATEGIES", "Pick", "Strategy", "prompt_prefix", "unfit"]

#: characters of the prompt that identify a prefix for ``prefix_affinity`` (see `prompt_prefix`)
PREFIX_CHARS = 1024


def _zero(option: Option) -> float:
    return 0.0


def _unmeasured(option: Option, stream: bool) -> float | None:
    return None


def _never(option: Option) -> bool:
    return False


def _always(option: Option) -> bool:
    return True


@dataclass(slots=True)
class Pick:
    """One request as the strategies see it."""

    kind: Kind
    body: JSON
    stream: bool = False
    rng: Callable[[], float] = field(default=lambda: 0.5)
    turn: int = 0  # how many requests this route has seen (round_robin)
    load: Callable[[Option], float] = _zero  # in flight (and queued) per slot
    latency: Callable[[Option, bool], float | None] = _unmeasured  # moving average, seconds
    saturated: Callable[[Option], bool] = _never  # one more request would wait for a slot
    usable: Callable[[Option], bool] = _always  # healthy, circuit closed, queue not full
    _needs: frozenset[str] | None = None
    _prefix_hash: int | None = None

    def needs(self) -> frozenset[str]:
        if self._needs is None:
            self._needs = needs(self.kind, self.body)
        return self._needs

    def prefix_hash(self) -> int:
        if self._prefix_hash is None:
            self._prefix_hash = stable_hash(prompt_prefix(self.kind, self.body))
        return self._prefix_hash

    def tokens_needed(self) -> int:
        """A cheap upper estimate of the context a request fills: prompt characters / 4 plus
        the completion limit it asks for."""
        limit = self.body.get("max_completion_tokens") or self.body.get("max_tokens") or 0
        return (len(prompt_text(self.kind, self.body)) + 3) // 4 + int(limit)


Strategy = Callable[[Sequence[Option], Pick], list[Option]]


def _by_priority(option: Option) -> tuple[int, int]:
    return option.priority, option.index


def priority(options: Sequence[Option], pick: Pick) -> list[Option]:
    """Lowest ``priority`` first, then configuration order: the default."""
    return sorted(options, key=_by_priority)


def cost(options: Sequence[Option], pick: Pick) -> list[Option]:
    """Cheapest first (prompt plus completion price per 1,000 tokens). A local backend with no
    price costs 0; a remote one with no price sorts after every priced one."""
    return sorted(options, key=lambda o: (o.price, o.priority, o.index))


def round_robin(options: Sequence[Option], pick: Pick) -> list[Option]:
    """Each request starts one further along the configured order. The turn goes round the
    usable options only, so that a dead one does not hand its turns to its neighbour."""
    ordered = sorted(options, key=_by_priority)
    usable = [o for o in ordered if pick.usable(o)]
    if not usable:
        return ordered
    k = pick.turn % len(usable)
    return usable[k:] + usable[:k] + [o for o in ordered if o not in usable]


def weighted(options: Sequence[Option], pick: Pick) -> list[Option]:
    """A weighted random order: each option comes first with probability weight / total
    (Efraimidis and Spirakis: sort by u ** (1 / weight)); weight 0 only after all others."""
    keyed = []
    rest = []
    for option in options:
        if option.weight > 0:
            keyed.append((pick.rng() ** (1.0 / option.weight), option))
        else:
            rest.append(option)
    keyed.sort(key=lambda pair: pair[0], reverse=True)
    return [option for _, option in keyed] + sorted(rest, key=_by_priority)


def least_latency(options: Sequence[Option], pick: Pick) -> list[Option]:
    """Lowest moving average first: time to first token for streams, total latency otherwise.
    An option never measured comes first, so that it gets measured."""

    def key(option: Option) -> tuple[float, int, int]:
        seconds = pick.latency(option, pick.stream)
        return (0.0 if seconds is None else seconds), option.priority, option.index

    return sorted(options, key=key)


def least_busy(options: Sequence[Option], pick: Pick) -> list[Option]:
    """Fewest requests in flight (and queued) per concurrency slot first."""
    return sorted(options, key=lambda o: (pick.load(o), o.priority, o.index))


def unfit(option: Option, pick: Pick) -> list[str]:
    """What ``option`` lacks for this request: `Capabilities.lacks` of what `needs` asks, plus
    ``context_length`` when the prompt and completion limit would not fit."""
    target = option.target
    caps = target.provider.capabilities(target.model)
    missing = caps.lacks(pick.needs())
    if caps.context_length is not None and pick.tokens_needed() > caps.context_length:
        missing.append("context_length")
    return missing


def capability(options: Sequence[Option], pick: Pick) -> list[Option]:
    """Only options that can do what the request needs (tools, vision, JSON schema, embeddings,
    streaming, context length), in priority order."""
    return [o for o in priority(options, pick) if not unfit(o, pick)]


def prefix_affinity(options: Sequence[Option], pick: Pick) -> list[Option]:
    """Requests sharing a prompt prefix go to the same replica (rendezvous hashing, so adding or
    losing a replica moves only its own share), whose KV cache already holds that prefix. When
    that replica is saturated, least busy first instead."""
    if len(options) < 2:
        return list(options)
    h = pick.prefix_hash()
    home = max(options, key=lambda o: _mix(h ^ stable_hash(o.target.address)))
    if pick.saturated(home):
        return least_busy(options, pick)
    return [home, *least_busy([o for o in options if o is not home], pick)]


_MASK = (1 << 64) - 1


def stable_hash(text: str) -> int:
    """A 64-bit hash that is the same in every process (Python's ``hash`` of a str is salted per
    process): a prefix lands on the same replica after a restart, and every gateway instance in
    front of the same replicas agrees where it goes."""
    digest = hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def _mix(x: int) -> int:
    """SplitMix64's finaliser: every input bit moves every output bit, so that the highest
    score among replicas is a fair draw for each prefix."""
    x &= _MASK
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK
    return x ^ (x >> 31)


STRATEGIES: dict[str, Strategy] = {
    "priority": priority,
    "cost": cost,
    "round_robin": round_robin,
    "weighted": weighted,
    "least_latency": least_latency,
    "least_busy": least_busy,
    "capability": capability,
    "prefix_affinity": prefix_affinity,
}


def prompt_prefix(kind: Kind, body: JSON, limit: int = PREFIX_CHARS) -> str:
    """What identifies a prompt's prefix: for a chat, its messages up to and including the first
    user message (a shared system prompt, and a conversation that keeps its opening as it grows
    turn by turn), roles included, at most ``limit`` characters; otherwise the prompt's first
    ``limit`` characters."""
    if kind != "chat":
        return prompt_text(kind, body)[:limit]
    out: list[str] = []
    size = 0
    for message in body.get("messages", ()):
        content = message.get("content")
        if isinstance(content, list):
            content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
        piece = f"{message.get('role', '')}:{content if isinstance(content, str) else ''}\n"
        out.append(piece)
        size += len(piece)
        if size >= limit or message.get("role") == "user":
            break
    return "".join(out)[:limit]
