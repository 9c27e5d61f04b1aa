"""The authenticate stage: every request but ``GET /health`` shows a gateway key once keys are in
use (or ``auth.required``); a missing or wrong key is 401 in the dialect of the route's front.
The key's name and priority go on the request's trace, where the gateway checks its scope and
limits (403, 429) and the backends' fair queues read its priority. The stage also adds the
rate-limit headers the gateway left on the trace to the response, answers CORS preflights for
``server.cors_origins``, and records a request that asked for a model but never reached
telemetry (a client gone at just the wrong moment), so that the ledger has exactly one row per
request.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from typing import Any

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..access.auth import AuthenticationError
from ..config import ServerConfig
from ..errors import GatewayError
from ..telemetry import CURRENT
from .responses import error_response

__all__ = ["Authenticate", "StartupRefused", "loopback", "refuse_if_open", "render_error"]

log = logging.getLogger("turnout.server")

_OPEN = frozenset({"/health"})
_USER = b"x-turnout-user"


def render_error(path: str, exc: GatewayError) -> ASGIApp:
    """``exc`` as the front that serves ``path`` writes errors."""
    headers = exc.headers()
    if "/api/" in path or path.startswith("/api"):  # Ollama's dialect
        body = orjson.dumps({"error": exc.message})
    elif path.startswith("/v1/messages"):  # Anthropic's
        body = orjson.dumps({"type": "error", "error": {"type": exc.type, "message": exc.message}})
    else:
        return error_response(exc)
    raw = [(b"content-type", b"application/json")]
    raw += [(k.lower().encode(), v.encode()) for k, v in headers.items()]

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": exc.status, "headers": raw})
        await send({"type": "http.response.body", "body": body})

    return app


class Authenticate:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        gateway = scope["app"].state.gateway
        access = gateway.access
        cors = gateway.config.server.cors_origins
        if cors and await _cors(scope, receive, send, cors):
            return  # a preflight, answered
        if cors:
            send = _with_cors(scope, send, cors)
        if access is None or scope["path"] in _OPEN:
            await self.app(scope, receive, send)
            return
        trace = CURRENT.get()
        try:
            principal = access.authenticate(scope["headers"], scope["path"])
        except AuthenticationError as exc:
            log.debug("401 %s %s: %s", scope["method"], scope["path"], exc.message)
            await render_error(scope["path"], exc)(scope, receive, send)
            return
        if principal is not None and trace is not None:
            _identify(trace, principal, scope)
        if trace is None:
            await self.app(scope, receive, send)
            return
        if principal is not None:  # only a key's limits leave headers to add
            send = _with_limits(trace, send)
        try:
            await self.app(scope, receive, send)
        finally:
            if trace.kind is not None and not trace.emitted:
                trace.failed(asyncio.CancelledError())
                gateway.telemetry.emit(trace)


def _with_limits(trace: Any, send: Send) -> Send:
    async def send_with_limits(message: Message) -> None:
        if message["type"] == "http.response.start" and trace.rate_headers:
            message = {**message, "headers": [*message.get("headers", ()), *trace.rate_headers]}
        await send(message)

    return send_with_limits


def _identify(trace: Any, principal: Any, scope: Scope) -> None:
    trace.principal = principal
    trace.key = principal.name
    trace.priority = principal.priority
    for name, value in scope["headers"]:
        if name == _USER and value:
            trace.user = value.decode("latin-1")[:256]


async def _cors(scope: Scope, receive: Receive, send: Send, origins: list[str]) -> bool:
    """Answer a CORS preflight from a listed origin (204) or refuse one from another (403)."""
    if scope["method"] != "OPTIONS":
        return False
    headers = dict(scope["headers"])
    origin = headers.get(b"origin")
    wanted = headers.get(b"access-control-request-method")
    if origin is None or wanted is None:
        return False
    allowed = _allowed(origin, origins)
    out = [(b"vary", b"Origin")]
    if allowed:
        out += [
            (b"access-control-allow-origin", origin),
            (b"access-control-allow-methods", b"GET, POST, DELETE, OPTIONS"),
            (
                b"access-control-allow-headers",
                headers.get(b"access-control-request-headers", b"authorization, content-type"),
            ),
            (b"access-control-max-age", b"600"),
        ]
        if "*" not in origins:
            out.append((b"access-control-allow-credentials", b"true"))
    await send({"type": "http.response.start", "status": 204 if allowed else 403, "headers": out})
    await send({"type": "http.response.body", "body": b""})
    return True


def _allowed(origin: bytes, origins: list[str]) -> bool:
    return "*" in origins or origin.decode("latin-1") in origins


def _with_cors(scope: Scope, send: Send, origins: list[str]) -> Send:
    origin = dict(scope["headers"]).get(b"origin")
    if origin is None or not _allowed(origin, origins):
        return send
    extra = [(b"access-control-allow-origin", origin), (b"vary", b"Origin")]
    if "*" not in origins:
        extra.append((b"access-control-allow-credentials", b"true"))

    async def send_with_cors(message: Message) -> None:
        if message["type"] == "http.response.start":
            message = {**message, "headers": [*message.get("headers", ()), *extra]}
        await send(message)

    return send_with_cors


def loopback(host: str) -> bool:
    if host.strip("[]").lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name that may resolve anywhere


class StartupRefused(RuntimeError):
    """The gateway would serve beyond this machine with nobody asked for a key."""


def refuse_if_open(server: ServerConfig, keys_in_use: bool) -> None:
    """Raise `StartupRefused` (with what to do) for a non-loopback address without keys."""
    if keys_in_use or server.allow_unauthenticated or loopback(server.host):
        return
    raise StartupRefused(
        f"refusing to serve on {server.host}:{server.port} without authentication: anyone who "
        "can reach it could use every model. Create a key first (turnout keys create NAME), or "
        "set auth.required: true, or say --allow-unauthenticated "
        "(server.allow_unauthenticated: true) to serve openly on purpose."
    )
