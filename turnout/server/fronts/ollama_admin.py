"""Model management of configured Ollama backends, relayed in Ollama's own shapes.

    GET    /v1/ollama/{provider}/tags     installed models (Ollama's /api/tags)
    GET    /v1/ollama/{provider}/ps       models in memory (/api/ps)
    POST   /v1/ollama/{provider}/show     {"model", "verbose"?} (/api/show)
    POST   /v1/ollama/{provider}/pull     {"model", "insecure"?, "stream"?}: NDJSON progress
                                          as Ollama streams it, ``success`` last (/api/pull)
    DELETE /v1/ollama/{provider}/delete   {"model"} (/api/delete)

The same operations answer in Ollama's own dialect under ``/v1/ollama/{provider}/api/`` (``tags``,
``ps``, ``show``, ``pull``, ``delete``), so Ollama's clients work with
``host="http://gateway:8400/v1/ollama/{provider}"``; there errors are Ollama's
``{"error": "..."}``, a non-streamed pull answers ``{"status": "success"}`` and a delete an empty
200, as Ollama does.

Pull and delete change what the backend holds: with ``server.admin_key`` set they need
``Authorization: Bearer <key>`` (turnout/server/admin.py; 401 without it), and they answer 403
unless the gateway runs with ``LOCAL_LLM_ENABLE_PULL=true`` (source document 003). Errors on the
``/v1/ollama/{provider}/<op>`` routes are OpenAI's ``{"error": {...}}``; an error after a pull
stream began is a last NDJSON line of the route's error shape.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from ...errors import GatewayError, InvalidRequestError, NotFoundError
from ...gateway import Gateway
from ...providers.base import ModelStore
from ...wire.screen import check_pull
from ..models import read_body, require_pull
from ..pipeline import Endpoint, Route
from ..responses import OPENAI_ERRORS, Errors, json_response
from .ollama_errors import OLLAMA_ERRORS

__all__ = ["routes"]


def _ollama(request: Request) -> ModelStore:
    gateway: Gateway = request.app.state.gateway
    name = request.path_params["provider"]
    provider = gateway.providers.get(name)
    if isinstance(provider, ModelStore):
        return provider
    known = [n for n, p in gateway.providers.items() if isinstance(p, ModelStore)]
    raise NotFoundError(
        f"No Ollama provider named '{name}' (Ollama providers: {', '.join(known) or 'none'})."
    )


async def _model(request: Request) -> tuple[ModelStore, dict[str, Any]]:
    provider = _ollama(request)
    await request.app.state.gateway.start()  # opens the provider's HTTP session
    body = await read_body(request)
    if not isinstance(body.get("model"), str) or not body["model"]:
        raise InvalidRequestError("'model' is required: the Ollama model name.", param="model")
    return provider, body


Handler = Callable[[Request, bool], Awaitable[Response]]


def _errors(native: bool) -> Errors:
    """The route's error dialect: Ollama's ``{"error": "..."}``, or OpenAI's."""
    return OLLAMA_ERRORS if native else OPENAI_ERRORS


def _endpoint(handler: Handler, native: bool) -> Endpoint:
    """``handler`` for one dialect; a `GatewayError` it raises is told in the route's dialect
    by the pipeline (`Route.errors`)."""

    async def endpoint(request: Request) -> Response:
        return await handler(request, native)

    endpoint.__name__ = handler.__name__.lstrip("_") + ("_native" if native else "")
    return endpoint


async def _tags(request: Request, native: bool) -> Response:
    provider = _ollama(request)
    await request.app.state.gateway.start()
    return json_response(await provider.tags())


async def _ps(request: Request, native: bool) -> Response:
    provider = _ollama(request)
    await request.app.state.gateway.start()
    return json_response({"models": await provider.ps()})


async def _show(request: Request, native: bool) -> Response:
    provider, body = await _model(request)
    return json_response(await provider.show(body["model"], verbose=bool(body.get("verbose"))))


async def _pull(request: Request, native: bool) -> Response:
    require_pull()  # after the admin key (the pipeline's admin_key stage)
    provider, body = await _model(request)
    registries = request.app.state.gateway.config.security.pull_registries
    check_pull(body["model"], bool(body.get("insecure")), registries)
    progress = provider.pull(body["model"], insecure=bool(body.get("insecure")))
    try:
        first = await anext(progress)  # a refused pull still gets a proper status
    except StopAsyncIteration:
        raise GatewayError("The backend sent no pull progress.", status=502) from None
    if body.get("stream", True) is False:
        seen = [first] + [obj async for obj in progress]
        # Ollama's own non-streamed answer is the last object; turnout's keeps the whole object.
        return json_response({"status": seen[-1].get("status")} if native else seen[-1])
    return StreamingResponse(_lines(first, progress, native), media_type="application/x-ndjson")


async def _lines(
    first: dict[str, Any], rest: AsyncIterator[dict[str, Any]], native: bool
) -> AsyncIterator[bytes]:
    yield orjson.dumps(first) + b"\n"
    try:
        async for obj in rest:
            yield orjson.dumps(obj) + b"\n"
    except GatewayError as exc:
        yield orjson.dumps(_errors(native).body(exc)) + b"\n"


async def _delete(request: Request, native: bool) -> Response:
    require_pull()
    provider, body = await _model(request)
    await provider.delete(body["model"])
    if native:
        return Response(status_code=200)  # Ollama answers a delete with an empty 200
    return json_response({"status": "success", "model": body["model"], "deleted": True})


#: operation, handler, method, whether it changes what the backend holds (the admin key)
_OPS: list[tuple[str, Handler, str, bool]] = [
    ("tags", _tags, "GET", False),
    ("ps", _ps, "GET", False),
    ("show", _show, "POST", False),
    ("pull", _pull, "POST", True),
    ("delete", _delete, "DELETE", True),
]

routes = [
    Route(f"/v1/ollama/{{provider}}{'/api' if native else ''}/{op}", _endpoint(handler, native),
          (method,), admin=admin, errors=_errors(native))
    for native in (False, True)
    for op, handler, method, admin in _OPS
]  # fmt: skip
