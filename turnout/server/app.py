"""The ASGI application: routes, OpenAI-shaped errors for everything, gateway lifespan."""

from __future__ import annotations

import contextlib
import gc
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from .. import __version__
from ..errors import GatewayError, MethodNotAllowedError, NotFoundError
from ..gateway import Gateway
from . import (
    admin,
    gate,
    keys,
    models as local_models,
    ollama_admin,
    openai_front,
    ops,
    providers as provider_list,
)
from .responses import error_response, json_response

__all__ = ["create_app"]

log = logging.getLogger("turnout.server")


async def health(request: Request) -> Response:
    gateway: Gateway = request.app.state.gateway
    return json_response(
        {"status": "ok", "version": __version__, "providers": list(gateway.providers)}
    )


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 405:
        err: GatewayError = MethodNotAllowedError(
            f"Method {request.method} is not allowed on {request.url.path}."
        )
    elif exc.status_code == 404:
        err = NotFoundError(f"Unknown request URL: {request.method} {request.url.path}.")
    else:
        err = GatewayError(str(exc.detail), status=exc.status_code)
    response = error_response(err)
    response.headers.update(exc.headers or {})  # a 405 must say what is allowed (Allow)
    return response


async def _server_error(request: Request, exc: Exception) -> Response:
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return error_response(
        GatewayError(
            "The gateway hit an internal error; it has been logged.", code="internal_error"
        )
    )


class Front:
    """The ASGI entry point. The inference endpoints, which every token passes through, are
    served directly: one trace, one `Request`, the endpoint, its response; no middleware stack
    and no route table (the benchmark found Starlette's layers at a sixth of turnout's time).
    Everything else, the lifespan included, goes to the Starlette app."""

    def __init__(self, app: Starlette, hot: dict[str, Callable[[Request], Awaitable[Any]]]) -> None:
        self.app = app
        self.hot = hot
        self.traced = ops.TraceMiddleware(gate.Authenticate(self._serve))

    @property
    def state(self) -> Any:
        return self.app.state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and scope["path"] in self.hot:
            scope["app"] = self.app  # what Request.app reads, as under Starlette
            await self.traced(scope, receive, send)
        else:
            await self.app(scope, receive, send)

    async def _serve(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive)
        try:
            response = await self.hot[scope["path"]](request)
        except Exception as exc:  # what Starlette's error middleware does for the other routes
            response = await _server_error(request, exc)
        await response(scope, receive, send)


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


def create_app(gateway: Gateway, *, access: bool = True) -> Front:
    """The gateway's ASGI app; it starts and closes ``gateway`` with its lifespan. With
    ``access`` (the default) it asks for gateway keys once one exists, applies their limits and
    keeps the usage ledger (turnout/store)."""
    if access:
        gateway.use_access()

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
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

    app = Starlette(
        routes=[
            Route("/health", health, methods=["GET"]),
            *openai_front.routes,
            *ops.routes,
            *admin.guarded(local_models.routes),  # downloads, load, unload: the admin key
            *ollama_admin.routes,
            *provider_list.routes,
            *keys.routes,
        ],
        # per-request trace (overrides, overhead), then the gateway key
        middleware=[Middleware(ops.TraceMiddleware), Middleware(gate.Authenticate)],
        exception_handlers={HTTPException: _http_error, Exception: _server_error},
        lifespan=lifespan,
    )
    app.state.gateway = gateway
    return Front(app, openai_front.INFERENCE)
