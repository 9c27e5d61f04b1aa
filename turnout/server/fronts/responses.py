"""The OpenAI Responses front: ``POST /v1/responses``, ``GET`` and ``DELETE
/v1/responses/{id}``.

Stateless by default, which is what Codex sends (``store: false``, the whole input every turn).
With ``server.responses_store`` set to a number of responses, the most recent ones are kept in
memory (oldest dropped first): ``previous_response_id`` continues one of them, and ``GET`` /
``DELETE`` read and forget them. Without the store, ``previous_response_id`` is refused with a
400 that says so. Errors are OpenAI's ``{"error": {...}}``; an error after the stream began is a
``response.failed`` event.

Passthrough: a request turnout keeps nothing of (no ``previous_response_id``, and either no store
or ``store: false``) is handed to the gateway as it came too (`Native`), so that a backend that
serves the Responses API itself (vLLM) is sent it and its reply's bytes come back as they are
(turnout/providers/relay.py). A request turnout must keep, to serve it by id or continue it, is
always translated: only then does turnout hold the response object it stores.
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
from ...wire.responses import (
    ResponseStream,
    error_code,
    from_chat,
    output_messages,
    stream_event,
    to_chat,
)
from ...wire.sse import SSEDecoder, comment
from ...wire.types import Chunk, Native, Relayed
from ...wire.validate import validate_chat
from ..pipeline import Route
from ..responses import OPENAI_ERRORS, BytesResponse, error_response, json_response
from ..stream import (
    PASSTHROUGH,
    ClientGone,
    Encoder,
    Relaying,
    Stream,
    read_json,
    while_connected,
)
from .common import Framed, json_headers, stream_headers

__all__ = ["routes"]

_SSE = stream_headers(b"text/event-stream; charset=utf-8")
_KEEPALIVE = comment()
_SEQUENCE = b'"sequence_number":'


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


class _Relayed(Relaying):
    """A relayed Responses stream: the backend's events as they came; if it breaks after they
    began, a ``response.failed`` event that continues them (the backend's own response object
    from its ``response.created``, marked failed, and the next ``sequence_number``), as the
    translated stream ends. Before ``response.created`` the front's own failed stream."""

    __slots__ = ("_created", "_decoder", "_seq")

    def __init__(self, front: Encoder) -> None:
        super().__init__(front)
        self._created: dict[str, Any] | None = None
        self._decoder: SSEDecoder | None = SSEDecoder()
        self._seq = -1

    def chunk(self, chunk: Chunk) -> bytes:
        raw = chunk.raw or b""
        if self._decoder is not None:  # only until the backend's response.created
            for event in self._decoder.feed(raw.replace(b"\r\n", b"\n")):
                data = orjson.loads(event.data) if event.data.startswith(b"{") else None
                if isinstance(data, dict) and isinstance(data.get("response"), dict):
                    self._created, self._decoder = data["response"], None
                    break
        at = raw.rfind(_SEQUENCE)
        if at >= 0:  # the last event's number (a string's quotes would be escaped)
            digits = raw[at + len(_SEQUENCE) : at + len(_SEQUENCE) + 24].lstrip()
            end = next((i for i, c in enumerate(digits) if not 48 <= c <= 57), len(digits))
            self._seq = int(digits[:end]) if end else self._seq
        return raw

    def error(self, exc: GatewayError) -> bytes:
        if self._created is None:
            return super().error(exc)
        error = {"code": error_code(exc), "message": exc.message}
        final = {**self._created, "status": "failed", "error": error}
        return stream_event("response.failed", {"response": final}, self._seq + 1)


def _native(raw: Any, store: Store | None) -> Native | None:
    """The request as it came, for a backend that serves Responses, when turnout keeps nothing
    of it (a stored or continued response is turnout's to hold: translated)."""
    if store is not None or raw.get("previous_response_id") is not None:
        return None
    return Native("responses", raw)


async def create(request: Request) -> ASGIApp:
    gateway: Gateway = request.app.state.gateway
    try:
        raw = await read_json(request, gateway.config.server.max_body_bytes)
        translated = to_chat(raw, _history(request, raw))
        body = validate_chat(translated.body)
        store = _store(request) if raw.get("store") is not False else None
        native = _native(raw, store)
        if body.get("stream"):
            wire = (
                ResponseStream(translated.shell)
                if store is None
                else _Stored(translated.shell, store, translated.messages)
            )
            encoder = Framed(wire, _SSE, _KEEPALIVE, _Relayed)
            return Stream(gateway, "chat", body, encoder, OPENAI_ERRORS, native)
        reply = await while_connected(request, gateway.complete("chat", body, native=native))
    except GatewayError as exc:
        return error_response(exc)
    except ClientGone:
        return Response(status_code=499)
    backend = reply.target.provider.name
    if isinstance(reply.body, Relayed):  # the backend's own Responses object: its bytes
        return BytesResponse(reply.body.raw, json_headers(backend, [PASSTHROUGH]))
    response = from_chat(reply.body, translated.shell)
    if store is not None:
        store.put(translated.messages, response)
    return BytesResponse(orjson.dumps(response), json_headers(backend, []))


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
