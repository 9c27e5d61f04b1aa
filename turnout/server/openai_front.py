"""The OpenAI-compatible front: chat and text completions, embeddings, models.

Per request: read the body once (bounded), parse it once, validate it, route it, and either
return the backend's answer or stream its chunks as they arrive. A stream whose first token is
slow commits to HTTP 200 early and sends SSE comments until it comes; an error after that point
ends the stream with an OpenAI error event.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ..errors import (
    GatewayError,
    InvalidRequestError,
    ModelNotFoundError,
    RequestTooLargeError,
)
from ..gateway import Gateway, StreamReply
from ..providers.base import Chunk
from ..wire.sse import DONE, comment, encode_json
from ..wire.validate import validate_chat, validate_completion, validate_embedding
from .responses import EventStream, disconnected, error_response, json_response

__all__ = ["INFERENCE", "routes"]

Validator = Callable[[Any], dict[str, Any]]
T = TypeVar("T")


async def read_json(request: Request, limit: int) -> Any:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise RequestTooLargeError(
            f"Request body of {int(declared)} bytes exceeds the limit of {limit} bytes "
            "(server.max_body_bytes).",
        )
    parts: list[bytes] = []
    size = 0
    async for part in request.stream():
        size += len(part)
        if size > limit:
            raise RequestTooLargeError(
                f"Request body exceeds the limit of {limit} bytes (server.max_body_bytes)."
            )
        parts.append(part)
    raw = b"".join(parts)
    if not raw.strip():
        raise InvalidRequestError(
            "The request body is empty; expected a JSON object.", code="invalid_json"
        )
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequestError(
            f"We could not parse the JSON body of your request: {exc}.", code="invalid_json"
        ) from None


class _ClientGone(Exception):
    """The client disconnected before its answer was ready."""


def _endpoint(kind: str, validate: Validator) -> Callable[[Request], Any]:
    async def endpoint(request: Request) -> Response | EventStream:
        gateway: Gateway = request.app.state.gateway
        try:
            body = validate(await read_json(request, gateway.config.server.max_body_bytes))
            if body.get("stream") and kind != "embedding":
                return await _stream(request, gateway, kind, body)
            reply = await _while_connected(request, gateway.complete(kind, body))
        except GatewayError as exc:
            return error_response(exc)
        except _ClientGone:
            return Response(status_code=499)  # nobody is listening; nginx's code for it
        return json_response(reply.body, headers=_backend_headers(reply.target.provider.name))

    return endpoint


async def _race(request: Request, task: asyncio.Future[Any], timeout: float | None) -> bool:
    """Wait for ``task``, the client's disconnect or ``timeout``; True if the task is done.
    A client gone first cancels the task (and with it the backend call)."""
    watch = asyncio.ensure_future(disconnected(request.receive))
    try:
        done, _ = await asyncio.wait(
            {task, watch}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
        )
    except asyncio.CancelledError:
        task.cancel()
        raise
    finally:
        watch.cancel()
    if task in done:
        return True
    if watch in done:
        task.cancel()
        with contextlib.suppress(BaseException):
            await task
        raise _ClientGone
    return False


async def _while_connected(request: Request, work: Awaitable[T]) -> T:
    task = asyncio.ensure_future(work)
    await _race(request, task, None)
    return task.result()


def _backend_headers(name: str) -> dict[str, str]:
    return {"X-Turnout-Backend": name}


async def _stream(
    request: Request, gateway: Gateway, kind: str, body: dict[str, Any]
) -> Response | EventStream:
    """Wait briefly for the first chunk, so that an early failure still gets a proper status."""
    opening = asyncio.ensure_future(gateway.open_stream(kind, body))
    keepalive = gateway.config.server.sse_keepalive_seconds
    if not await _race(request, opening, keepalive):
        return EventStream(_late(opening, keepalive))
    reply = opening.result()  # raises the GatewayError of a failed opening
    return EventStream(_frames(reply.chunks), _backend_headers(reply.target.provider.name))


async def _late(opening: asyncio.Future[StreamReply], keepalive: float) -> AsyncIterator[bytes]:
    try:
        while True:
            done, _ = await asyncio.wait({opening}, timeout=keepalive)
            if done:
                break
            yield comment()
        try:
            reply = opening.result()
        except GatewayError as exc:
            yield encode_json(exc.to_openai())
            return
        frames = _frames(reply.chunks)
        try:
            async for frame in frames:
                yield frame
        finally:
            await frames.aclose()
    finally:
        if not opening.done():
            opening.cancel()
            with contextlib.suppress(BaseException):
                await opening


async def _frames(chunks: AsyncIterator[Chunk]) -> AsyncGenerator[bytes, None]:
    try:
        async for chunk in chunks:
            raw = chunk.raw if chunk.raw is not None else orjson.dumps(chunk.data)
            yield b"data: " + raw + b"\n\n"
    except GatewayError as exc:
        yield encode_json(exc.to_openai())
        return
    finally:
        aclose = getattr(chunks, "aclose", None)
        if aclose is not None:
            await aclose()
    yield DONE


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
        return error_response(exc)
    return json_response(
        {"id": wanted, "object": "model", "created": 0, "owned_by": targets[0].provider.name}
    )


#: the inference endpoints, which every token passes through: path -> endpoint (POST)
INFERENCE = {
    "/v1/chat/completions": _endpoint("chat", validate_chat),
    "/v1/completions": _endpoint("completion", validate_completion),
    "/v1/embeddings": _endpoint("embedding", validate_embedding),
}

routes = [
    *(Route(path, endpoint, methods=["POST"]) for path, endpoint in INFERENCE.items()),
    Route("/v1/models", list_models, methods=["GET"]),
    Route("/v1/models/{model:path}", get_model, methods=["GET"]),
]
