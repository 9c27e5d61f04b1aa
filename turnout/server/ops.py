"""Operations endpoints: ``GET /stats`` (JSON) and ``GET /metrics`` (Prometheus text).

``/stats`` ends with ``process``: the answering process's id and its live asyncio tasks, counted
when asked (a leak of tasks shows as a count that grows between two idle moments; the soak of
bench/run.py reads it).

Each request's trace (the client's per-request overrides, ``X-Turnout-Overhead-Ms``) is started by
the pipeline (turnout/server/pipeline.py), for these routes as for every other.
"""

from __future__ import annotations

import asyncio
import os

from starlette.requests import Request
from starlette.responses import Response

from ..gateway import Gateway
from ..telemetry import CONTENT_TYPE
from .pipeline import Route
from .responses import json_response

__all__ = ["routes"]


async def stats(request: Request) -> Response:
    gateway: Gateway = request.app.state.gateway
    body = gateway.stats()
    body["process"] = {"pid": os.getpid(), "tasks": len(asyncio.all_tasks())}
    return json_response(body)


async def metrics(request: Request) -> Response:
    gateway: Gateway = request.app.state.gateway
    return Response(gateway.metrics(), media_type=CONTENT_TYPE)


routes = [
    Route("/stats", stats),
    Route("/metrics", metrics),
]
