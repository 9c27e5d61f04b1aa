"""What the Anthropic, Ollama and Responses fronts add to the ingress kit (turnout/server/
stream.py): a wire translator's stream (``feed`` / ``close`` / ``fail``, turnout/wire/) as the
kit's `Encoder`, and the raw headers of a JSON reply with extra ones (a warning).

Their endpoints are written out rather than made by `Front.inference`: each needs what the
request said besides the internal body (the Anthropic stop sequences, the Responses object's
echoed fields, when an Ollama request began) to shape its answer.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from ...errors import GatewayError
from ...wire.types import Chunk
from ..stream import Encoder, HeaderCache

__all__ = ["Framed", "Translator", "json_headers", "stream_headers"]


class Translator(Protocol):
    """A dialect's stream translator (turnout/wire/): internal chunks in, its bytes out."""

    def feed(self, chunk: dict[str, Any]) -> bytes: ...

    def close(self) -> bytes: ...

    def fail(self, exc: GatewayError) -> bytes: ...


class Framed:
    """A `Translator` as the kit's `Encoder`: its frames, the front's response headers (per
    backend, built once) and keep-alive. ``relay``: the `Encoder` of a relayed stream, from
    this one, where the front needs more than `Relaying` (None: `Relaying`)."""

    __slots__ = ("_wire", "keepalive", "relay", "start")

    def __init__(
        self,
        wire: Translator,
        start: HeaderCache,
        keepalive: bytes,
        relay: Callable[[Encoder], Encoder] | None = None,
    ) -> None:
        self._wire, self.start, self.keepalive = wire, start, keepalive
        self.relay = relay

    def chunk(self, chunk: Chunk) -> bytes:
        return self._wire.feed(chunk.data)

    def end(self) -> bytes:
        return self._wire.close()

    def error(self, exc: GatewayError) -> bytes:
        return self._wire.fail(exc)


def stream_headers(media_type: bytes) -> HeaderCache:
    """A stream's response headers: its media type, no caching, no proxy buffering."""
    return HeaderCache(
        [
            (b"content-type", media_type),
            (b"cache-control", b"no-cache"),
            (b"x-accel-buffering", b"no"),
        ]
    )


def json_headers(backend: str, extra: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    return [
        (b"content-type", b"application/json"),
        (b"x-turnout-backend", backend.encode()),
        *extra,
    ]
