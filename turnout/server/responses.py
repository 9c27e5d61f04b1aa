"""Responses for the hot path: JSON through orjson, and an SSE stream that stops its producer
the moment the client goes away (so the backend call is cancelled too)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Mapping

import orjson
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from ..errors import GatewayError

__all__ = ["SSE_HEADERS", "EventStream", "disconnected", "error_response", "json_response"]

SSE_HEADERS = {
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",
}


def json_response(
    obj: object, status: int = 200, headers: Mapping[str, str] | None = None
) -> Response:
    return Response(orjson.dumps(obj), status, headers, media_type="application/json")


def error_response(exc: GatewayError) -> Response:
    headers = exc.headers()
    if exc.backend:
        headers["X-Turnout-Backend"] = exc.backend
    return json_response(exc.to_openai(), exc.status, headers)


class EventStream:
    """A ``text/event-stream`` response fed by an async iterator of ready-framed bytes."""

    def __init__(
        self, body: AsyncIterator[bytes], headers: Mapping[str, str] | None = None
    ) -> None:
        self.body = body
        self.headers = [
            (b"content-type", b"text/event-stream; charset=utf-8"),
            *(
                (k.lower().encode(), v.encode())
                for k, v in {**SSE_HEADERS, **(headers or {})}.items()
            ),
        ]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        pump = asyncio.ensure_future(self._pump(send))
        watch = asyncio.ensure_future(disconnected(receive))
        try:
            await asyncio.wait({pump, watch}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            pump.cancel()
            watch.cancel()
            outcome = (await asyncio.gather(pump, watch, return_exceptions=True))[0]
            aclose = getattr(self.body, "aclose", None)
            if aclose is not None:
                with contextlib.suppress(Exception):
                    await aclose()
        if isinstance(outcome, Exception) and not isinstance(outcome, OSError):
            raise outcome

    async def _pump(self, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": self.headers})
        async for piece in self.body:
            await send({"type": "http.response.body", "body": piece, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})


async def disconnected(receive: Receive) -> None:
    """Return when the client has gone away."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
