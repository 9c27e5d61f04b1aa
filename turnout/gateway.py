"""`Gateway`: providers, model catalog, router, health monitor and telemetry, behind one object.

The HTTP server and programs that embed turnout use the same object::

    async with Gateway("turnout.yaml") as gw:
        reply = await gw.chat("gemma-3-270m", [{"role": "user", "content": "Hi"}], max_tokens=16)
        async for chunk in gw.stream("gemma-3-270m", [{"role": "user", "content": "Hi"}]):
            ...
        print(gw.stats())

Each request carries a `Trace` (made by the HTTP middleware, or here for the Python API) that the
router fills in and telemetry receives once the response is done.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import weakref
from collections.abc import AsyncIterator, Awaitable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from .config import Config, ProviderConfig, load_config
from .errors import InvalidRequestError, ShuttingDownError, register_secrets
from .providers import build_provider
from .providers.base import Kind, Provider
from .providers.discovery import AutoDiscovery
from .routing import Catalog, Router, Target
from .routing.attempt import close_stream
from .routing.health import BackendHealth, HealthMonitor
from .store.service import Access
from .telemetry import CURRENT, Telemetry, Trace, otel
from .wire.durations import parse_keep_alive
from .wire.openai import choice_texts, count_usage, embedding_base64, prompt_text, usage_chunk
from .wire.screen import Screen
from .wire.tools import mend_tool_calls, tidy_reply
from .wire.types import JSON, Chunk, Native
from .wire.validate import validate_chat, validate_completion, validate_embedding

__all__ = ["DEFAULT_EMBEDDED", "Gateway", "Reply", "StreamReply", "served_configs"]

log = logging.getLogger("turnout")

#: the provider served when nothing is configured
DEFAULT_EMBEDDED: dict[str, Any] = {
    "type": "embedded",
    "models": [{"name": "gemma-3-270m", "chat_format": "gemma", "n_ctx": 2048}],
}

#: output tokens reserved for a request that gives no max_tokens (settled with the real count)
_DEFAULT_RESERVE = 256


def served_configs(config: Config) -> dict[str, ProviderConfig]:
    """The providers ``config`` serves: those configured, and the embedded default if served."""
    configs = dict(config.providers)
    if _serve_default(config.embedded, configs):
        configs["embedded"] = ProviderConfig.model_validate(DEFAULT_EMBEDDED)
    return configs


def _serve_default(embedded: bool | None, configs: Mapping[str, ProviderConfig]) -> bool:
    """Whether the embedded default is served: ``embedded: true`` always, ``false`` never; unset,
    when nothing is configured, and beside configured providers unless one of them is in-process
    already or the embedded engine is not installed (then the start-up log says what is served)."""
    if embedded is False or "embedded" in configs:
        return False
    if embedded or not configs:
        return True
    if any(c.dialect == "embedded" for c in configs.values()):
        return False
    from .providers.embedded import default_available

    return default_available()


@dataclass(slots=True)
class Reply:
    body: JSON
    target: Target


@dataclass(slots=True)
class StreamReply:
    chunks: AsyncIterator[Chunk]
    target: Target
    relayed: bool = False  # the backend's own bytes in the client's dialect (`Native`)


class Gateway:
    """Every configured backend behind one OpenAI-shaped interface."""

    def __init__(
        self,
        config: Config | Mapping[str, Any] | str | Path | None = None,
        *,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self.config = load_config(config, environ=environ)
        register_secrets(self.config.secrets())
        configs = served_configs(self.config)
        #: where the HTTP server listens, set by whoever serves it; named in the start-up log
        self.address: str | None = None
        self.providers: dict[str, Provider] = {
            name: build_provider(name, cfg) for name, cfg in configs.items() if cfg.enabled
        }
        self.catalog = Catalog(self.providers, self.config.aliases, routes=self.config.routes)
        self.router = Router(self.catalog)
        self.health: HealthMonitor | None = None
        self.telemetry = Telemetry(live=self._live, prompt_text=prompt_text)
        # traces over OTLP when OTEL_EXPORTER_OTLP_ENDPOINT is set (the otel extra)
        self._otel = otel.from_environ(os.environ if environ is None else environ)
        if self._otel is not None:
            self.telemetry.add_sink(self._otel)
        security = self.config.security
        self.screen = Screen(
            image_schemes=frozenset(security.image_url_schemes),
            image_private_hosts=security.image_private_hosts,
            keep_alive_min=parse_keep_alive(security.request_keep_alive_min),
            keep_alive_max=parse_keep_alive(security.request_keep_alive_max),
        )
        self._refresher: asyncio.Task[None] | None = None
        self._started = False
        self._starting = asyncio.Lock()
        self.discovery: AutoDiscovery | None = None
        self.draining = False  # the server is stopping: new requests are refused (`drain`)
        #: the requests in flight: each one's task and trace
        self._inflight: weakref.WeakKeyDictionary[asyncio.Task[Any], Trace] = (
            weakref.WeakKeyDictionary()
        )
        self._cut: set[asyncio.Task[Any]] = set()  # cancelled by `cut`, not by their client
        self.access: Access | None = None

    def use_access(self) -> Access:
        """Turn on gateway keys, limits and the usage ledger (the HTTP server does; the Python
        API has them off unless asked). Call before `start`."""
        if self.access is None:
            self.access = Access(self.config, self.telemetry)
        return self.access

    async def start(self) -> None:
        """Load engines and open connections; called by ``async with`` and the HTTP server, and
        by the first request otherwise (an engine never loaded would leave it waiting forever)."""
        async with self._starting:
            if self._started:
                return
            await asyncio.gather(*(p.start() for p in self.providers.values()))
            if self.config.discovery.enabled:  # registers what answers now, looks again later
                self.discovery = AutoDiscovery(self, self.config.discovery)
                await self.discovery.start()
            await self.catalog.refresh()
            self._refresher = asyncio.create_task(
                self._refresh_loop(), name="turnout-model-refresh"
            )
            health = self.config.health
            if health.enabled:
                self.health = HealthMonitor.configured(
                    self.providers, health, self.router.backend, self.catalog.served, self._probed
                )
                self.health.start()  # the first round runs now, in the background
            self.router.health = self.health
            self.telemetry.start()
            if self.access is not None:
                await self.access.start()
            self._started = True
            log.info("%s", self.describe())

    def describe(self) -> str:
        """One line: the models served, by provider, and the address (the start-up log)."""
        parts = [
            f"{', '.join(self.catalog.served(p)) or 'no model listed'} from {name} "
            f"({p.config.type})"
            for name, p in self.providers.items()
        ]
        where = f" on {self.address}" if self.address else ""
        return f"turnout serving{where}: {'; '.join(parts) or 'no provider'}"

    async def close(self) -> None:
        if self.discovery is not None:
            await self.discovery.close()
            self.discovery = None
        if self._refresher is not None:
            self._refresher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._refresher
            self._refresher = None
        if self.health is not None:
            await self.health.close()
            self.health = None
        await self.telemetry.close()  # flushes what is still pending
        if self.access is not None:
            await self.access.close()  # after telemetry's last flush: every ledger row written
        outcomes = self.telemetry.outcomes
        log.info(
            "statistics at close: %d requests (%s)",
            sum(outcomes.values()), ", ".join(f"{n} {o}" for o, n in outcomes.items()),
        )  # fmt: skip
        if self._otel is not None:
            await asyncio.to_thread(self._otel.close)  # sends the spans still queued
        await asyncio.gather(*(p.close() for p in self.providers.values()))
        self._started = False

    @property
    def started(self) -> bool:
        return self._started

    def drain(self) -> None:
        """Refuse new requests from now on (503 ``shutting_down``); those in flight go on."""
        self.draining = True

    def in_flight(self) -> int:
        """Requests (streams included) being served now."""
        return sum(1 for task in self._inflight if not task.done())

    def cut(self) -> int:
        """End every request still in flight (the shutdown grace is over): each raises
        `ShuttingDownError` where it waits, so a stream ends with an error event in its client's
        dialect and a plain request with a 503. Returns how many were cut."""
        cut = 0
        for task, trace in list(self._inflight.items()):
            if not task.done():
                trace.cut()  # its record says so, however the cancellation lands
                self._cut.add(task)
                task.cancel()
                cut += 1
        return cut

    def cut_short(self, exc: BaseException) -> ShuttingDownError | None:
        """The error to raise instead of ``exc`` when ``exc`` is `cut`'s cancellation of the
        current task (which is then no longer cancelled); None for any other exception."""
        if not self._cut or not isinstance(exc, asyncio.CancelledError):
            return None
        task = asyncio.current_task()
        if task is None or task not in self._cut:
            return None
        self._cut.discard(task)
        task.uncancel()
        return ShuttingDownError(
            "turnout is shutting down: the request did not finish within the shutdown grace "
            "(server.shutdown_grace_seconds)."
        )

    def _admit(self, trace: Trace) -> None:
        """Raise what refuses the request before any routing; else count it as in flight."""
        if trace.error is not None:
            raise trace.error
        if self.draining:
            raise ShuttingDownError("turnout is shutting down and takes no new requests.")
        task = asyncio.current_task()
        if task is not None:
            self._inflight[task] = trace

    def _settled(self) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._inflight.pop(task, None)

    async def add_providers(self, added: Mapping[str, Provider]) -> None:
        """Serve ``added`` (started providers, by name) from now on: discovery registers what
        it finds here; the catalog, router and health monitor share `providers`."""
        self.providers.update(added)
        await self.catalog.refresh()

    async def __aenter__(self) -> Gateway:
        await self.start()
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def _refresh_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.server.models_refresh_seconds)
            try:
                await self.catalog.refresh()
            except Exception:  # a refresh must never end the loop
                log.exception("model list refresh failed")

    def _probed(self, name: str, health: BackendHealth) -> None:
        self.router.probe_result(name, health.ok)

    def _live(self) -> dict[str, dict[str, object]]:
        live = self.router.live()
        snapshot = self.health.snapshot.backends if self.health is not None else {}
        for name, entry in live.items():
            probed = snapshot.get(name)
            entry["health"] = probed.to_json() if probed is not None else None
        return live

    def _trace(
        self,
        kind: Kind,
        body: JSON,
        stream: bool,
        timeout: float | None,
        first_token_timeout: float | None,
    ) -> Trace:
        """The request's trace: the HTTP middleware's (with the client's overrides), else new."""
        trace = CURRENT.get()
        if trace is None or trace.kind is not None:  # the Python API, or a second call
            trace = Trace()
        trace.begin(kind, body.get("model", ""), stream)
        if timeout is not None:
            trace.timeout = _seconds("timeout", timeout)
        if first_token_timeout is not None:
            trace.first_token_timeout = _seconds("first_token_timeout", first_token_timeout)
        return trace

    # The interface the HTTP fronts use: bodies already validated. ``timeout`` (the whole
    # request, retries included) and ``first_token_timeout`` (each attempt) override the route's
    # and the backend's; over HTTP they come from the X-Turnout-Timeout and
    # X-Turnout-First-Token-Timeout headers.

    async def complete(
        self,
        kind: Kind,
        body: JSON,
        *,
        timeout: float | None = None,
        first_token_timeout: float | None = None,
        native: Native | None = None,
    ) -> Reply:
        if not self._started:
            await self.start()
        trace = self._trace(kind, body, False, timeout, first_token_timeout)
        try:
            self._admit(trace)
            self.screen.check(kind, body)
            if native is not None:  # a backend may be sent the client's own request as it came
                self.screen.check(kind, native.body)
            if trace.principal is not None and (waiting := self._limit(trace, kind, body)):
                await waiting
            result, target = await self.router.complete(kind, body, trace=trace, native=native)
            reply = Reply(_conform(kind, body, result), target)
        except BaseException as exc:
            cut = self.cut_short(exc)
            self._abandon(trace, cut or exc, cut is not None)
            if cut is not None:
                raise cut from None
            raise
        finally:
            self._settled()
        trace.usage(result.get("usage"), body)
        trace.choices = result.get("choices")
        trace.ready()
        if not trace.held:  # an HTTP request's record goes when its response is over
            self.telemetry.emit(trace)
        return reply

    async def open_stream(
        self,
        kind: Kind,
        body: JSON,
        *,
        timeout: float | None = None,
        first_token_timeout: float | None = None,
        native: Native | None = None,
    ) -> StreamReply:
        if not self._started:
            await self.start()
        trace = self._trace(kind, body, True, timeout, first_token_timeout)
        try:
            self._admit(trace)
            self.screen.check(kind, body)
            if native is not None:  # a backend may be sent the client's own request as it came
                self.screen.check(kind, native.body)
            if trace.principal is not None and (waiting := self._limit(trace, kind, body)):
                await waiting
            chunks, target = await self.router.stream(kind, body, trace=trace, native=native)
        except BaseException as exc:
            self._settled()
            cut = self.cut_short(exc)
            self._abandon(trace, cut or exc, cut is not None)
            if cut is not None:
                raise cut from None
            raise
        trace.ready()
        relayed = trace.passthrough  # the backend's own bytes: nothing to mend
        if body.get("tools") and not relayed:  # only a stream that may call tools pays for it
            chunks = mend_tool_calls(chunks)
        metered = self._metered(kind, body, chunks, target, trace, relayed)
        return StreamReply(metered, target, relayed)

    def _limit(self, trace: Trace, kind: Kind, body: JSON) -> Awaitable[None] | None:
        """The request's gateway key may use this model and is within its limits (raises 403 or
        429 otherwise, at once or from the awaitable returned when the limits are shared);
        tokens are reserved from max_tokens and an estimate of the prompt."""
        access = self.access
        assert access is not None
        user = body.get("user")
        if trace.user is None and isinstance(user, str) and user:
            trace.user = user
        tokens = 0
        if access.needs_tokens(trace):
            most = body.get("max_completion_tokens") or body.get("max_tokens")
            out = most if isinstance(most, int) and kind != "embedding" else 0
            if not out and kind != "embedding":
                out = _DEFAULT_RESERVE
            tokens = out + (len(prompt_text(kind, body)) + 3) // 4
        return access.admit(trace, kind, body, tokens)

    def _abandon(self, trace: Trace, exc: BaseException, cut: bool = False) -> None:
        """A request that failed (or was cancelled, or cut) before its reply: note how, and
        record it as it stands unless the pipeline does."""
        if cut:
            trace.cut()
        else:
            trace.failed(exc)
        trace.ready()
        if not trace.held:
            self.telemetry.emit(trace)

    def stats(self) -> dict[str, Any]:
        """Per backend and model: requests, successes, failures, latency (average, p50, p95),
        time to first token, tokens in and out, cost; with each backend's health, circuit and
        concurrency. What ``GET /stats`` answers."""
        return self.telemetry.stats()

    def metrics(self) -> bytes:
        """The Prometheus text exposition ``GET /metrics`` answers."""
        return self.telemetry.render_metrics()

    async def _metered(
        self,
        kind: Kind,
        body: JSON,
        chunks: AsyncIterator[Chunk],
        target: Target,
        trace: Trace | None = None,
        relayed: bool = False,
    ) -> AsyncIterator[Chunk]:
        """Read usage as the stream passes; supply it when the backend never does. Hand the
        request's trace to telemetry when the stream is over, however it ends. A ``relayed``
        stream's chunks are the backend's bytes, with the usage its provider read in them."""
        trace = trace or Trace()
        include_usage = not relayed and bool(
            (body.get("stream_options") or {}).get("include_usage")
        )
        usage: JSON | None = None
        collect = include_usage  # even a backend that should report usage may not
        # Count as soon as the text is complete, while the backend call still holds its
        # concurrency slot: llama-cpp-python ends the stream it is serving when any other request
        # arrives, its tokenize endpoint included, so counting after the slot is free would cut
        # off the next queued stream.
        count_early = include_usage and not target.provider.stream_usage
        counted: tuple[int, JSON] | None = None  # (pieces counted, usage)
        pieces: list[str] = []
        last: JSON = {}
        sent = 0  # chunks with choices: about one token each, when nobody counts
        try:
            try:
                async for chunk in chunks:
                    data = chunk.data
                    choices = data.get("choices")
                    if data.get("usage"):
                        usage = data["usage"]
                        if not choices and not include_usage and not relayed:
                            continue  # the usage chunk turnout asked for on the client's behalf
                    if choices:
                        sent += 1
                        trace.choices = choices
                        if collect:
                            pieces.extend(choice_texts(choices))
                            if count_early and _finished(choices):
                                text = "".join(pieces)
                                counted = (len(pieces), await self._count(kind, body, target, text))
                    last = data
                    yield chunk
            finally:  # a client gone early: end the backend call and free its slot now, not at GC
                await close_stream(chunks)
            if usage is None and include_usage:
                if counted is None or counted[0] != len(pieces):
                    counted = (0, await self._count(kind, body, target, "".join(pieces)))
                usage = counted[1]
                yield Chunk(usage_chunk(kind, last, target.model, usage))
        except BaseException as exc:
            raise self._ended_early(trace, exc)  # noqa: B904 (the error itself, or the cut)
        finally:
            self._settled()
            trace.usage(usage, body, tokens_out=sent)
            if not trace.held:
                self.telemetry.emit(trace)

    def _ended_early(self, trace: Trace, exc: BaseException) -> BaseException:
        """What a stream that ended early raises: the cut once the shutdown grace is over, else
        the error itself (a GatewayError mid-stream, or the client gone: cancelled)."""
        cut = self.cut_short(exc)
        if cut is None:
            trace.failed(exc)
            return exc
        trace.cut()
        return cut

    async def _count(self, kind: Kind, body: JSON, target: Target, completion: str) -> JSON:
        """A stream's usage counted by the backend's tokenizer (estimated where it cannot)."""
        provider = target.provider
        return await count_usage(
            provider.count_tokens, target.model, prompt_text(kind, body), completion
        )

    # The Python API.

    # ``timeout`` and ``first_token_timeout`` (seconds) are turnout's per-request overrides; every
    # other keyword is a field of the OpenAI request body.

    async def chat(
        self,
        model: str,
        messages: list[JSON],
        *,
        timeout: float | None = None,
        first_token_timeout: float | None = None,
        **params: Any,
    ) -> JSON:
        """A chat completion, as OpenAI's ``chat.completion`` object."""
        body = validate_chat({**params, "model": model, "messages": messages, "stream": False})
        limits: dict[str, Any] = {"timeout": timeout, "first_token_timeout": first_token_timeout}
        return (await self.complete("chat", body, **limits)).body

    async def stream(
        self,
        model: str,
        messages: list[JSON],
        *,
        timeout: float | None = None,
        first_token_timeout: float | None = None,
        **params: Any,
    ) -> AsyncIterator[JSON]:
        """A streamed chat completion, as OpenAI ``chat.completion.chunk`` objects."""
        body = validate_chat({**params, "model": model, "messages": messages, "stream": True})
        limits: dict[str, Any] = {"timeout": timeout, "first_token_timeout": first_token_timeout}
        reply = await self.open_stream("chat", body, **limits)
        async for chunk in reply.chunks:
            yield chunk.data

    async def completion(
        self,
        model: str,
        prompt: str | list[str],
        *,
        timeout: float | None = None,
        first_token_timeout: float | None = None,
        **params: Any,
    ) -> JSON:
        """A text completion, as OpenAI's ``text_completion`` object."""
        body = validate_completion({**params, "model": model, "prompt": prompt, "stream": False})
        limits: dict[str, Any] = {"timeout": timeout, "first_token_timeout": first_token_timeout}
        return (await self.complete("completion", body, **limits)).body

    async def embed(
        self, model: str, input: str | list[str], *, timeout: float | None = None, **params: Any
    ) -> JSON:
        """Embeddings, as OpenAI's embedding list object."""
        body = validate_embedding({**params, "model": model, "input": input})
        return (await self.complete("embedding", body, timeout=timeout)).body

    async def models(self) -> list[JSON]:
        """Every model every provider serves, as ``provider/model`` ids, then the aliases."""
        return self.catalog.model_objects()


def _conform(kind: Kind, body: JSON, result: JSON) -> JSON:
    """Fill in what OpenAI's schema requires of a reply and local runtimes leave out: a chat
    message's ``refusal`` and a choice's ``logprobs`` (both null), and base64 embeddings when the
    client asked for them (runtimes answer with floats whatever ``encoding_format`` says)."""
    if kind in ("chat", "completion"):
        for choice in result.get("choices") or ():
            choice.setdefault("logprobs", None)
            message = choice.get("message")
            if kind == "chat" and isinstance(message, dict):
                message.setdefault("refusal", None)
                if message.get("tool_calls"):
                    tidy_reply(result)
    elif kind == "embedding" and body.get("encoding_format") == "base64":
        for item in result.get("data") or ():
            vector = item.get("embedding")
            if isinstance(vector, list):
                item["embedding"] = embedding_base64(vector)
    return result


def _finished(choices: list[JSON]) -> bool:
    return all(choice.get("finish_reason") for choice in choices)


def _seconds(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidRequestError(f"'{name}' must be a number of seconds, got {value!r}.")
    if not (math.isfinite(value) and value > 0):
        raise InvalidRequestError(f"'{name}' must be a positive number of seconds, got {value!r}.")
    return float(value)
