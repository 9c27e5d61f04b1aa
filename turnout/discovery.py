"""Finding the runtimes that run nearby: probe every preset's default port concurrently with short
timeouts, tell which runtime answers by its signature endpoints, list its models, and (with
``discovery: true``) register what is found with a running gateway and look again periodically.

Signatures (shared/reference/runtimes.md): Ollama's ``GET /`` says "Ollama is running";
KoboldCpp's ``/api/extra/version`` says ``"result": "KoboldCpp"``; LocalAI has ``/readyz``;
llama.cpp's ``llama-server`` has ``/props``; TabbyAPI's ``/health`` lists ``issues``;
text-generation-webui has ``/v1/internal/health``; LM Studio has ``/api/v0/models``; Jan serves
Swagger at ``/`` and wants a key for ``/v1/models``; the original KoboldAI has
``/api/v1/info/version``; and ``/v1/models`` entries name their owner: ``me`` (llama-cpp-python),
``vllm``, ``humanity`` (GPT4All), ``fastchat``, ``local`` (mistral.rs), none at all (MLX).

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
from typing import TYPE_CHECKING, Any

import aiohttp
import orjson

from . import tasks
from .config import ProviderConfig
from .providers import build_provider
from .providers.presets import DIALECT_PORTS, PRESETS

if TYPE_CHECKING:
    from .gateway import Gateway

__all__ = [
    "DEFAULT_PORTS",
    "AutoDiscovery",
    "Found",
    "describe",
    "discover",
    "identify",
    "parse_target",
]

log = logging.getLogger("turnout.discovery")

#: every preset's and dialect's default port, and the defaults runtimes.md gives where source
#: document 002 says otherwise (mistral.rs 1234, FastChat's API server 8000, llama.cpp's newest
#: 9931, the original KoboldAI 5000)
DEFAULT_PORTS: tuple[int, ...] = tuple(
    sorted(
        {p.port for p in PRESETS.values() if p.endpoint is None}
        | set(DIALECT_PORTS.values())
        | {1234, 8000, 9931, 5000}
    )
)
_LOCAL = {"localhost", "127.0.0.1", "::1", "[::1]"}
#: what is asked of every open port, all at once
_SIGNATURES = (
    "/", "/v1/models", "/health", "/props", "/readyz", "/api/version", "/api/extra/version",
    "/v1/internal/health", "/version", "/api/v0/models", "/api/v1/info/version",
)  # fmt: skip


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


@dataclass(slots=True)
class _Answers:
    by_path: dict[str, _Answer] = field(default_factory=dict)
    entries: list[Any] = field(default_factory=list)  # of GET /v1/models
    owners: set[Any] = field(default_factory=set)  # their owned_by (None where absent)

    def __post_init__(self) -> None:
        models = self.ok_json("/v1/models")
        data = models.get("data") if isinstance(models, dict) else None
        self.entries = data if isinstance(data, list) else []
        self.owners = {m.get("owned_by") for m in self.entries if isinstance(m, dict)}

    def get(self, path: str) -> _Answer | None:
        return self.by_path.get(path)

    def ok_json(self, path: str) -> Any:
        answer = self.by_path.get(path)
        return answer.json() if answer is not None and answer.ok else None

    def text(self, path: str) -> str:
        answer = self.by_path.get(path)
        return answer.body.decode("utf-8", "replace") if answer is not None else ""


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


def _model_ids(models: Any) -> tuple[str, ...]:
    data = models.get("data") if isinstance(models, dict) else None
    return tuple(str(m["id"]) for m in data or () if isinstance(m, dict) and "id" in m)


Recognised = tuple[str, str, str | None, str]  # provider type, label, version, detail


def _version(a: _Answers, path: str, key: str) -> str | None:
    obj = a.ok_json(path)
    return str(obj[key]) if isinstance(obj, dict) and obj.get(key) else None


def _kobold_cpp(a: _Answers) -> Recognised | None:
    # Before Ollama's rule: newer KoboldCpp emulates Ollama's API too.
    obj = a.ok_json("/api/extra/version")
    if isinstance(obj, dict) and obj.get("result") == "KoboldCpp":
        return "kobold", "KoboldCpp", _version(a, "/api/extra/version", "version"), ""
    return None


def _localai(a: _Answers) -> Recognised | None:
    ready = a.get("/readyz")
    if ready is None or "html" in ready.kind:  # a web server answering every path is not it
        return None
    if ready.ok or (ready.status == 503 and b"starting" in ready.body):
        return "localai", "LocalAI", None, "" if ready.ok else "still starting"
    return None


def _ollama(a: _Answers) -> Recognised | None:
    if "Ollama is running" in a.text("/"):
        return "ollama", "Ollama", _version(a, "/api/version", "version"), ""
    return None


Rule = Callable[["_Answers"], "Recognised | None"]


def _owned(owner: str, runtime: str, label: str) -> Rule:
    def rule(a: _Answers) -> Recognised | None:
        return (runtime, label, None, "") if owner in a.owners else None

    return rule


def _by_path(path: str, runtime: str, label: str, key: str | None = None) -> Rule:
    def rule(a: _Answers) -> Recognised | None:
        obj = a.ok_json(path)
        if obj is None or (key is not None and not (isinstance(obj, dict) and key in obj)):
            return None
        return runtime, label, None, ""

    return rule


def _vllm(a: _Answers) -> Recognised | None:
    version = _version(a, "/version", "version")
    if "vllm" in a.owners or (version and a.get("/health") is not None):
        return "vllm", "vLLM", version, ""
    return None


def _mistralrs(a: _Answers) -> Recognised | None:
    if any(isinstance(m, dict) and "tools_available" in m for m in a.entries):
        return "mistralrs", "mistral.rs", None, ""
    return None


def _mlx(a: _Answers) -> Recognised | None:
    if isinstance(a.ok_json("/health"), dict) and a.entries and None in a.owners:
        return "mlx", "MLX (mlx_lm.server)", None, ""
    return None


def _koboldai(a: _Answers) -> Recognised | None:
    version = _version(a, "/api/v1/info/version", "result")
    return ("koboldai", "KoboldAI", version, "") if version else None


def _jan(a: _Answers) -> Recognised | None:
    listed = a.get("/v1/models")
    if "swagger" in a.text("/").lower() and listed is not None and listed.status == 401:
        return "jan", "Jan", None, "needs its API key (providers.<name>.api_key)"
    return None


def _any_openai(a: _Answers) -> Recognised | None:
    models = a.ok_json("/v1/models")
    if isinstance(models, dict) and isinstance(models.get("data"), list):
        return "openai", "OpenAI-compatible server", None, ""
    listed = a.get("/v1/models")
    if listed is not None and listed.status in (401, 403):
        return "openai", "OpenAI-compatible server", None, "needs an API key"
    return None


#: the most specific signature first
_RULES: tuple[Rule, ...] = (
    _kobold_cpp,
    _localai,
    _ollama,
    _by_path("/health", "tabbyapi", "TabbyAPI", key="issues"),
    _owned("tabbyAPI", "tabbyapi", "TabbyAPI"),
    _by_path("/props", "llamacpp", "llama.cpp server"),
    _owned("llamacpp", "llamacpp", "llama.cpp server"),
    _owned("me", "llama-cpp-python", "llama-cpp-python server"),
    _vllm,
    _by_path("/v1/internal/health", "textgen", "text-generation-webui", key="status"),
    _mistralrs,
    _mlx,
    _by_path("/api/v0/models", "lmstudio", "LM Studio"),
    _owned("humanity", "gpt4all", "GPT4All"),
    _owned("fastchat", "fastchat", "FastChat"),
    _koboldai,
    _jan,
    _any_openai,
)


def _recognise(a: _Answers) -> Recognised | None:
    """Which runtime these answers come from: the first rule that matches."""
    for rule in _RULES:
        found = rule(a)
        if found is not None:
            return found
    return None


async def identify(
    session: aiohttp.ClientSession, host: str, port: int, timeout: float = 1.0
) -> Found | None:
    """Which runtime answers at ``host:port`` (already known to accept connections), or None."""
    base = Found(host, port, "", "").endpoint
    answers = await asyncio.gather(*(_get(session, base + path, timeout) for path in _SIGNATURES))
    found = _Answers({p: a for p, a in zip(_SIGNATURES, answers, strict=True) if a is not None})
    recognised = _recognise(found)
    if recognised is None:
        return None
    runtime, label, version, detail = recognised
    models = _model_ids(found.ok_json("/v1/models"))
    if runtime == "ollama":
        tags = await _get(session, base + "/api/tags", timeout)
        listed = tags.json() if tags is not None and tags.ok else None
        names = listed.get("models") if isinstance(listed, dict) else None
        models = tuple(str(m["name"]) for m in names or () if isinstance(m, dict) and "name" in m)
    elif runtime in ("kobold", "koboldai"):
        answer = await _get(session, base + "/api/v1/model", timeout)
        name = answer.json() if answer is not None and answer.ok else None
        models = (str(name["result"]),) if isinstance(name, dict) and name.get("result") else ()
    return Found(host, port, runtime, label, models, version or None, detail)


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


class AutoDiscovery:
    """``discovery: true``: register what answers at start-up, then look again every
    ``discovery.interval_seconds`` for runtimes started since (never re-probing one already
    known). A runtime that goes away stays registered; health shows it down."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.settings = gateway.config.discovery
        self.found: dict[str, Found] = {}  # provider name -> what was found
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.check()
        self._task = asyncio.create_task(self._loop(), name="turnout-discovery")

    async def close(self) -> None:
        await tasks.stop(self._task)
        self._task = None

    def _known(self, host: str, port: int) -> bool:
        """Whether a provider (configured or found before) already lives at ``host:port``."""
        for provider in list(self.gateway.providers.values()):
            base = getattr(provider, "base_url", None)
            with contextlib.suppress(ValueError):
                if isinstance(base, str) and _same_place(base, host, port):
                    return True
        return False

    def _name(self, found: Found) -> str:
        taken = self.gateway.providers
        for name in (found.runtime, f"{found.runtime}-{found.port}"):
            if name not in taken:
                return name
        host = re.sub(r"[^A-Za-z0-9.-]+", "-", found.host).strip("-")
        return f"{found.runtime}-{host}-{found.port}"

    async def check(self) -> list[str]:
        """One round: the names of the providers it registered."""
        s = self.settings
        found = await discover(s.hosts, s.ports, timeout=s.timeout, skip=self._known)
        added: list[str] = []
        for item in found:
            if self._known(item.host, item.port):  # registered while this round ran
                continue
            name = self._name(item)
            provider = build_provider(name, ProviderConfig.model_validate(item.provider_config()))
            await provider.start()
            self.gateway.providers[name] = provider  # the catalog, router and monitor share it
            self.found[name] = item
            added.append(name)
            log.info(
                "discovered %s at %s, registered as provider %s", item.label, item.endpoint, name
            )
        if added:
            await self.gateway.catalog.refresh()
        return added

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
