"""The Anthropic Messages front: ``POST /v1/messages`` and ``POST /v1/messages/count_tokens``.

Each request is translated (turnout/wire/anthropic.py) into the gateway's one internal request,
so routing, retries, fallback and statistics apply as to any other; the reply and stream come
back in Anthropic's shapes and named events, errors as ``{"type": "error", "error": {...}}``.

What breaks Claude Code behind other gateways does not here: ``anthropic-beta`` headers,
``?beta=true`` and ``context_management`` are accepted and never forwarded; unknown fields are
tolerated; ``HEAD /`` is answered (by the Ollama front's root); a base URL given with ``/v1``
(which makes the SDK post to ``/v1/v1/messages``) works too; ``count_tokens`` counts with the
target model's own tokenizer where its backend can tokenize (llama.cpp, the embedded engine) and
says ``x-turnout-token-count: estimate`` where it cannot.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp

from ...errors import GatewayError
from ...gateway import Gateway
from ...wire.anthropic import Translated, from_chat, to_chat
from ...wire.anthropic_stream import MessageStream, error_body
from ...wire.openai import prompt_text
from ...wire.sse import comment
from ...wire.types import Native, Relayed
from ...wire.validate import validate_chat
from ..pipeline import Route
from ..responses import BytesResponse, Errors, json_response, noted
from ..stream import PASSTHROUGH, ClientGone, HeaderCache, Stream, read_json, while_connected
from .common import Framed, json_headers, stream_headers

__all__ = ["ANTHROPIC_ERRORS", "routes"]

_SSE = stream_headers(b"text/event-stream; charset=utf-8")
_KEEPALIVE = comment()  # an SSE comment: the SDK's decoder skips it
#: what the chat template adds per message, on top of its text (an estimate; undercounting makes
#: Claude Code compact too late, so it errs high)
_PER_MESSAGE = 4


@dataclass(frozen=True, slots=True, eq=False)
class _Errors(Errors):
    """Anthropic's error dialect: its body, and its status for "no backend free" (529)."""

    def response(self, exc: GatewayError) -> Response:
        noted(exc)
        status, body = error_body(exc)
        headers = exc.headers()
        if exc.backend:
            headers["X-Turnout-Backend"] = exc.backend
        return json_response(body, status, headers)


ANTHROPIC_ERRORS = _Errors(lambda exc: error_body(exc)[1])
render_error = ANTHROPIC_ERRORS.response


def _warning(translated: Translated) -> list[tuple[bytes, bytes]]:
    if not translated.dropped:
        return []
    text = "dropped (the backend cannot take them): " + ", ".join(translated.dropped)
    return [(b"x-turnout-warning", text.encode())]


async def messages(request: Request) -> ASGIApp:
    gateway: Gateway = request.app.state.gateway
    try:
        raw = await read_json(request, gateway.config.server.max_body_bytes)
        translated = to_chat(raw)
        body = validate_chat(translated.body)
        model = body["model"]
        native = Native("messages", raw)  # as it came, for a backend that speaks Messages
        extra = _warning(translated)
        if body.get("stream"):
            start = _SSE if not extra else HeaderCache([*_SSE(None), *extra])
            encoder = Framed(MessageStream(model, translated.stops), start, _KEEPALIVE)
            return Stream(gateway, "chat", body, encoder, ANTHROPIC_ERRORS, native)
        reply = await while_connected(request, gateway.complete("chat", body, native=native))
    except GatewayError as exc:
        return render_error(exc)
    except ClientGone:
        return Response(status_code=499)
    backend = reply.target.provider.name
    if isinstance(reply.body, Relayed):  # the backend's own Messages reply: its bytes
        return BytesResponse(reply.body.raw, json_headers(backend, [PASSTHROUGH]))
    message = from_chat(reply.body, model, translated.stops)
    return BytesResponse(orjson.dumps(message), json_headers(backend, extra))


async def count_tokens(request: Request) -> Response:
    """``{"input_tokens": n}``: the prompt counted with the first target's tokenizer."""
    gateway: Gateway = request.app.state.gateway
    try:
        raw = await read_json(request, gateway.config.server.max_body_bytes)
        body = to_chat(raw, count_only=True).body
        await gateway.start()
        target = (await gateway.catalog.resolve(body["model"]))[0]
        text = prompt_text("chat", body)
        for message in body["messages"]:
            for call in message.get("tool_calls") or ():
                text += "\n" + call["function"]["name"] + call["function"]["arguments"]
        if body.get("tools"):
            text += "\n" + orjson.dumps(body["tools"]).decode()
        try:
            counted = await target.provider.count_tokens(target.model, text)
        except GatewayError:
            counted = None
    except GatewayError as exc:
        return render_error(exc)
    how = "exact" if counted is not None else "estimate"
    n = (counted if counted is not None else (len(text) + 3) // 4) + _PER_MESSAGE * len(
        body["messages"]
    )
    headers = {"X-Turnout-Token-Count": how, "X-Turnout-Backend": target.provider.name}
    return json_response({"input_tokens": n}, headers=headers)


def _route(path: str, endpoint: Any, inference: bool = False) -> Route:
    return Route(path, endpoint, ("POST",), errors=ANTHROPIC_ERRORS, inference=inference)


#: a base URL given with /v1 makes the SDK post to /v1/v1/messages: served too
routes = [
    _route("/v1/messages", messages, inference=True),
    _route("/v1/messages/count_tokens", count_tokens),
    _route("/v1/v1/messages", messages, inference=True),
    _route("/v1/v1/messages/count_tokens", count_tokens),
]
