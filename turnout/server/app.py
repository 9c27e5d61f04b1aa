"""The ASGI application: routes, OpenAI-shaped errors for everything, gateway lifespan."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from .. import __version__
from ..errors import GatewayError, MethodNotAllowedError, NotFoundError
from ..gateway import Gateway
from . import (
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


def create_app(gateway: Gateway) -> Starlette:
    """The gateway's ASGI app; it starts and closes ``gateway`` with its lifespan."""

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await gateway.start()
        try:
            yield
        finally:
            await gateway.close()

    app = Starlette(
        routes=[
            Route("/health", health, methods=["GET"]),
            *openai_front.routes,
            *ops.routes,
            *local_models.routes,
            *ollama_admin.routes,
            *provider_list.routes,
        ],
        middleware=[Middleware(ops.TraceMiddleware)],  # per-request trace: overrides, overhead
        exception_handlers={HTTPException: _http_error, Exception: _server_error},
        lifespan=lifespan,
    )
    app.state.gateway = gateway
    return app
