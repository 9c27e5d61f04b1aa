"""The admin key: who may change the models a gateway holds (downloads, load, unload, Ollama
pull and delete).

With ``server.admin_key`` set (``TURNOUT_SERVER__ADMIN_KEY``), every model-changing endpoint (a
route the table marks ``admin``; the pipeline's `admin_key` stage checks it) asks
for ``Authorization: Bearer <key>``, the header OpenAI's SDK sends for its API key and Ollama's
Python client sends from ``OLLAMA_API_KEY``. A missing or wrong key is 401 (code
``missing_admin_key`` / ``invalid_admin_key``, with ``WWW-Authenticate: Bearer``): the caller has
not proven who it is, which is what 401 means to both SDKs (``AuthenticationError``,
``ResponseError`` with ``status_code`` 401); 403 stays for a switch that is off for everyone
(``LOCAL_LLM_ENABLE_PULL``). Keys are compared in constant time. Without an admin key the
endpoints are open as before, and `warn_if_open` says so at start-up when the gateway listens
beyond this machine.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
import time
from collections.abc import Sequence
from dataclasses import replace

from starlette.requests import Request

from ..access.auth import not_admin
from ..config import ServerConfig
from ..errors import GatewayError
from ..telemetry import CURRENT
from .pipeline import Exchange, Handler, Route

__all__ = [
    "SESSION_COOKIE",
    "AdminKeyError",
    "admin_key",
    "check_admin",
    "guarded",
    "session_in",
    "sign_session",
    "warn_if_open",
]

log = logging.getLogger("turnout.server")

#: methods that change state; a route answering one of them is marked ``admin`` by `guarded`
CHANGING = frozenset({"POST", "PUT", "PATCH", "DELETE"})


#: the dashboard's login cookie (turnout/server/ui/session.py): a logged-in person's browser
#: stands in for the admin key, on the dashboard's own routes and on the API it reads
SESSION_COOKIE = "turnout_ui"


def sign_session(key: str, expiry: int) -> str:
    """A session cookie's value: its expiry and an HMAC of it keyed by the admin key (never the
    key itself): any instance with the same key accepts it; a new key ends every session."""
    mac = hmac.new(key.encode(), f"turnout-ui|{expiry}".encode(), hashlib.sha256).hexdigest()
    return f"{expiry}.{mac}"


def session_ok(raw: str, key: str) -> bool:
    """Is ``raw`` an unexpired session cookie signed with ``key``? (constant-time compare)"""
    expiry, _, _ = raw.partition(".")
    if not expiry.isdigit() or int(expiry) < time.time():
        return False
    return hmac.compare_digest(raw, sign_session(key, int(expiry)))


def session_in(headers: Sequence[tuple[bytes, bytes]], key: str | None) -> bool:
    """Does a request with these (ASGI) headers carry a valid dashboard session? Its cookie is
    ``HttpOnly`` and ``SameSite=Strict``, and the guard stage refuses cross-origin changes and
    form bodies (turnout/server/guard.py), so no other site's page can act with it."""
    if key is None:
        return False
    for name, value in headers:
        if name == b"cookie":
            for part in value.decode("latin-1").split(";"):
                cookie, _, raw = part.strip().partition("=")
                if cookie == SESSION_COOKIE and session_ok(raw.strip('"'), key):
                    return True
    return False


class AdminKeyError(GatewayError):
    status = 401
    type = "authentication_error"
    code = "invalid_admin_key"

    def headers(self) -> dict[str, str]:
        return {**super().headers(), "WWW-Authenticate": 'Bearer realm="turnout admin"'}


def check_admin(request: Request) -> None:
    """Raise `AdminKeyError` unless the request carries the admin key (or none is set); with
    gateway keys in use (turnout/server/gate.py), `PermissionDeniedError` (403) for a key that is
    not an admin key."""
    trace = CURRENT.get()
    principal = trace.principal if trace is not None else None
    if principal is not None:
        if principal.admin:
            return
        raise not_admin(principal, f"{request.method} {request.url.path}")
    secret = request.app.state.gateway.config.server.admin_key
    if secret is None:
        return
    key: str = secret.get_secret_value()
    header = request.headers.get("authorization", "")
    if not header and session_in(request.scope["headers"], key):
        return  # the dashboard, logged in with this key
    scheme, _, token = header.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        got = "no Authorization header" if not header else "an Authorization header that is not"
        raise AdminKeyError(
            f"{request.method} {request.url.path} changes the gateway's models and needs the "
            f"admin key (server.admin_key) as 'Authorization: Bearer <key>'; the request has "
            f"{got}{' Bearer <key>' if header else ''}.",
            code="missing_admin_key",
        )
    if not hmac.compare_digest(token.encode(), key.encode()):
        raise AdminKeyError(
            f"The bearer token of {request.method} {request.url.path} is not this gateway's "
            "admin key (server.admin_key).",
            code="invalid_admin_key",
        )


def admin_key(next: Handler) -> Handler:
    """The pipeline stage: a route the table marks ``admin`` (it changes the gateway's models)
    serves only a request with the admin key; a refusal is told in the route's dialect."""

    async def stage(x: Exchange) -> None:
        if x.route.admin:
            check_admin(x)
        await next(x)

    return stage


def guarded(routes: Sequence[Route]) -> list[Route]:
    """``routes`` with every one that takes POST, PUT, PATCH or DELETE marked ``admin`` (behind
    the admin key). For a module whose changing routes all change models
    (turnout/server/models.py: downloads, load, unload)."""
    return [replace(r, admin=True) if CHANGING & set(r.methods) else r for r in routes]


def _loopback(host: str) -> bool:
    if host.strip("[]").lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name that may resolve anywhere


def warn_if_open(server: ServerConfig) -> bool:
    """Log one warning when model-changing endpoints are open beyond this machine; whether it
    did."""
    if server.admin_key is not None or _loopback(server.host):
        return False
    log.warning(
        "model-changing endpoints (downloads, load/unload, backend pull/delete) are open to "
        "anyone who reaches %s:%d; set server.admin_key (TURNOUT_SERVER__ADMIN_KEY) to "
        "require a key",
        server.host,
        server.port,
    )
    return True
