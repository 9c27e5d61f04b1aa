"""Finding the runtimes that run nearby: probe every preset's default port concurrently with short
timeouts, tell which runtime answers by the signatures the presets declare (presets.py:
`Signature`), list its models, and (with ``discovery: true``) register what is found with a
running gateway and look again periodically.

The prober knows no runtime: it asks every path some signature checks, all at once, and takes the
first signature by rank whose checks hold. Adding a runtime to discovery is a ``signature=`` on
its preset.

Probing llama-cpp-python's server while it streams cuts that stream short (it ends the running
request when any other arrives), so the periodic re-check never probes an endpoint already
registered.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import aiohttp
import orjson

from .. import tasks
from ..config import DiscoveryConfig, ProviderConfig
from . import build_provider
from .base import Provider
from .presets import (
    DIALECT_PORTS,
    DIALECT_SIGNATURES,
    PRESETS,
    Listed,
    Match,
    ModelList,
    Probe,
    Signature,
)

__all__ = [
    "DEFAULT_PORTS",
    "SIGNATURES",
    "TURNOUT",
    "AutoDiscovery",
    "Found",
    "Registry",
    "describe",
    "discover",
    "identify",
    "parse_target",
]

log = logging.getLogger("turnout.discovery")

#: what discovery calls a turnout gateway (this one, or another): named, never a provider to add
TURNOUT = "turnout"
_TURNOUT_SIGNATURE = Signature(
    "turnout gateway",
    0,
    (Match((Probe("/health", key="providers"), Probe("/v1/providers", key="data"))),),
    version=("/health", "version"),
)
#: (provider type, signature) of every runtime discovery can name, the most specific first
SIGNATURES: tuple[tuple[str, Signature], ...] = tuple(
    sorted(
        [(name, p.signature) for name, p in PRESETS.items() if p.signature is not None]
        + list(DIALECT_SIGNATURES.items())
        + [(TURNOUT, _TURNOUT_SIGNATURE)],
        key=lambda item: item[1].rank,
    )
)
#: every preset's and dialect's default port, and the other defaults signatures declare
DEFAULT_PORTS: tuple[int, ...] = tuple(
    sorted(
        {p.port for p in PRESETS.values() if p.endpoint is None}
        | set(DIALECT_PORTS.values())
        | {port for _, sig in SIGNATURES for port in sig.ports}
    )
)
_LISTING = "/v1/models"  # what `Listed` checks read
#: what is asked of every open port, all at once
_PATHS: tuple[str, ...] = tuple(
    dict.fromkeys(
        [_LISTING]
        + [
            check.path
            for _, sig in SIGNATURES
            for match in sig.matches
            for check in match.checks
            if isinstance(check, Probe)
        ]
        + [sig.version[0] for _, sig in SIGNATURES if sig.version is not None]
    )
)
_LOCAL = {"localhost", "127.0.0.1", "::1", "[::1]"}


@dataclass(frozen=True, slots=True)
class Found:
    """One runtime answering at ``host:port``."""

    host: str
    port: int
    runtime: str  # the provider type to configure it with (a preset or a dialect)
    label: str  # what it is, for people
    models: tuple[str, ...] = ()
    version: str | None = None
    detail: str = ""

    @property
    def endpoint(self) -> str:
        host = f"[{self.host}]" if ":" in self.host and not self.host.startswith("[") else self.host
        return f"http://{host}:{self.port}"

    def provider_config(self) -> dict[str, Any]:
        return {"type": self.runtime, "endpoint": self.endpoint}


@dataclass(slots=True)
class _Answer:
    status: int
    body: bytes
    kind: str = ""

    def json(self) -> Any:
        try:
            return orjson.loads(self.body)
        except orjson.JSONDecodeError:
            return None

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    def text(self) -> str:
        return self.body.decode("utf-8", "replace")


@dataclass(slots=True)
class _Answers:
    by_path: dict[str, _Answer] = field(default_factory=dict)
    entries: list[Any] = field(default_factory=list)  # of GET /v1/models
    owners: set[Any] = field(default_factory=set)  # their owned_by (None where absent)

    def __post_init__(self) -> None:
        models = self.ok_json(_LISTING)
        data = models.get("data") if isinstance(models, dict) else None
        self.entries = data if isinstance(data, list) else []
        self.owners = {m.get("owned_by") for m in self.entries if isinstance(m, dict)}

    def ok_json(self, path: str) -> Any:
        answer = self.by_path.get(path)
        return answer.json() if answer is not None and answer.ok else None

    def holds(self, check: Probe | Listed) -> bool:
        if isinstance(check, Listed):
            return (
                (check.owned_by is None or check.owned_by in self.owners)
                and (not check.unowned or None in self.owners)
                and (
                    check.key is None
                    or any(isinstance(m, dict) and check.key in m for m in self.entries)
                )
            )
        answer = self.by_path.get(check.path)
        if answer is None or (not check.html and "html" in answer.kind):
            return False
        wanted = check.status
        if not (
            wanted == "any" or answer.ok if isinstance(wanted, str) else answer.status in wanted
        ):
            return False
        if check.text is not None and check.text.lower() not in answer.text().lower():
            return False
        return _json_holds(check, answer) if check.key is not None or check.shape else True

    def version(self, sig: Signature) -> str | None:
        if sig.version is None:
            return None
        obj = self.ok_json(sig.version[0])
        key = sig.version[1]
        return str(obj[key]) if isinstance(obj, dict) and obj.get(key) else None


def _json_holds(check: Probe, answer: _Answer) -> bool:
    obj = answer.json()
    if obj is None or (check.shape == "object" and not isinstance(obj, dict)):
        return False
    if check.key is None:
        return True
    if not isinstance(obj, dict) or check.key not in obj:
        return False
    return check.value is None or obj[check.key] == check.value


def parse_target(text: str) -> tuple[str, int | None]:
    """``host``, ``host:port``, ``[v6]:port`` or a URL, as (host, port or None)."""
    text = re.sub(r"^https?://", "", text.strip()).rstrip("/")
    match = re.fullmatch(
        r"\[(?P<v6>[^\]]+)\](?::(?P<p1>\d+))?|(?P<host>[^:/]+)(?::(?P<p2>\d+))?", text
    )
    if match is None:
        if text.count(":") > 1:  # a bare IPv6 address
            return text, None
        raise ValueError(f"not a host or host:port: {text!r}")
    host = match["v6"] or match["host"]
    port = match["p1"] or match["p2"]
    return ("127.0.0.1" if host == "localhost" else host), (int(port) if port else None)


async def _open(host: str, port: int, timeout: float) -> bool:
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    except (OSError, TimeoutError):
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True


async def _get(session: aiohttp.ClientSession, url: str, timeout: float) -> _Answer | None:
    try:
        async with session.get(url, timeout=aiohttp.ClientTimeout(total=timeout)) as resp:
            body = await resp.content.read(256 * 1024)
            return _Answer(resp.status, body, resp.headers.get("Content-Type", ""))
    except (aiohttp.ClientError, TimeoutError, OSError, ValueError):
        return None


def _recognise(a: _Answers) -> tuple[str, Signature, str] | None:
    """(provider type, signature, detail) of the first signature whose checks hold."""
    for runtime, sig in SIGNATURES:
        for match in sig.matches:
            if all(a.holds(check) for check in match.checks):
                return runtime, sig, match.detail
    return None


def _model_names(listed: Any, where: ModelList) -> tuple[str, ...]:
    value = listed.get(where.key) if isinstance(listed, dict) else None
    if where.field is None:
        return (str(value),) if value else ()
    entries = value if isinstance(value, list) else ()
    return tuple(str(m[where.field]) for m in entries if isinstance(m, dict) and where.field in m)


async def identify(
    session: aiohttp.ClientSession, host: str, port: int, timeout: float = 1.0
) -> Found | None:
    """Which runtime answers at ``host:port`` (already known to accept connections), or None."""
    base = Found(host, port, "", "").endpoint
    answers = await asyncio.gather(*(_get(session, base + path, timeout) for path in _PATHS))
    found = _Answers({p: a for p, a in zip(_PATHS, answers, strict=True) if a is not None})
    recognised = _recognise(found)
    if recognised is None:
        return None
    runtime, sig, detail = recognised
    where = sig.models
    if where.path in _PATHS:  # asked already
        listed = found.ok_json(where.path)
    else:
        answer = await _get(session, base + where.path, timeout)
        listed = answer.json() if answer is not None and answer.ok else None
    models = _model_names(listed, where)
    return Found(host, port, runtime, sig.label, models, found.version(sig), detail)


async def discover(
    targets: Iterable[str] = ("127.0.0.1",),
    ports: Iterable[int] | None = None,
    *,
    timeout: float = 1.0,
    skip: Callable[[str, int], bool] | None = None,
) -> list[Found]:
    """Every runtime answering on ``targets`` (hosts, or ``host:port``), each host on ``ports``
    (default `DEFAULT_PORTS`), probed concurrently; each probe gives up after ``timeout``.
    Places ``skip`` says are known are not even connected to."""
    wanted: list[tuple[str, int]] = []
    for target in targets:
        host, port = parse_target(target)
        for p in [port] if port is not None else ports or DEFAULT_PORTS:
            if (host, p) not in wanted and not (skip is not None and skip(host, p)):
                wanted.append((host, p))
    opened = await asyncio.gather(*(_open(h, p, timeout) for h, p in wanted))
    reachable = [hp for hp, ok in zip(wanted, opened, strict=True) if ok]
    if not reachable:
        return []
    connector = aiohttp.TCPConnector(limit=0, force_close=True)
    async with aiohttp.ClientSession(connector=connector, skip_auto_headers=("User-Agent",)) as s:
        results = await asyncio.gather(*(identify(s, h, p, timeout) for h, p in reachable))
    return [found for found in results if found is not None]


def _same_place(endpoint: str, host: str, port: int) -> bool:
    there, at = parse_target(endpoint)
    return (there == host or {there, host} <= _LOCAL) and at == port


class Registry(Protocol):
    """What discovery needs of a gateway: the providers it serves, and a way to add some."""

    @property
    def providers(self) -> Mapping[str, Provider]: ...

    async def add_providers(self, added: Mapping[str, Provider]) -> None: ...


class AutoDiscovery:
    """``discovery: true``: register what answers at start-up, then look again every
    ``discovery.interval_seconds`` for runtimes started since (never re-probing one already
    known). A runtime that goes away stays registered; health shows it down."""

    def __init__(self, registry: Registry, settings: DiscoveryConfig) -> None:
        self.registry = registry
        self.settings = settings
        self.found: dict[str, Found] = {}  # provider name -> what was found
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.check()
        self._task = asyncio.create_task(self._loop(), name="turnout-discovery")

    async def close(self) -> None:
        await tasks.stop(self._task)
        self._task = None

    def _known(self, host: str, port: int, extra: Mapping[str, Provider] | None = None) -> bool:
        """Whether a provider (configured or found before) already lives at ``host:port``."""
        providers = [*self.registry.providers.values(), *(extra or {}).values()]
        for provider in providers:
            base = getattr(provider, "base_url", None)
            with contextlib.suppress(ValueError):
                if isinstance(base, str) and _same_place(base, host, port):
                    return True
        return False

    def _name(self, found: Found, added: Mapping[str, Provider]) -> str:
        taken = {*self.registry.providers, *added}
        for name in (found.runtime, f"{found.runtime}-{found.port}"):
            if name not in taken:
                return name
        host = re.sub(r"[^A-Za-z0-9.-]+", "-", found.host).strip("-")
        return f"{found.runtime}-{host}-{found.port}"

    async def check(self) -> list[str]:
        """One round: the names of the providers it registered."""
        s = self.settings
        found = await discover(s.hosts, s.ports, timeout=s.timeout, skip=self._known)
        added: dict[str, Provider] = {}
        try:
            for item in found:
                if item.runtime == TURNOUT or self._known(item.host, item.port, added):
                    continue  # a gateway is no backend (itself: every request would loop)
                name = self._name(item, added)
                config = ProviderConfig.model_validate(item.provider_config())
                provider = build_provider(name, config)
                await provider.start()
                added[name] = provider
                self.found[name] = item
                log.info(
                    "discovered %s at %s, registered as provider %s",
                    item.label,
                    item.endpoint,
                    name,
                )
        finally:
            if added:  # the catalog, router and monitor see them from now on
                await self.registry.add_providers(added)
        return list(added)

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.interval_seconds)
            try:
                await self.check()
            except Exception:  # discovery must never take the gateway down
                log.exception("discovery round failed")


def describe(found: Found) -> Mapping[str, Any]:
    """A found runtime as JSON (``turnout discover --json``)."""
    return {
        "endpoint": found.endpoint,
        "runtime": found.runtime,
        "label": found.label,
        "models": list(found.models),
        "version": found.version,
        "detail": found.detail or None,
    }
