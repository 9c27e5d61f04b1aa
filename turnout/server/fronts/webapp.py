"""The source web app's local-LLM endpoints (source document 003, section 3), so that its client
code works unchanged against turnout:

    GET  /api/local-llm/providers       providers with their models and health
    POST /api/local-llm/proxy           {provider?, model, messages}: one chat completion
    POST /api/local-llm/stream          the same, streamed as OpenAI's SSE
    GET  /api/local-llm/ollama/list     the Ollama backends' tags
    POST /api/local-llm/ollama/pull     {model}: pull into an Ollama backend
    POST /api/local-llm/ollama/delete   {model}: delete from it

Pull and delete answer 403 unless the gateway runs with ``LOCAL_LLM_ENABLE_PULL=true``, and need
the admin key when one is set (as every model-changing route). ``model`` names a turnout model
(``provider/model``, a bare name, an alias); with ``provider`` it is that provider's model. For
pull and delete, ``provider/model`` picks the Ollama backend, else the first one configured.
Errors are the app's ``{"error": "..."}`` with the gateway's status; ``model`` missing is its
troubleshooting table's 400 ``model required``.
"""

from __future__ import annotations

from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp

from ...errors import GatewayError, InvalidRequestError
from ...gateway import Gateway
from ...providers.base import ModelStore
from ...wire.screen import check_pull
from ...wire.validate import validate_chat
from ..models import require_pull
from ..pipeline import Route
from ..providers import provider_list
from ..responses import BytesResponse, Errors, json_response
from ..stream import ClientGone, Stream, read_json, while_connected
from .common import json_headers
from .ollama import ollama_backend
from .openai import SSE

__all__ = ["routes"]


#: the app's error dialect: ``{"error": "..."}``
WEBAPP_ERRORS = Errors(lambda exc: {"error": exc.message})
_error = WEBAPP_ERRORS.response


async def providers(request: Request) -> Response:
    gateway: Gateway = request.app.state.gateway
    await gateway.start()
    out = []
    for entry in await provider_list(gateway):
        provider = gateway.providers[entry["name"]]
        models = [
            {"apiName": m, "uiName": m, "supportsTools": provider.capabilities(m).tools}
            for m in entry["models"]
        ]
        out.append(
            {"provider": entry["name"], "type": entry["type"], "baseUrl": entry["endpoint"],
             "health": "ok" if entry["status"] == "up" else "unreachable",
             "detail": entry["health"].get("detail"), "models": models}
        )  # fmt: skip
    return json_response({"providers": out})


async def _chat_body(request: Request, stream: bool) -> dict[str, Any]:
    gateway: Gateway = request.app.state.gateway
    raw = await read_json(request, gateway.config.server.max_body_bytes)
    if not isinstance(raw, dict) or not raw.get("model"):
        raise InvalidRequestError("model required", param="model")
    model = str(raw["model"])
    if isinstance(raw.get("provider"), str) and raw["provider"]:
        model = f"{raw['provider']}/{model.removeprefix(raw['provider'] + '/')}"
    body = {k: v for k, v in raw.items() if k != "provider"}
    return validate_chat({**body, "model": model, "stream": stream})


async def proxy(request: Request) -> ASGIApp:
    gateway: Gateway = request.app.state.gateway
    try:
        body = await _chat_body(request, False)
        reply = await while_connected(request, gateway.complete("chat", body))
    except GatewayError as exc:
        return _error(exc)
    except ClientGone:
        return Response(status_code=499)
    return BytesResponse(orjson.dumps(reply.body), json_headers(reply.target.provider.name, []))


async def stream(request: Request) -> ASGIApp:
    gateway: Gateway = request.app.state.gateway
    try:
        return Stream(gateway, "chat", await _chat_body(request, True), SSE, WEBAPP_ERRORS)
    except GatewayError as exc:
        return _error(exc)


async def ollama_list(request: Request) -> Response:
    gateway: Gateway = request.app.state.gateway
    try:
        await gateway.start()
        provider, _ = ollama_backend(gateway, None)
        return json_response(await provider.tags())
    except GatewayError as exc:
        return _error(exc)


async def _managed(request: Request) -> tuple[ModelStore, str]:
    require_pull()  # the admin key: the pipeline's stage, for routes marked admin
    gateway: Gateway = request.app.state.gateway
    raw = await read_json(request, gateway.config.server.max_body_bytes)
    if not isinstance(raw, dict) or not isinstance(raw.get("model"), str) or not raw["model"]:
        raise InvalidRequestError("model required", param="model")
    await gateway.start()
    provider, model = ollama_backend(gateway, raw["model"])
    assert model is not None
    return provider, model


async def ollama_pull(request: Request) -> Response:
    try:
        provider, model = await _managed(request)
        # the same registry rule as every other pull (turnout/wire/screen.py)
        check_pull(model, False, request.app.state.gateway.config.security.pull_registries)
        last: dict[str, Any] = {}
        async for progress in provider.pull(model):
            last = progress
    except GatewayError as exc:
        return _error(exc)
    return json_response({"status": last.get("status", "success"), "model": model})


async def ollama_delete(request: Request) -> Response:
    try:
        provider, model = await _managed(request)
        await provider.delete(model)
    except GatewayError as exc:
        return _error(exc)
    return json_response({"status": "success", "model": model, "deleted": True})


def _route(
    path: str, endpoint: Any, method: str = "GET", *, admin: bool = False, inference: bool = False
) -> Route:
    return Route(path, endpoint, (method,), admin=admin, errors=WEBAPP_ERRORS, inference=inference)


routes = [
    _route("/api/local-llm/providers", providers),
    _route("/api/local-llm/proxy", proxy, "POST", inference=True),
    _route("/api/local-llm/stream", stream, "POST", inference=True),
    _route("/api/local-llm/ollama/list", ollama_list),
    _route("/api/local-llm/ollama/pull", ollama_pull, "POST", admin=True),
    _route("/api/local-llm/ollama/delete", ollama_delete, "POST", admin=True),
]
