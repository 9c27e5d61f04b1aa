"""The OpenAI-compatible front: chat and text completions, embeddings, models.

Per request: read the body once (bounded), parse it once, validate it, route it, and either
return the backend's answer or stream its chunks as they arrive. A stream whose first token is
slow commits to HTTP 200 early and sends SSE comments until it comes; an error after that point
ends the stream with an OpenAI error event.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import orjson
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from ..errors import (
    GatewayError,
    InvalidRequestError,
    ModelNotFoundError,
    RequestTooLargeError,
)
from ..gateway import Gateway
from ..wire.sse import DONE, encode_json
from ..wire.types import Chunk, Kind
from ..wire.validate import validate_chat, validate_completion, validate_embedding
from .responses import (
    BytesResponse,
    Guard,
    KeepAlive,
    error_response,
    json_response,
    server_error,
    sse_headers,
)

__all__ = ["INFERENCE", "routes"]

Validator = Callable[[Any], dict[str, Any]]
T = TypeVar("T")


async def read_json(request: Request, limit: int) -> Any:
    """The request's body, parsed once: read straight from ``receive`` (what Starlette's
    ``Request.stream`` does, without its generator: every token's request passes here)."""
    declared = _content_length(request.scope["headers"])
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise RequestTooLargeError(
            f"Request body of {int(declared)} bytes exceeds the limit of {limit} bytes "
            "(server.max_body_bytes).",
        )
    parts: list[bytes] = []
    size = 0
    receive = request.receive
    while True:
        message = await receive()
        if message["type"] != "http.request":
            raise ClientDisconnect()  # as Starlette raises it
        part = message.get("body", b"")
        if part:
            size += len(part)
            if size > limit:
                raise RequestTooLargeError(
                    f"Request body exceeds the limit of {limit} bytes (server.max_body_bytes)."
                )
            parts.append(part)
        if not message.get("more_body", False):
            break
    raw = parts[0] if len(parts) == 1 else b"".join(parts)
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


def _content_length(headers: list[tuple[bytes, bytes]]) -> str | None:
    for name, value in headers:
        if name == b"content-length":
            return value.decode("latin-1")
    return None


class _ClientGone(Exception):
    """The client disconnected before its answer was ready."""


def _endpoint(kind: Kind, validate: Validator) -> Callable[[Request], Any]:
    async def endpoint(request: Request) -> Response | BytesResponse | _Stream:
        gateway: Gateway = request.app.state.gateway
        try:
            body = validate(await read_json(request, gateway.config.server.max_body_bytes))
            if body.get("stream") and kind != "embedding":
                return _Stream(gateway, kind, body)
            reply = await _while_connected(request, gateway.complete(kind, body))
        except GatewayError as exc:
            return error_response(exc)
        except _ClientGone:
            return Response(status_code=499)  # nobody is listening; nginx's code for it
        return BytesResponse(orjson.dumps(reply.body), _json_start(reply.target.provider.name))

    return endpoint


async def _while_connected(request: Request, work: Awaitable[T]) -> T:
    """Await ``work`` in the request's own task; a client gone first cancels it (and with it the
    backend call) and raises `_ClientGone`. One watcher task per request (`Guard`), where
    running the work in a task of its own and racing it against a watcher with `asyncio.wait`
    cost two tasks, the wait's callbacks and a hand-over between tasks per request."""
    guard = Guard(request.receive)
    try:
        return await work
    except asyncio.CancelledError:
        if not guard.gone:
            raise
        task = asyncio.current_task()
        assert task is not None
        task.uncancel()  # the client left: answer 499 (to nobody), quietly
        raise _ClientGone from None
    finally:
        guard.close()


def _backend_headers(name: str) -> dict[str, str]:
    return {"X-Turnout-Backend": name}


_JSON_STARTS: dict[str, list[tuple[bytes, bytes]]] = {}


def _json_start(backend: str) -> list[tuple[bytes, bytes]]:
    """A JSON reply's response headers (naming its backend), built once per backend."""
    headers = _JSON_STARTS.get(backend)
    if headers is None:
        headers = _JSON_STARTS[backend] = [
            (b"content-type", b"application/json"),
            (b"x-turnout-backend", backend.encode("latin-1")),
        ]
    return headers


_STARTS: dict[str, list[tuple[bytes, bytes]]] = {}


def _sse_start(backend: str) -> list[tuple[bytes, bytes]]:
    """A committed stream's response headers (naming its backend), built once per backend."""
    headers = _STARTS.get(backend)
    if headers is None:
        headers = _STARTS[backend] = sse_headers(_backend_headers(backend))
    return headers


class _Stream:
    """A streamed completion, served in the request's own task from the backend call to the last
    chunk: the first chunk goes out in the same step that receives it, each later one in the step
    that reads it (the benchmark found every hand-over between tasks on the time to first token).

    The response commits to 200 with the first chunk, so that a failure before it still gets its
    proper status (and the router could retry or fall back); when the first chunk is slower than
    ``server.sse_keepalive_seconds``, it commits early and sends SSE comments until it comes, and
    a failure then ends the stream with an OpenAI error event. A client that goes away cancels
    the request wherever it waits, and with it the backend call."""

    __slots__ = ("body", "gateway", "kind")

    def __init__(self, gateway: Gateway, kind: Kind, body: dict[str, Any]) -> None:
        self.gateway, self.kind, self.body = gateway, kind, body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        guard = Guard(receive)
        try:
            await self._serve(scope, receive, send, guard)
        except asyncio.CancelledError:
            if not guard.gone:
                raise
            task = asyncio.current_task()
            assert task is not None
            task.uncancel()  # the client left: the request ends here, quietly
        finally:
            guard.close()

    async def _serve(self, scope: Scope, receive: Receive, send: Send, guard: Guard) -> None:
        every = self.gateway.config.server.sse_keepalive_seconds
        keepalive = KeepAlive(send, every)
        try:
            reply = await self.gateway.open_stream(self.kind, self.body)
        except asyncio.CancelledError:
            keepalive.cancel()
            if guard.gone and not keepalive.started:
                await Response(status_code=499)(scope, receive, send)  # as a plain request
            raise
        except Exception as exc:
            committed = await keepalive.stop()
            guard.close()  # the reply below is the last: its end is no disconnect
            if not committed:
                if isinstance(exc, GatewayError):
                    await error_response(exc)(scope, receive, send)
                else:
                    await server_error(scope["method"], scope["path"])(scope, receive, send)
            elif isinstance(exc, GatewayError):
                await send({"type": "http.response.body", "body": encode_json(exc.to_openai())})
            else:
                raise  # after the commit: the ASGI server logs it and closes the connection
            return
        start = None
        if not await keepalive.stop():
            start = _sse_start(reply.target.provider.name)
        await _forward(reply.chunks, send, guard, start)


async def _forward(
    chunks: AsyncIterator[Chunk], send: Send, guard: Guard, start: list[tuple[bytes, bytes]] | None
) -> None:
    """Start the response (unless the keep-alives did), send every chunk as an SSE event as it
    arrives, then ``[DONE]``, or an error event if the stream fails: OpenAI's framing, the
    backend's bytes whenever they need no change."""
    try:
        try:
            if start is not None:
                await send({"type": "http.response.start", "status": 200, "headers": start})
            async for chunk in chunks:
                raw = chunk.raw if chunk.raw is not None else orjson.dumps(chunk.data)
                await send(
                    {
                        "type": "http.response.body",
                        "body": b"data: " + raw + b"\n\n",
                        "more_body": True,
                    }
                )
        finally:  # a client gone early: end the backend call and free its slot now, not at GC
            aclose = getattr(chunks, "aclose", None)
            if aclose is not None:
                await aclose()
    except GatewayError as exc:
        last = encode_json(exc.to_openai())
    except OSError:
        return  # the connection broke under the write: nobody to tell
    else:
        last = DONE
    guard.close()
    await send({"type": "http.response.body", "body": last, "more_body": False})


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
