"""The OpenAI front: chat and text completions, embeddings, models.

Per request: read the body once (bounded), parse it once, validate it, route it, and either
return the backend's answer or stream its chunks as they arrive, as SSE ``data:`` events ending
with ``data: [DONE]``. A stream whose first token is slow commits to HTTP 200 early and sends SSE
comments until it comes; an error after that point ends the stream with an OpenAI error event.
Errors are OpenAI's ``{"error": {"message", "type", "param", "code"}}``.
"""

from __future__ import annotations

import orjson
from starlette.requests import Request
from starlette.responses import Response

from ...errors import GatewayError, ModelNotFoundError
from ...gateway import Gateway
from ...wire.sse import DONE, comment, encode_json
from ...wire.types import JSON, Chunk
from ...wire.validate import validate_chat, validate_completion, validate_embedding
from ..responses import OPENAI_ERRORS, json_response, sse_headers
from ..stream import HeaderCache
from .base import Front

__all__ = ["FRONT", "SSE", "routes"]


class SSEEncoder:
    """OpenAI's stream framing: each chunk a ``data:`` event (the backend's bytes whenever they
    need no change), ``data: [DONE]`` last, an error as a ``data:`` event with OpenAI's error
    object, SSE comments as keep-alives. It keeps no state: one serves every stream."""

    __slots__ = ()

    keepalive = comment()
    start = HeaderCache(sse_headers())

    @staticmethod
    def chunk(chunk: Chunk) -> bytes:
        raw = chunk.raw if chunk.raw is not None else orjson.dumps(chunk.data)
        return b"data: " + raw + b"\n\n"

    @staticmethod
    def end() -> bytes:
        return DONE

    @staticmethod
    def error(exc: GatewayError) -> bytes:
        return encode_json(exc.to_openai())


SSE = SSEEncoder()


def _sse(body: JSON) -> SSEEncoder:
    return SSE


FRONT = Front("openai", OPENAI_ERRORS, _sse)


async def list_models(request: Request) -> Response:
    gateway: Gateway = request.app.state.gateway
    return json_response({"object": "list", "data": await gateway.models()})


async def get_model(request: Request) -> Response:
    gateway: Gateway = request.app.state.gateway
    wanted = request.path_params["model"]
    for model in await gateway.models():
        if model["id"] == wanted:
            return json_response(model)
    try:
        targets = await gateway.catalog.resolve(wanted)
    except ModelNotFoundError as exc:
        return FRONT.errors.response(exc)
    return json_response(
        {"id": wanted, "object": "model", "created": 0, "owned_by": targets[0].provider.name}
    )


routes = [
    FRONT.route(
        "/v1/chat/completions", FRONT.inference("chat", validate_chat), ("POST",), inference=True
    ),
    FRONT.route(
        "/v1/completions",
        FRONT.inference("completion", validate_completion),
        ("POST",),
        inference=True,
    ),
    FRONT.route(
        "/v1/embeddings",
        FRONT.inference("embedding", validate_embedding),
        ("POST",),
        inference=True,
    ),
    FRONT.route("/v1/models", list_models),
    FRONT.route("/v1/models/{model:path}", get_model),
]
