"""Operations endpoints: ``GET /stats`` (JSON) and ``GET /metrics`` (Prometheus text).

Each request's trace (the client's per-request overrides, ``X-Turnout-Overhead-Ms``) is started by
the pipeline (turnout/server/pipeline.py), for these routes as for every other.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from ..gateway import Gateway
from ..telemetry import CONTENT_TYPE
from .pipeline import Route
from .responses import json_response

__all__ = ["routes"]


async def stats(request: Request) -> Response:
    gateway: Gateway = request.app.state.gateway
    return json_response(gateway.stats())


async def metrics(request: Request) -> Response:
    gateway: Gateway = request.app.state.gateway
    return Response(gateway.metrics(), media_type=CONTENT_TYPE)


routes = [
    Route("/stats", stats),
    Route("/metrics", metrics),
]
