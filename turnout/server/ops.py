"""Operations endpoints (``GET /stats``, ``GET /metrics``) and the middleware that starts each
request's trace: reads the client's per-request overrides and adds ``X-Turnout-Overhead-Ms``.

The middleware is pure ASGI: per request it makes one `Trace`, sets one context variable and wraps
``send`` to add a header to the response start; it never touches the body.
"""

from __future__ import annotations

import math

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..errors import InvalidRequestError
from ..gateway import Gateway
from ..telemetry import CONTENT_TYPE, CURRENT, Trace
from .responses import json_response

__all__ = ["OVERRIDES", "TraceMiddleware", "routes"]

#: request header -> the `Trace` attribute it sets (seconds)
OVERRIDES = {
    b"x-turnout-timeout": "timeout",
    b"x-turnout-first-token-timeout": "first_token_timeout",
}
_PREFIX = b"x-turnout-"
_OVERHEAD = b"x-turnout-overhead-ms"


class TraceMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        trace = Trace()
        trace.method, trace.path = scope["method"], scope["path"]  # for the request log
        for name, value in scope["headers"]:
            if name.startswith(_PREFIX) and name in OVERRIDES:
                _override(trace, name, value)

        async def send_with_overhead(message: Message) -> None:
            if message["type"] == "http.response.start" and trace.kind is not None:
                # Streams that commit before their first chunk (slow first token) still report
                # what turnout has spent so far, backend time excluded.
                seconds = trace.overhead_s if trace.overhead_s is not None else trace.overhead_now()
                value = f"{seconds * 1000:.3f}".encode()
                message = {**message, "headers": [*message.get("headers", ()), (_OVERHEAD, value)]}
            await send(message)

        token = CURRENT.set(trace)
        try:
            await self.app(scope, receive, send_with_overhead)
        finally:
            CURRENT.reset(token)


def _override(trace: Trace, name: bytes, raw: bytes) -> None:
    header = name.decode().title()
    try:
        seconds = float(raw)
    except ValueError:
        seconds = math.nan
    if not (math.isfinite(seconds) and seconds > 0):
        got = raw.decode(errors="replace")
        trace.error = InvalidRequestError(
            f"Header {header} must be a positive number of seconds, got {got!r}.",
            param=header,
            code="invalid_header",
        )
        return
    setattr(trace, OVERRIDES[name], seconds)


async def stats(request: Request) -> Response:
    gateway: Gateway = request.app.state.gateway
    return json_response(gateway.stats())


async def metrics(request: Request) -> Response:
    gateway: Gateway = request.app.state.gateway
    return Response(gateway.metrics(), media_type=CONTENT_TYPE)


routes = [
    Route("/stats", stats, methods=["GET"]),
    Route("/metrics", metrics, methods=["GET"]),
]
