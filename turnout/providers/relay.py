"""Passthrough: the usage in a reply relayed in its client's own dialect, read on the way.

When a backend speaks the dialect its client does (llama-server's Anthropic Messages, Ollama's
``/api/chat``), the client's request goes to it as it came (only ``model`` rewritten,
`HttpProvider.relay`) and the reply's bytes come back as they are. turnout still counts the
tokens (statistics, limits, budgets, the usage ledger): they are read here, in OpenAI's shape,
from each dialect's own fields, without re-encoding anything:

- ``messages`` (Anthropic Messages): the reply's ``usage``; in a stream, ``message_start``'s
  ``message.usage`` (the input) and ``message_delta``'s ``usage`` (the output, cumulative);
  ``message_stop`` ends it.
- ``responses`` (OpenAI Responses): the reply's ``usage``; in a stream, ``response.completed``'s
  (or, cut at ``max_output_tokens``, ``response.incomplete``'s) ``response.usage``, which ends it.
- ``ollama/chat`` and ``ollama/generate``: the final object's ``prompt_eval_count`` and
  ``eval_count``; in a stream, the ``done: true`` line, which ends it.

An error the backend sends inside a reply (an ``error`` event, an ``{"error": ...}`` line) is
not relayed: it is raised as a `BackendError`, whose message is cleaned like every backend error
(no secrets, and the backend's address replaced by its name, as `HttpProvider.error_from_reply`
does), and the front frames it in its client's dialect.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncGenerator
from typing import Any, Protocol

import orjson

from ..errors import (
    BackendError,
    BackendProtocolError,
    BackendUnavailableError,
    clean_upstream_message,
)
from ..wire.openai import usage_dict
from ..wire.sse import SSEDecoder
from ..wire.types import Relayed
from .base import JSON, Call, Chunk
from .http import HttpProvider, error_message

__all__ = ["StreamReader", "relay", "relay_stream", "reply_usage", "stream_reader"]

_SSE_DIALECTS = frozenset({"messages", "responses"})


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _messages_usage(usage: Any, into: list[int]) -> None:
    """Anthropic's usage (input excludes cached tokens) into ``[prompt, completion]``."""
    if not isinstance(usage, dict):
        return
    if "input_tokens" in usage:
        into[0] = sum(
            _count(usage.get(k))
            for k in ("input_tokens", "cache_read_input_tokens", "cache_creation_input_tokens")
        )
    if "output_tokens" in usage:
        into[1] = _count(usage["output_tokens"])


def _responses_usage(usage: Any, into: list[int]) -> None:
    if isinstance(usage, dict):
        into[0], into[1] = _count(usage.get("input_tokens")), _count(usage.get("output_tokens"))


def _failed(backend: str, message: str) -> BackendError:
    return BackendError(
        f"backend '{backend}' failed: {clean_upstream_message(message)}", backend=backend
    )


def _object(raw: bytes, backend: str) -> JSON:
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError:
        obj = None
    if not isinstance(obj, dict):
        raise BackendProtocolError(
            f"backend '{backend}' answered with something other than a JSON object: {raw[:120]!r}",
            backend=backend,
        )
    return obj


def reply_usage(dialect: str, raw: bytes, backend: str) -> JSON | None:
    """The usage of a whole reply in ``dialect`` (OpenAI's shape), None if it gives none; an
    error object raises `BackendError`."""
    obj = _object(raw, backend)
    counts = [0, 0]
    if dialect in _SSE_DIALECTS:
        if obj.get("type") == "error" or (dialect == "responses" and obj.get("error")):
            raise _failed(backend, error_message(raw))
        usage = obj.get("usage")
        (_messages_usage if dialect == "messages" else _responses_usage)(usage, counts)
        return usage_dict(*counts) if isinstance(usage, dict) else None
    if "error" in obj:
        raise _failed(backend, str(obj["error"]))
    return usage_dict(_count(obj.get("prompt_eval_count")), _count(obj.get("eval_count")))


class StreamReader(Protocol):
    """Reads a relayed stream's blocks as they pass, whole frames at a time (an SSE event, an
    NDJSON line), so that what is relayed never ends in the middle of one (an error frame may
    follow it): the usage so far, and whether it ended."""

    done: bool

    def feed(self, block: bytes) -> tuple[bytes, JSON | None]:
        """The whole frames this block completes (b"": none yet), and the usage when they told
        more of it (else None); raises on an error frame."""
        ...

    def close(self) -> tuple[bytes, JSON | None]:
        """The backend's reply is over: a last frame without its end, if any; raises if the
        stream never ended."""
        ...


class _Frames(ABC):
    """What both readers share: the bytes of a frame begun, held until it is whole."""

    __slots__ = ("_backend", "_counts", "_held", "done")
    _END = b"\n"  # what ends a frame that came without its end

    def __init__(self, backend: str) -> None:
        self._backend = backend
        self._held = b""
        self._counts = [0, 0]
        self.done = False

    def feed(self, block: bytes) -> tuple[bytes, JSON | None]:
        data = self._held + block if self._held else block
        cut = self._cut(data)
        if not cut:  # no frame ends here
            self._held = data
            return b"", None
        whole, self._held = data[:cut], data[cut:]
        return whole, usage_dict(*self._counts) if self._read(whole) else None

    def close(self) -> tuple[bytes, JSON | None]:
        tail = self._held + self._END if self._held.strip() else b""
        self._held = b""
        told = bool(tail) and self._read(tail)
        if not self.done:
            raise _cut(self._backend)
        return tail, usage_dict(*self._counts) if told else None

    def _cut(self, data: bytes) -> int:
        """Where the last whole frame in ``data`` ends (0: none does)."""
        return data.rfind(b"\n") + 1

    @abstractmethod
    def _read(self, whole: bytes) -> bool:
        """Read whole frames; whether they told more of the usage."""


class _Events(_Frames):
    """An SSE stream (Messages, Responses): only the events that carry usage, end the stream
    or report an error are parsed."""

    __slots__ = ("_decoder",)
    _END = b"\n\n"

    def __init__(self, backend: str) -> None:
        super().__init__(backend)
        self._decoder = SSEDecoder()

    def _cut(self, data: bytes) -> int:
        lf, crlf = data.rfind(b"\n\n"), data.rfind(b"\r\n\r\n")
        return max(lf + 2 if lf >= 0 else 0, crlf + 4 if crlf >= 0 else 0)

    def _read(self, whole: bytes) -> bool:
        told = False
        for event in self._decoder.feed(whole.replace(b"\r\n", b"\n")):
            name = event.event
            if name == "error" or name == "response.failed":
                raise _failed(self._backend, error_message(event.data))
            if name == "message_start":
                _messages_usage(_data(event.data, "message").get("usage"), self._counts)
            elif name == "message_delta":
                _messages_usage(_data(event.data).get("usage"), self._counts)
            elif name == "response.completed" or name == "response.incomplete":
                _responses_usage(_data(event.data, "response").get("usage"), self._counts)
                self.done = True
            elif name == "message_stop":
                self.done = True
                continue
            else:
                continue
            told = True
        return told


class _Lines(_Frames):
    """Ollama's NDJSON: only lines that are not plainly ``"done":false`` are parsed."""

    __slots__ = ()

    def _read(self, whole: bytes) -> bool:
        told = False
        for line in whole.split(b"\n"):
            if not line.strip() or (b'"done":false' in line and b'"error"' not in line):
                continue
            obj = _object(line, self._backend)
            if "error" in obj:
                raise _failed(self._backend, str(obj["error"]))
            if obj.get("done"):
                self.done = told = True
                self._counts[:] = (
                    _count(obj.get("prompt_eval_count")),
                    _count(obj.get("eval_count")),
                )
        return told


def _data(data: bytes, inner: str | None = None) -> JSON:
    """An event's JSON object (or the object under its ``inner`` key); {} if it is none."""
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError:
        return {}
    if inner is not None and isinstance(obj, dict):
        obj = obj.get(inner)
    return obj if isinstance(obj, dict) else {}


def _cut(backend: str) -> BackendUnavailableError:
    return BackendUnavailableError(
        f"backend '{backend}' closed the stream before it was done", backend=backend
    )


def stream_reader(dialect: str, backend: str) -> StreamReader:
    """The reader of a relayed stream in ``dialect``."""
    return _Events(backend) if dialect in _SSE_DIALECTS else _Lines(backend)


def _hidden(provider: HttpProvider, exc: BackendError) -> BackendError:
    """``exc`` (an error the backend sent inside its reply) without the backend's address in
    its message, which the client sees (kept in ``detail``, for the operator)."""
    address = provider.base_url.split("://", 1)[-1]
    if address in exc.message:
        exc.detail = f"{exc.message} (at {provider.base_url})"
        exc.message = exc.message.replace(address, f"<{provider.name}>")
    return exc


async def relay(provider: HttpProvider, call: Call) -> Relayed:
    """``call.native`` sent to the backend's own route for its dialect; its reply, as it came."""
    native = call.native
    assert native is not None
    url = provider.base_url + provider.native_paths[native.dialect]
    with provider.transport_errors():
        async with provider.session.post(url, data=provider.relay_body(call)) as resp:
            raw = await resp.read()
            if resp.status >= 400:
                raise provider.error_from_reply(resp.status, raw, resp.headers)
    try:
        return Relayed(raw, reply_usage(native.dialect, raw, provider.name))
    except BackendError as exc:
        raise _hidden(provider, exc) from None


async def relay_stream(provider: HttpProvider, call: Call) -> AsyncGenerator[Chunk, None]:
    """``call.native`` sent to the backend's own route, streamed: each block of its reply as it
    arrives (`Chunk.raw`), with the usage read so far in ``data`` when the block told more."""
    native = call.native
    assert native is not None
    reader = stream_reader(native.dialect, provider.name)
    url = provider.base_url + provider.native_paths[native.dialect]
    try:
        with provider.transport_errors():
            async with provider.session.post(url, data=provider.relay_body(call)) as resp:
                if resp.status >= 400:
                    raise provider.error_from_reply(resp.status, await resp.read(), resp.headers)
                async for block in resp.content.iter_any():
                    whole, usage = reader.feed(block)
                    if whole:
                        yield Chunk({"usage": usage} if usage else {}, whole)
                    if reader.done:
                        return
        tail, usage = reader.close()
    except BackendError as exc:
        raise _hidden(provider, exc) from None
    if tail:
        yield Chunk({"usage": usage} if usage else {}, tail)
