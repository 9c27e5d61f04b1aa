"""The ASGI application: every route of every front and of the gateway's own API, behind one
pipeline (turnout/server/pipeline.py), and the gateway's lifespan.

Every request, hot or cold, passes the same steps: its trace, then `STAGES` in order, then its
route. A policy for every request (authenticate, admit) is one more line in `STAGES`; one that
depends on the route reads what the route table says about it (``Route.admin``).
"""

from __future__ import annotations

import contextlib
import gc
import logging
from collections.abc import AsyncIterator, Iterator, Sequence

from starlette.requests import Request
from starlette.responses import Response

from .. import __version__
from ..gateway import Gateway
from . import (
    admin,
    docs,
    fronts,
    gate,
    keys,
    models as local_models,
    ops,
    providers as provider_list,
    ui,
)
from .guard import guard
from .pipeline import Pipeline, Route, Stage
from .responses import json_response

log = logging.getLogger("turnout.server")

__all__ = ["STAGES", "create_app", "routes"]

#: what every request passes after its trace and before its route, in order
STAGES: tuple[Stage, ...] = (
    guard,  # bounded bodies, a Host it answers to, no cross-origin change, JSON bodies
    gate.authenticate,  # a gateway key, once keys are in use (401); CORS preflights
    admin.admin_key,  # a route marked admin needs an admin key (or server.admin_key)
)


async def health(request: Request) -> Response:
    gateway: Gateway = request.app.state.gateway
    status = "draining" if gateway.draining else "ok"  # stopping: a balancer should look away
    return json_response(
        {"status": status, "version": __version__, "providers": list(gateway.providers)},
        status=503 if gateway.draining else 200,
    )


def routes() -> list[Route]:
    """The route table, in the order paths are matched."""
    return [
        Route("/health", health),
        *fronts.routes,
        *ops.routes,
        *local_models.routes,  # downloads, load, unload: marked admin
        *provider_list.routes,
        *keys.routes,  # /v1/keys (marked admin), /v1/usage
        *docs.routes,  # /openapi.json (built from this table), /docs
        *ui.routes,  # the dashboard
    ]


#: allocations (net) between young-generation collections while serving; CPython's default is 700
_GC_YOUNG = 7000


@contextlib.contextmanager
def _collector_for_serving() -> Iterator[None]:
    """Tune the cyclic garbage collector for the life of the server. It found nothing to collect
    under load (a request's objects are freed by reference counting) yet took 16% of turnout's
    CPU at 64 connections (bench/notes.md): full collections walked everything made at start-up
    (modules, configuration, providers) a few times a second, and young collections ran about
    every tenth request. So what exists once started is frozen out of its sight, and the young
    generation collects after 7,000 net allocations instead of 700. The previous settings come
    back when the server stops (several apps may run in one process, as in the tests)."""
    threshold = gc.get_threshold()
    gc.collect()
    gc.freeze()
    gc.set_threshold(_GC_YOUNG, *threshold[1:])
    try:
        yield
    finally:
        gc.set_threshold(*threshold)
        gc.unfreeze()


def create_app(
    gateway: Gateway, *, stages: Sequence[Stage] = STAGES, access: bool = True
) -> Pipeline:
    """The gateway's ASGI app; it starts and closes ``gateway`` with its lifespan. With
    ``access`` (the default) it asks for gateway keys once one exists, applies their limits and
    keeps the usage ledger (turnout/store)."""
    if access:
        gateway.use_access()

    @contextlib.asynccontextmanager
    async def lifespan(app: Pipeline) -> AsyncIterator[None]:
        admin.warn_if_open(gateway.config.server)
        await gateway.start()
        if gateway.access is not None:
            try:
                gate.refuse_if_open(gateway.config.server, gateway.access.required)
            except gate.StartupRefused as exc:
                log.error("%s", exc)
                await gateway.close()
                raise
        with _collector_for_serving():
            try:
                yield
            finally:
                await gateway.close()

    app = Pipeline(routes(), stages, lifespan, record=gateway.telemetry.emit)
    app.state.gateway = gateway
    ui.recent(gateway)  # the dashboard's request log, kept from the start
    return app
