"""Model management of configured Ollama backends, relayed in Ollama's own shapes.

    GET    /v1/ollama/{provider}/tags     installed models (Ollama's /api/tags)
    GET    /v1/ollama/{provider}/ps       models in memory (/api/ps)
    POST   /v1/ollama/{provider}/show     {"model", "verbose"?} (/api/show)
    POST   /v1/ollama/{provider}/pull     {"model", "insecure"?, "stream"?}: NDJSON progress
                                          as Ollama streams it, ``success`` last (/api/pull)
    DELETE /v1/ollama/{provider}/delete   {"model"} (/api/delete)

Pull and delete change what the backend holds, so they answer 403 unless the gateway runs with
``LOCAL_LLM_ENABLE_PULL=true`` (source document 003). Errors are OpenAI's ``{"error": {...}}``; an
error after a pull stream began is a last NDJSON line of that shape.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from ..errors import GatewayError, InvalidRequestError, NotFoundError
from ..gateway import Gateway
from ..providers.ollama import OllamaProvider
from .models import read_body, require_pull
from .responses import error_response, json_response

__all__ = ["routes"]


def _ollama(request: Request) -> OllamaProvider:
    gateway: Gateway = request.app.state.gateway
    name = request.path_params["provider"]
    provider = gateway.providers.get(name)
    if isinstance(provider, OllamaProvider):
        return provider
    known = [n for n, p in gateway.providers.items() if isinstance(p, OllamaProvider)]
    raise NotFoundError(
        f"No Ollama provider named '{name}' (Ollama providers: {', '.join(known) or 'none'})."
    )


async def _model(request: Request) -> tuple[OllamaProvider, dict[str, Any]]:
    provider = _ollama(request)
    await request.app.state.gateway.start()  # opens the provider's HTTP session
    body = await read_body(request)
    if not isinstance(body.get("model"), str) or not body["model"]:
        raise InvalidRequestError("'model' is required: the Ollama model name.", param="model")
    return provider, body


async def tags(request: Request) -> Response:
    try:
        provider = _ollama(request)
        await request.app.state.gateway.start()
        return json_response(await provider.call_json("GET", "/api/tags"))
    except GatewayError as exc:
        return error_response(exc)


async def ps(request: Request) -> Response:
    try:
        provider = _ollama(request)
        await request.app.state.gateway.start()
        return json_response({"models": await provider.ps()})
    except GatewayError as exc:
        return error_response(exc)


async def show(request: Request) -> Response:
    try:
        provider, body = await _model(request)
        return json_response(await provider.show(body["model"], verbose=bool(body.get("verbose"))))
    except GatewayError as exc:
        return error_response(exc)


async def pull(request: Request) -> Response | StreamingResponse:
    try:
        require_pull()
        provider, body = await _model(request)
        progress = provider.pull(body["model"], insecure=bool(body.get("insecure")))
        first = await anext(progress)  # a refused pull still gets a proper status
    except StopAsyncIteration:
        return error_response(GatewayError("The backend sent no pull progress.", status=502))
    except GatewayError as exc:
        return error_response(exc)
    if body.get("stream", True) is False:
        seen = [first]
        try:
            seen += [obj async for obj in progress]
        except GatewayError as exc:
            return error_response(exc)
        return json_response(seen[-1])  # Ollama's own non-streamed answer: the last object
    return StreamingResponse(_lines(first, progress), media_type="application/x-ndjson")


async def _lines(
    first: dict[str, Any], rest: AsyncIterator[dict[str, Any]]
) -> AsyncIterator[bytes]:
    yield orjson.dumps(first) + b"\n"
    try:
        async for obj in rest:
            yield orjson.dumps(obj) + b"\n"
    except GatewayError as exc:
        yield orjson.dumps(exc.to_openai()) + b"\n"


async def delete(request: Request) -> Response:
    try:
        require_pull()
        provider, body = await _model(request)
        await provider.delete(body["model"])
    except GatewayError as exc:
        return error_response(exc)
    return json_response({"status": "success", "model": body["model"], "deleted": True})


routes = [
    Route("/v1/ollama/{provider}/tags", tags, methods=["GET"]),
    Route("/v1/ollama/{provider}/ps", ps, methods=["GET"]),
    Route("/v1/ollama/{provider}/show", show, methods=["POST"]),
    Route("/v1/ollama/{provider}/pull", pull, methods=["POST"]),
    Route("/v1/ollama/{provider}/delete", delete, methods=["DELETE"]),
]
