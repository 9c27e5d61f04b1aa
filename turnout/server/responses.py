"""Responses: JSON through orjson, whole replies from bytes and headers built beforehand, and a
front's error dialect (`Errors`): the body an error becomes, as a reply of its own or as a
stream's last frame.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from ..errors import GatewayError
from ..telemetry import CURRENT

__all__ = [
    "OPENAI_ERRORS",
    "SSE_HEADERS",
    "BytesResponse",
    "Errors",
    "error_response",
    "json_response",
    "noted",
    "server_error",
    "sse_headers",
]

log = logging.getLogger("turnout.server")

SSE_HEADERS = {
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",
}
_SSE_START = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    *((k.lower().encode(), v.encode()) for k, v in SSE_HEADERS.items()),
]


def json_response(
    obj: object, status: int = 200, headers: Mapping[str, str] | None = None
) -> Response:
    return Response(orjson.dumps(obj), status, headers, media_type="application/json")


class BytesResponse:
    """A whole response from body bytes and raw headers built beforehand (the content length is
    added): what Starlette's `Response` sends, without turning a mapping of headers into raw ones
    for every reply. The non-streamed replies of the inference endpoints use it."""

    __slots__ = ("body", "raw_headers", "status_code")

    def __init__(self, body: bytes, raw_headers: list[tuple[bytes, bytes]], status: int = 200):
        self.body = body
        self.status_code = status
        self.raw_headers = [(b"content-length", b"%d" % len(body)), *raw_headers]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send(
            {"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers}
        )
        await send({"type": "http.response.body", "body": self.body})


@dataclass(frozen=True, slots=True, eq=False)
class Errors:
    """A front's error dialect: ``body`` is what a `GatewayError` looks like to its clients
    (OpenAI's ``{"error": {...}}``, Ollama's ``{"error": "..."}``); `response` is that body as a
    reply with the error's status and headers (``Retry-After``, ``WWW-Authenticate``) and the
    backend at fault (``X-Turnout-Backend``). A stream's encoder frames ``body`` as its last
    frame when the stream fails after it began."""

    body: Callable[[GatewayError], Any]

    def response(self, exc: GatewayError) -> Response:
        noted(exc)
        headers = exc.headers()
        if exc.backend:
            headers["X-Turnout-Backend"] = exc.backend
        return json_response(self.body(exc), exc.status, headers)


def noted(exc: GatewayError) -> None:
    """Note ``exc`` as how the request being served ended (its statistics record's reason),
    unless something already said how: what an endpoint answers itself, it says here."""
    trace = CURRENT.get()
    if trace is not None and trace.outcome == "ok":
        trace.failed(exc)


def _openai_body(exc: GatewayError) -> Any:
    return exc.to_openai()


#: OpenAI's error dialect: the OpenAI front's, and the gateway's own API's (admin, operations)
OPENAI_ERRORS = Errors(_openai_body)


def error_response(exc: GatewayError) -> Response:
    """``exc`` as an OpenAI-shaped error reply."""
    return OPENAI_ERRORS.response(exc)


def server_error(method: str, path: str, errors: Errors = OPENAI_ERRORS) -> Response:
    """The reply to an unhandled exception, logged with its traceback (call it while handling)."""
    log.exception("unhandled error on %s %s", method, path)
    return errors.response(
        GatewayError(
            "The gateway hit an internal error; it has been logged.", code="internal_error"
        )
    )


def sse_headers(extra: Mapping[str, str] | None = None) -> list[tuple[bytes, bytes]]:
    """The raw headers of a ``text/event-stream`` response start."""
    if not extra:
        return list(_SSE_START)
    return [*_SSE_START, *((k.lower().encode(), v.encode()) for k, v in extra.items())]
