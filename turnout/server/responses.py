"""Responses for the hot path: JSON through orjson, the internal-error reply, and the two helpers a
stream served in its request's own task needs: a guard that cancels the task when the client goes
away (so the backend call is cancelled too) and keep-alive comments while the first token is slow.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping

import orjson
from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send

from ..errors import GatewayError
from ..wire.sse import comment

__all__ = [
    "SSE_HEADERS",
    "BytesResponse",
    "Guard",
    "KeepAlive",
    "disconnected",
    "error_response",
    "json_response",
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


def error_response(exc: GatewayError) -> Response:
    headers = exc.headers()
    if exc.backend:
        headers["X-Turnout-Backend"] = exc.backend
    return json_response(exc.to_openai(), exc.status, headers)


def server_error(method: str, path: str) -> Response:
    """The reply to an unhandled exception, logged with its traceback (call it while handling)."""
    log.exception("unhandled error on %s %s", method, path)
    return error_response(
        GatewayError(
            "The gateway hit an internal error; it has been logged.", code="internal_error"
        )
    )


def sse_headers(extra: Mapping[str, str] | None = None) -> list[tuple[bytes, bytes]]:
    """The raw headers of a ``text/event-stream`` response start."""
    if not extra:
        return list(_SSE_START)
    return [*_SSE_START, *((k.lower().encode(), v.encode()) for k, v in extra.items())]


async def disconnected(receive: Receive) -> None:
    """Return when the client has gone away."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


class Guard:
    """One per inference request: a watcher task that cancels the request's own task when the
    client goes away, wherever that task then waits (the backend call, opening the backend
    stream, reading the next chunk, writing one). Call `close` before the response's last
    message: a finished response also reads as a disconnect."""

    __slots__ = ("_receive", "_task", "_watch", "finished", "gone")

    def __init__(self, receive: Receive) -> None:
        task = asyncio.current_task()
        assert task is not None, "Guard needs the request's task"
        self._task = task
        self._receive = receive
        self._watch: asyncio.Task[None] | None = None
        self.gone = False
        self.finished = False
        # Started two loop turns from now, not at once: the backend request is written on the
        # next turn (aiohttp's body writer is a task of its own), and the watcher's first step
        # then runs after it, off the path to the first token.
        loop = asyncio.get_running_loop()
        loop.call_soon(loop.call_soon, self._arm)

    def _arm(self) -> None:
        if not self.finished:
            self._watch = asyncio.ensure_future(self._wait())

    async def _wait(self) -> None:
        await disconnected(self._receive)
        if not self.finished:
            self.gone = True
            self._task.cancel()

    def close(self) -> None:
        self.finished = True
        # Let go of the watcher as it is cancelled: a cancelled task keeps its CancelledError,
        # whose traceback holds `_wait`'s frame and with it this guard, so keeping it would make
        # a reference cycle per request (the request's task, its uvicorn cycle and frames left
        # to the cyclic garbage collector: found costing more than the watcher itself).
        watch, self._watch = self._watch, None
        if watch is not None:
            watch.cancel()


class KeepAlive:
    """While a stream's first chunk is slow: after ``every`` seconds commit the response to 200
    (with the SSE headers, no backend named yet) and send an SSE comment every ``every`` seconds
    more, so that clients and proxies do not time out. Until then it is one timer; a task only
    once it fires."""

    __slots__ = ("_every", "_send", "_task", "_timer", "started")

    def __init__(self, send: Send, every: float) -> None:
        self._send, self._every = send, every
        self._task: asyncio.Task[None] | None = None
        self.started = False  # the response start has gone out
        self._timer = asyncio.get_running_loop().call_later(every, self._fire)

    def _fire(self) -> None:
        self._task = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        start: Message = {"type": "http.response.start", "status": 200, "headers": sse_headers()}
        await self._send(start)
        self.started = True
        ping: Message = {"type": "http.response.body", "body": comment(), "more_body": True}
        while True:
            await asyncio.sleep(self._every)
            await self._send(ping)

    async def stop(self) -> bool:
        """Stop; True if the response has started. A message being written is written whole or
        not at all (the ASGI server writes it in one go once it no longer waits to drain)."""
        self._timer.cancel()
        task = self._task
        if task is None:
            return False
        task.cancel()
        await asyncio.wait({task})
        return self.started

    def cancel(self) -> None:
        """Stop without waiting: nothing more will be sent on this response."""
        self._timer.cancel()
        if self._task is not None:
            self._task.cancel()
