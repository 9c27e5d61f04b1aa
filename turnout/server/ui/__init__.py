"""The dashboard at ``/ui``: pages served from files in the package (static/: one HTML page, its
script and its stylesheet, turnout's own code; no CDN, no build step), reading the gateway's own
JSON endpoints (``/stats``, ``/v1/providers``, ``/v1/local/ps``, ``/v1/models``) and a few of its
own under ``/ui/api``.

Who may see it:

- With ``server.admin_key`` set, a person logs in with the admin key (``POST /ui/login``, JSON);
  the reply sets a session cookie, ``HttpOnly`` (no script reads it), ``SameSite=Strict`` (no
  other site's page sends it) and scoped to ``/ui``. The cookie holds an expiry and an HMAC of
  it keyed by the admin key, never the key: any instance with the same key accepts it, and
  changing the key ends every session. Forms post JSON, so the guard stage's cross-origin and
  form-body checks apply (turnout/server/guard.py): no other page can act through the cookie.
- Without an admin key, the dashboard answers only to clients on this machine (loopback).

``/ui/api/history`` is the last hour in 10-second buckets (requests, errors, tokens out, mean
latency and time to first token), what the Overview's charts draw. ``/ui/api/requests`` is the
recent-requests log: the last `RECENT` finished requests (time, key,
model, backend, status, tokens, latency, time to first token), kept by a telemetry sink from the
drain, never their content.
"""

from __future__ import annotations

import collections
import hashlib
import hmac
import ipaddress
import time
from pathlib import Path
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp

from ...errors import ForbiddenError, NotFoundError
from ...gateway import Gateway
from .. import models as local_models
from ..admin import AdminKeyError
from ..pipeline import Route
from ..responses import json_response
from ..stream import read_json

__all__ = ["RECENT", "Recent", "recent", "routes"]

_STATIC = Path(__file__).resolve().parent / "static"
_TYPES = {
    "app.js": "application/javascript; charset=utf-8",
    "app.css": "text/css; charset=utf-8",
}
COOKIE = "turnout_ui"
#: how long a dashboard session lasts
SESSION_S = 12 * 3600
#: finished requests kept for the dashboard's request log
RECENT = 500


#: the Overview's charts: requests per `BUCKET_S` seconds, for the last hour
BUCKET_S = 10
BUCKETS = 360


class Recent:
    """A telemetry sink: a summary of the last `RECENT` finished requests (no content), and
    per-`BUCKET_S` totals for the last hour (the Overview's charts), both from the drain."""

    def __init__(self, size: int = RECENT) -> None:
        self.items: collections.deque[dict[str, Any]] = collections.deque(maxlen=size)
        #: bucket start (epoch s) -> [requests, errors, tokens out, latency sum (s), ttft sum, n]
        self.buckets: collections.OrderedDict[int, list[float]] = collections.OrderedDict()

    def _count(self, at: float, trace: Any, latency: float) -> None:
        start = int(at) // BUCKET_S * BUCKET_S
        bucket = self.buckets.get(start)
        if bucket is None:
            bucket = self.buckets[start] = [0, 0, 0, 0.0, 0.0, 0]
            while len(self.buckets) > BUCKETS:
                self.buckets.popitem(last=False)
        bucket[0] += 1
        bucket[1] += trace.outcome == "error"
        bucket[2] += trace.tokens_out or 0
        bucket[3] += latency
        if trace.ttft_s is not None:
            bucket[4] += trace.ttft_s
            bucket[5] += 1

    def history(self, now: float) -> list[dict[str, Any]]:
        """The last hour, one entry a bucket (empty buckets included), oldest first."""
        last = int(now) // BUCKET_S * BUCKET_S
        out = []
        for start in range(last - (BUCKETS - 1) * BUCKET_S, last + 1, BUCKET_S):
            n, errors, tokens, latency, ttft, timed = self.buckets.get(start, (0, 0, 0, 0, 0, 0))
            out.append({
                "time": start, "requests": n, "errors": errors, "tokens_out": tokens,
                "latency_ms": round(latency / n * 1000, 1) if n else None,
                "ttft_ms": round(ttft / timed * 1000, 1) if timed else None,
            })  # fmt: skip
        return out

    def __call__(self, batch: Any) -> None:
        now_wall, now = time.time(), time.perf_counter()
        for trace in batch:
            if trace.kind is None:
                continue
            end = trace.t_end or now
            self._count(now_wall - (now - end), trace, end - trace.t_start)
            self.items.append({
                "time": round(now_wall - (now - trace.t_start), 3),
                "request_id": trace.request_id,
                "key": str(getattr(trace, "key", "") or "")[:12] or None,
                "kind": trace.kind,
                "model": trace.model,
                "backend": f"{trace.backend}/{trace.served}" if trace.backend else None,
                "outcome": trace.outcome,
                "status": getattr(trace, "status", None),
                "error": trace.code,
                "stream": trace.stream,
                "tokens_in": trace.tokens_in,
                "tokens_out": trace.tokens_out,
                "latency_ms": round((end - trace.t_start) * 1000, 1),
                "ttft_ms": None if trace.ttft_s is None else round(trace.ttft_s * 1000, 1),
                "attempts": len(trace.attempts),
            })  # fmt: skip


def recent(gateway: Gateway) -> Recent:
    """The gateway's recent-requests sink, attached on first use."""
    sink: Recent | None = getattr(gateway, "_ui_recent", None)
    if sink is None:
        sink = Recent()
        gateway.telemetry.add_sink(sink)
        gateway._ui_recent = sink  # type: ignore[attr-defined]
    return sink


def _admin_key(request: Request) -> str | None:
    secret = request.app.state.gateway.config.server.admin_key
    return None if secret is None else str(secret.get_secret_value())


def _sign(key: str, expiry: int) -> str:
    mac = hmac.new(key.encode(), f"turnout-ui|{expiry}".encode(), hashlib.sha256).hexdigest()
    return f"{expiry}.{mac}"


def _session_ok(request: Request, key: str) -> bool:
    raw = request.cookies.get(COOKIE, "")
    expiry, _, _ = raw.partition(".")
    if not expiry.isdigit() or int(expiry) < time.time():
        return False
    return hmac.compare_digest(raw, _sign(key, int(expiry)))


def _loopback(request: Request) -> bool:
    host = request.client.host if request.client else ""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def allowed(request: Request) -> bool:
    """May this request see the dashboard's data and act through it?"""
    key = _admin_key(request)
    return _session_ok(request, key) if key is not None else _loopback(request)


def _require(request: Request) -> None:
    if allowed(request):
        return
    if _admin_key(request) is None:
        raise ForbiddenError(
            "The dashboard answers only on this machine when no admin key is set "
            "(server.admin_key).",
            code="loopback_only",
        )
    raise AdminKeyError("Log in to the dashboard with the admin key first.", code="not_logged_in")


async def page(request: Request) -> ASGIApp:
    return Response((_STATIC / "index.html").read_bytes(), media_type="text/html; charset=utf-8",
                    headers={"Cache-Control": "no-store"})  # fmt: skip


async def asset(request: Request) -> ASGIApp:
    name = request.path_params["name"]
    if name not in _TYPES:
        raise NotFoundError(f"No such file: /ui/assets/{name}.")
    return Response((_STATIC / name).read_bytes(), media_type=_TYPES[name])


async def session(request: Request) -> ASGIApp:
    return json_response({
        "authenticated": allowed(request),
        "login_required": _admin_key(request) is not None,
    })  # fmt: skip


async def login(request: Request) -> ASGIApp:
    key = _admin_key(request)
    if key is None:
        _require(request)  # nothing to log in with: loopback only
        return json_response({"authenticated": True})
    body = await read_json(request, 4096)
    given = body.get("key") if isinstance(body, dict) else None
    if not isinstance(given, str) or not hmac.compare_digest(given.encode(), key.encode()):
        raise AdminKeyError("That is not this gateway's admin key.", code="invalid_admin_key")
    expiry = int(time.time()) + SESSION_S
    response = json_response({"authenticated": True})
    response.set_cookie(COOKIE, _sign(key, expiry), max_age=SESSION_S, path="/ui",
                        httponly=True, samesite="strict",
                        secure=request.url.scheme == "https")  # fmt: skip
    return response


async def logout(request: Request) -> ASGIApp:
    response = json_response({"authenticated": False})
    response.delete_cookie(COOKIE, path="/ui", httponly=True, samesite="strict")
    return response


async def requests_log(request: Request) -> ASGIApp:
    _require(request)
    gateway: Gateway = request.app.state.gateway
    gateway.telemetry.flush()
    items = list(recent(gateway).items)
    query = request.query_params.get("q", "").lower()
    if query:
        items = [i for i in items if query in " ".join(str(v) for v in i.values()).lower()]
    return json_response({"object": "list", "data": items[::-1]})


async def history(request: Request) -> ASGIApp:
    _require(request)
    gateway: Gateway = request.app.state.gateway
    gateway.telemetry.flush()
    data = recent(gateway).history(time.time())
    return json_response({"object": "list", "bucket_seconds": BUCKET_S, "data": data})


async def model_action(request: Request) -> ASGIApp:
    """Load or unload a model for a logged-in person (the admin key's session)."""
    _require(request)
    action = request.path_params["action"]
    if action == "load":
        return await local_models.load(request)
    if action == "unload":
        return await local_models.unload(request)
    raise NotFoundError(f"No dashboard action {action!r}: load or unload.")


routes = [
    Route("/ui", page),
    Route("/ui/assets/{name}", asset),
    Route("/ui/api/session", session),
    Route("/ui/api/login", login, ("POST",)),
    Route("/ui/api/logout", logout, ("POST",)),
    Route("/ui/api/requests", requests_log),
    Route("/ui/api/history", history),
    Route("/ui/api/models/{model:path}/{action}", model_action, ("POST",)),
]
