"""The OpenAI Responses front: ``POST /v1/responses``, ``GET`` and ``DELETE
/v1/responses/{id}``.

Stateless by default, which is what Codex sends (``store: false``, the whole input every turn).
With ``server.responses_store`` set to a number of responses, the most recent ones are kept in
memory (oldest dropped first): ``previous_response_id`` continues one of them, and ``GET`` /
``DELETE`` read and forget them. Without the store, ``previous_response_id`` is refused with a
400 that says so. Errors are OpenAI's ``{"error": {...}}``; an error after the stream began is a
``response.failed`` event.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp

from ...errors import GatewayError, InvalidRequestError, NotFoundError
from ...gateway import Gateway
from ...wire.responses import ResponseStream, from_chat, output_messages, to_chat
from ...wire.sse import comment
from ...wire.validate import validate_chat
from ..pipeline import Route
from ..responses import OPENAI_ERRORS, BytesResponse, error_response, json_response
from ..stream import ClientGone, Stream, read_json, while_connected
from .common import Framed, json_headers, stream_headers

__all__ = ["routes"]

_SSE = stream_headers(b"text/event-stream; charset=utf-8")
_KEEPALIVE = comment()


class Store:
    """The most recent responses and their conversations, at most ``size`` of them."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.items: OrderedDict[str, tuple[list[dict[str, Any]], dict[str, Any]]] = OrderedDict()

    def put(self, conversation: list[dict[str, Any]], response: dict[str, Any]) -> None:
        self.items[response["id"]] = (conversation + output_messages(response), response)
        while len(self.items) > self.size:
            self.items.popitem(last=False)


def _store(request: Request) -> Store | None:
    state = request.app.state
    size = getattr(request.app.state.gateway.config.server, "responses_store", 0)
    if not size:
        return None
    store: Store | None = getattr(state, "turnout_responses", None)
    if store is None:
        store = state.turnout_responses = Store(size)
    return store


def _history(request: Request, raw: Any) -> list[dict[str, Any]] | None:
    previous = raw.get("previous_response_id") if isinstance(raw, dict) else None
    if previous is None:
        return None
    store = _store(request)
    if store is None:
        raise InvalidRequestError(
            "'previous_response_id' needs stored responses, and this gateway keeps none (it is "
            "stateless, as Codex expects); send the whole conversation in 'input', or start it "
            "with server.responses_store set.",
            param="previous_response_id",
            code="previous_response_not_found",
        )
    if previous not in store.items:
        raise InvalidRequestError(
            f"Previous response with id '{previous}' not found (the store keeps the last "
            f"{store.size}).",
            param="previous_response_id",
            code="previous_response_not_found",
        )
    return store.items[previous][0]


class _Stored(ResponseStream):
    """A stream whose finished response goes into the store."""

    __slots__ = ("conversation", "store")

    def __init__(self, shell: dict[str, Any], store: Store, conversation: list[Any]) -> None:
        super().__init__(shell)
        self.store, self.conversation = store, conversation

    def close(self) -> bytes:
        out = super().close()
        if self.final is not None:
            self.store.put(self.conversation, self.final)
        return out


async def create(request: Request) -> ASGIApp:
    gateway: Gateway = request.app.state.gateway
    try:
        raw = await read_json(request, gateway.config.server.max_body_bytes)
        translated = to_chat(raw, _history(request, raw))
        body = validate_chat(translated.body)
        store = _store(request) if raw.get("store") is not False else None
        if body.get("stream"):
            wire = (
                ResponseStream(translated.shell)
                if store is None
                else _Stored(translated.shell, store, translated.messages)
            )
            encoder = Framed(wire, _SSE, _KEEPALIVE)
            return Stream(gateway, "chat", body, encoder, OPENAI_ERRORS)
        reply = await while_connected(request, gateway.complete("chat", body))
    except GatewayError as exc:
        return error_response(exc)
    except ClientGone:
        return Response(status_code=499)
    response = from_chat(reply.body, translated.shell)
    if store is not None:
        store.put(translated.messages, response)
    return BytesResponse(orjson.dumps(response), json_headers(reply.target.provider.name, []))


def _stored(request: Request) -> tuple[Store, str]:
    store = _store(request)
    wanted = request.path_params["response_id"]
    if store is None or wanted not in store.items:
        raise NotFoundError(f"No response with id '{wanted}' is stored on this gateway.")
    return store, wanted


async def retrieve(request: Request) -> Response:
    try:
        store, wanted = _stored(request)
    except GatewayError as exc:
        return error_response(exc)
    return json_response(store.items[wanted][1])


async def delete(request: Request) -> Response:
    try:
        store, wanted = _stored(request)
    except GatewayError as exc:
        return error_response(exc)
    del store.items[wanted]
    return json_response({"id": wanted, "object": "response.deleted", "deleted": True})


routes = [
    Route("/v1/responses", create, ("POST",), inference=True),
    Route("/v1/responses/{response_id}", retrieve, ("GET",)),
    Route("/v1/responses/{response_id}", delete, ("DELETE",)),
]
