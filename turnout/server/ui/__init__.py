"""The dashboard at ``/ui``: pages served from files in the package (static/: one HTML page, its
script and its stylesheet, turnout's own code; no CDN, no build step), reading the gateway's own
JSON endpoints (``/stats``, ``/v1/providers``, ``/v1/local/ps``, ``/v1/models``) and a few of its
own under ``/ui/api``.

Who may see it (turnout/server/ui/session.py): with ``server.admin_key`` set, a person logged
in with it (a session cookie, ``HttpOnly``, ``SameSite=Strict``, scoped to ``/ui``); without
one, clients on this machine (loopback) while the gateway asks for no keys. The Keys page's
routes (create, revoke, rotate, usage) are in turnout/server/ui/keys.py.

``/ui/api/history`` is the last hour in 10-second buckets (requests, errors, tokens out, mean
latency and time to first token), what the Overview's charts draw. ``/ui/api/requests`` is the
recent-requests log: the last `RECENT` finished requests (time, key,
model, backend, status, tokens, latency, time to first token), kept by a telemetry sink from the
drain, never their content.
"""

from __future__ import annotations

import collections
import time
from pathlib import Path
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp

from ...errors import NotFoundError
from ...gateway import Gateway
from .. import models as local_models
from ..pipeline import Route
from ..responses import json_response
from . import keys
from .session import login, logout, require, session

__all__ = ["RECENT", "Recent", "recent", "routes"]

_STATIC = Path(__file__).resolve().parent / "static"
_TYPES = {
    "app.js": "application/javascript; charset=utf-8",
    "app.css": "text/css; charset=utf-8",
}
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


async def page(request: Request) -> ASGIApp:
    return Response((_STATIC / "index.html").read_bytes(), media_type="text/html; charset=utf-8",
                    headers={"Cache-Control": "no-store"})  # fmt: skip


async def asset(request: Request) -> ASGIApp:
    name = request.path_params["name"]
    if name not in _TYPES:
        raise NotFoundError(f"No such file: /ui/assets/{name}.")
    return Response((_STATIC / name).read_bytes(), media_type=_TYPES[name])


async def requests_log(request: Request) -> ASGIApp:
    require(request)
    gateway: Gateway = request.app.state.gateway
    gateway.telemetry.flush()
    items = list(recent(gateway).items)
    query = request.query_params.get("q", "").lower()
    if query:
        items = [i for i in items if query in " ".join(str(v) for v in i.values()).lower()]
    return json_response({"object": "list", "data": items[::-1]})


async def history(request: Request) -> ASGIApp:
    require(request)
    gateway: Gateway = request.app.state.gateway
    gateway.telemetry.flush()
    data = recent(gateway).history(time.time())
    return json_response({"object": "list", "bucket_seconds": BUCKET_S, "data": data})


async def model_action(request: Request) -> ASGIApp:
    """Load or unload a model for a logged-in person (the admin key's session)."""
    require(request)
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
    *keys.routes,
]
