"""What the Anthropic, Ollama and Responses fronts share, built on the OpenAI front's helpers (the
bounded body reader, the disconnect guard, the keep-alive timer) until the shared front kit
(``server/stream.py``) lands: a non-streamed call that ends when the client goes, and one stream
driver that takes an encoder (the dialect's framing) and an error renderer.

The driver is the OpenAI front's: the response commits to 200 with the first chunk, so a failure
before it still gets its status in the client's dialect (and the router can retry or fall back);
when the first chunk is slow it commits early (SSE dialects only: a comment line means nothing
to an NDJSON reader) and a failure then ends the stream in the dialect's own way (Anthropic's
``error`` event, Ollama's ``{"error"}`` line, Responses' ``response.failed``).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Protocol, TypeVar

from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from ...errors import GatewayError
from ...gateway import Gateway
from ...wire.types import Chunk, Kind
from ..openai_front import _ClientGone, _while_connected, read_json
from ..responses import Guard, KeepAlive, server_error

__all__ = ["ClientGone", "Encoder", "ErrorRenderer", "FrontStream", "read_json", "until_gone"]

T = TypeVar("T")
ClientGone = _ClientGone
ErrorRenderer = Callable[[GatewayError], Response]


class Encoder(Protocol):
    """A dialect's stream framing: internal chunks in, the bytes its clients read out."""

    def feed(self, chunk: dict[str, Any]) -> bytes: ...

    def close(self) -> bytes: ...

    def fail(self, exc: GatewayError) -> bytes: ...


async def until_gone(request: Any, work: Awaitable[T]) -> T:
    """``work`` in the request's own task, cancelled if the client goes (`ClientGone`)."""
    return await _while_connected(request, work)


def headers(media_type: bytes, backend: str, extra: list[tuple[bytes, bytes]]) -> list[Any]:
    return [
        (b"content-type", media_type),
        (b"cache-control", b"no-cache"),
        (b"x-accel-buffering", b"no"),
        (b"x-turnout-backend", backend.encode("latin-1")),
        *extra,
    ]


class FrontStream:
    """A streamed answer in a client's dialect, served in the request's own task."""

    __slots__ = ("body", "encoder", "extra", "gateway", "keepalive", "kind", "media", "render")

    def __init__(
        self,
        gateway: Gateway,
        kind: Kind,
        body: dict[str, Any],
        encoder: Encoder,
        render: ErrorRenderer,
        media: bytes,
        *,
        keepalive: bool = True,
        extra: list[tuple[bytes, bytes]] | None = None,
    ) -> None:
        self.gateway, self.kind, self.body = gateway, kind, body
        self.encoder, self.render, self.media = encoder, render, media
        self.keepalive, self.extra = keepalive, extra or []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        guard = Guard(receive)
        try:
            await self._serve(scope, receive, send, guard)
        except asyncio.CancelledError:
            if not guard.gone:
                raise
            task = asyncio.current_task()
            assert task is not None
            task.uncancel()  # the client left: the request ends here, quietly
        finally:
            guard.close()

    async def _serve(self, scope: Scope, receive: Receive, send: Send, guard: Guard) -> None:
        every = self.gateway.config.server.sse_keepalive_seconds
        keepalive = KeepAlive(send, every if self.keepalive else 1e9)
        try:
            reply = await self.gateway.open_stream(self.kind, self.body)
        except asyncio.CancelledError:
            keepalive.cancel()
            if guard.gone and not keepalive.started:
                await Response(status_code=499)(scope, receive, send)
            raise
        except Exception as exc:
            committed = await keepalive.stop()
            guard.close()
            if not committed:
                if isinstance(exc, GatewayError):
                    await self.render(exc)(scope, receive, send)
                else:
                    await server_error(scope["method"], scope["path"])(scope, receive, send)
            elif isinstance(exc, GatewayError):
                await send({"type": "http.response.body", "body": self.encoder.fail(exc)})
            else:
                raise
            return
        start = None
        if not await keepalive.stop():
            start = headers(self.media, reply.target.provider.name, self.extra)
        await self._forward(reply.chunks, send, guard, start)

    async def _forward(
        self, chunks: AsyncIterator[Chunk], send: Send, guard: Guard, start: list[Any] | None
    ) -> None:
        encoder = self.encoder
        try:
            try:
                if start is not None:
                    await send({"type": "http.response.start", "status": 200, "headers": start})
                async for chunk in chunks:
                    data = encoder.feed(chunk.data)
                    if data:
                        await send({"type": "http.response.body", "body": data, "more_body": True})
            finally:
                aclose = getattr(chunks, "aclose", None)
                if aclose is not None:
                    await aclose()
            last = encoder.close()
        except GatewayError as exc:
            last = encoder.fail(exc)
        except OSError:
            return
        guard.close()
        await send({"type": "http.response.body", "body": last, "more_body": False})
