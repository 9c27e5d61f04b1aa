"""The authenticate stage of the pipeline: every request but ``GET /health`` and the dashboard's
(``/ui``, behind its own login) shows a gateway key once keys are in use (or ``auth.required``);
a missing or wrong key is 401 in the dialect of the route's front (the pipeline renders it with
the route's error renderer). A browser logged in to the dashboard with ``server.admin_key``
(its session cookie, turnout/server/admin.py `session_in`) counts as the admin key, so the
dashboard's pages read ``/stats``, ``/v1/providers``, ``/v1/models`` and send the playground's
chats with keys in use.

The key's name and priority go on the request's trace, where the gateway checks its scope and
limits (403, 429; the rate-limit headers it leaves on the trace go out with the response) and
the backends' fair queues read its priority. The stage also answers CORS preflights for
``server.cors_origins`` (before any key: browsers send none). The ledger has exactly one row per
request because the pipeline records every request once, whatever its fate
(turnout/server/pipeline.py).
"""

from __future__ import annotations

import ipaddress
import logging
from typing import Any

from starlette.types import Scope

from ..access.auth import ADMIN, AuthenticationError, credential
from ..access.keys import KeyRecord
from ..config import ServerConfig
from ..telemetry import Trace
from .admin import session_in
from .pipeline import Exchange, Handler

__all__ = ["StartupRefused", "authenticate", "loopback", "refuse_if_open"]

log = logging.getLogger("turnout.server")

_OPEN = frozenset({"/health", "/ui"})
#: the dashboard's own routes: each checks the dashboard's session (turnout/server/ui/session.py),
#: since a browser sends a cookie, never a gateway key
_DASHBOARD = "/ui/"
_USER = b"x-turnout-user"


def authenticate(next: Handler) -> Handler:
    """The pipeline stage (turnout/server/app.py `STAGES`)."""

    async def stage(x: Exchange) -> None:
        gateway = x.app.state.gateway
        scope = x.scope
        cors = gateway.config.server.cors_origins
        if cors and await _cors(x, cors):
            return  # a preflight, answered
        access = gateway.access
        if access is None or scope["path"] in _OPEN or scope["path"].startswith(_DASHBOARD):
            await next(x)
            return
        trace = x.trace
        try:
            principal = access.authenticate(scope["headers"], scope["path"])
        except AuthenticationError as exc:
            if not _dashboard(gateway, scope):
                log.debug("401 %s %s: %s", scope["method"], scope["path"], exc.message)
                raise  # told in the route's dialect by the pipeline
            principal = ADMIN  # a person logged in to the dashboard with the admin key
        trace.front = x.route.front
        if principal is not None:
            _identify(trace, principal, scope)
        await next(x)  # the pipeline records the request, whatever its fate

    return stage


def _dashboard(gateway: Any, scope: Scope) -> bool:
    """A request showing no key, from a browser logged in to the dashboard (a key shown and
    wrong stays wrong)."""
    secret = gateway.config.server.admin_key
    headers = scope["headers"]
    if secret is None or credential(headers) is not None:
        return False
    return session_in(headers, secret.get_secret_value())


def _identify(trace: Trace, principal: KeyRecord, scope: Scope) -> None:
    trace.principal = principal
    trace.key = principal.name
    trace.priority = principal.priority
    for name, value in scope["headers"]:
        if name == _USER and value:
            trace.user = value.decode("latin-1")[:256]


async def _cors(x: Exchange, origins: list[str]) -> bool:
    """Answer a CORS preflight from a listed origin (204) or refuse one from another (403);
    for any other request from a listed origin, add the CORS headers to its response."""
    headers = dict(x.scope["headers"])
    origin = headers.get(b"origin")
    if origin is None:
        return False
    allowed = "*" in origins or origin.decode("latin-1").rstrip("/").lower() in {
        o.rstrip("/").lower() for o in origins
    }
    out = [(b"vary", b"Origin")]
    if allowed:
        out.append((b"access-control-allow-origin", origin))
        if "*" not in origins:
            out.append((b"access-control-allow-credentials", b"true"))
    wanted = headers.get(b"access-control-request-method")
    if x.scope["method"] != "OPTIONS" or wanted is None:
        if allowed:
            x.extra = [*(x.extra or ()), *out]
        return False
    if allowed:
        asked = headers.get(b"access-control-request-headers", b"authorization, content-type")
        out += [
            (b"access-control-allow-methods", b"GET, POST, DELETE, OPTIONS"),
            (b"access-control-allow-headers", asked),
            (b"access-control-max-age", b"600"),
        ]
    await x.send({"type": "http.response.start", "status": 204 if allowed else 403, "headers": out})
    await x.send({"type": "http.response.body", "body": b""})
    return True


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
