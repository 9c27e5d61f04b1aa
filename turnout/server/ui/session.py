"""Who may use the dashboard, and its login.

- With ``server.admin_key`` set, a person logs in with the admin key (``POST /ui/api/login``,
  JSON); the reply sets a session cookie, ``HttpOnly`` (no script reads it), ``SameSite=Strict``
  (no other site's page sends it) and sent with every request to the gateway: a logged-in
  browser counts as the admin key on the API the pages read (``/stats``, ``/v1/providers``,
  ``/v1/models``, the playground's fronts; turnout/server/gate.py). The cookie holds an expiry
  and an HMAC of it keyed by the admin key, never the key: any instance with the same key
  accepts it, and changing the key ends every session. Forms post JSON, so the guard stage's
  cross-origin and form-body checks apply (turnout/server/guard.py): no other page can act
  through the cookie.
- Without an admin key, the dashboard answers only to clients on this machine (loopback), and
  only while the gateway asks for no keys: once gateway keys are in use, a person proves who
  they are with ``server.admin_key`` like every other client proves it with a key.

The routes under ``/ui`` pass the authenticate stage without a gateway key (a browser sends
none; turnout/server/gate.py) and check `require` themselves, except the page, its files and
the login.
"""

from __future__ import annotations

import hmac
import ipaddress
import time

from starlette.requests import Request
from starlette.types import ASGIApp

from ...errors import ForbiddenError
from ..admin import SESSION_COOKIE, AdminKeyError, session_ok, sign_session
from ..responses import json_response
from ..stream import read_json

__all__ = ["COOKIE", "SESSION_S", "allowed", "login", "logout", "require", "session", "sign"]

COOKIE = SESSION_COOKIE
#: how long a dashboard session lasts
SESSION_S = 12 * 3600


def _admin_key(request: Request) -> str | None:
    secret = request.app.state.gateway.config.server.admin_key
    return None if secret is None else str(secret.get_secret_value())


def _keys_in_use(request: Request) -> bool:
    access = request.app.state.gateway.access
    return access is not None and bool(access.required)


sign = sign_session


def _session_ok(request: Request, key: str) -> bool:
    return session_ok(request.cookies.get(COOKIE, ""), key)


def _loopback(request: Request) -> bool:
    host = request.client.host if request.client else ""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def allowed(request: Request) -> bool:
    """May this request see the dashboard's data and act through it?"""
    key = _admin_key(request)
    if key is not None:
        return _session_ok(request, key)
    return _loopback(request) and not _keys_in_use(request)


def require(request: Request) -> None:
    """Raise unless `allowed`: 401 (log in first) or 403 (no admin key to log in with)."""
    if allowed(request):
        return
    if _admin_key(request) is None:
        if _keys_in_use(request):
            raise ForbiddenError(
                "Gateway keys are in use: the dashboard needs server.admin_key to log in with.",
                code="admin_key_needed",
            )
        raise ForbiddenError(
            "The dashboard answers only on this machine when no admin key is set "
            "(server.admin_key).",
            code="loopback_only",
        )
    raise AdminKeyError("Log in to the dashboard with the admin key first.", code="not_logged_in")


async def session(request: Request) -> ASGIApp:
    answer: dict[str, object] = {
        "authenticated": allowed(request),
        "login_required": _admin_key(request) is not None,
    }
    if _admin_key(request) is None and _keys_in_use(request):
        answer["message"] = "Gateway keys are in use: set server.admin_key to log in."
    return json_response(answer)


async def login(request: Request) -> ASGIApp:
    key = _admin_key(request)
    if key is None:
        require(request)  # nothing to log in with: loopback only
        return json_response({"authenticated": True})
    body = await read_json(request, 4096)
    given = body.get("key") if isinstance(body, dict) else None
    if not isinstance(given, str) or not hmac.compare_digest(given.encode(), key.encode()):
        raise AdminKeyError("That is not this gateway's admin key.", code="invalid_admin_key")
    expiry = int(time.time()) + SESSION_S
    response = json_response({"authenticated": True})
    response.set_cookie(COOKIE, sign(key, expiry), max_age=SESSION_S, path="/",
                        httponly=True, samesite="strict",
                        secure=request.url.scheme == "https")  # fmt: skip
    return response


async def logout(request: Request) -> ASGIApp:
    response = json_response({"authenticated": False})
    response.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict")
    return response
