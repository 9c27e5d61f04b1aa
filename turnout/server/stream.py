"""The ingress kit every front shares: the bounded body reader, the disconnect guard and the
stream driver.

- `read_json`: the request body, read once as it arrives, refused as soon as it passes
  ``server.max_body_bytes``, parsed once.
- `while_connected` (with `Guard`): await the gateway in the request's own task; a client that
  goes away cancels it, and with it the backend call.
- `Stream`: a streamed answer, served in the request's own task. It commits to 200 with the first
  chunk, so that a failure before it still gets its proper status (and the router could retry or
  fall back); when the first chunk is slower than ``server.sse_keepalive_seconds`` it commits
  early and sends keep-alives until it comes; a failure after the commit ends the stream with
  an error frame. How a chunk, a keep-alive, the end and that error are framed is the front's
  `Encoder` (OpenAI's SSE ``data:`` lines and ``[DONE]``, Anthropic's named events, Ollama's
  NDJSON); a failure before the commit is a whole reply in the front's `Errors` dialect.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Protocol, TypeVar

import orjson
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send

from ..errors import GatewayError, InvalidRequestError, RequestTooLargeError
from ..gateway import Gateway
from ..wire.types import JSON, Chunk, Kind, Native
from .responses import Errors, server_error

__all__ = [
    "PASSTHROUGH",
    "ClientGone",
    "Encoder",
    "Guard",
    "HeaderCache",
    "KeepAlive",
    "Relaying",
    "Stream",
    "disconnected",
    "forward",
    "json_start",
    "read_json",
    "while_connected",
]

T = TypeVar("T")
Headers = list[tuple[bytes, bytes]]
#: the header of a reply relayed as its backend sent it (passthrough)
PASSTHROUGH = (b"x-turnout-passthrough", b"1")


async def read_json(request: Request, limit: int) -> Any:
    """The request's body, parsed once: read straight from ``receive`` (what Starlette's
    ``Request.stream`` does, without its generator: every token's request passes here), refused
    with a 413 as soon as it passes ``limit`` bytes (declared or as they arrive)."""
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


class ClientGone(Exception):
    """The client disconnected before its answer was ready."""


async def while_connected(request: Request, work: Awaitable[T]) -> T:
    """Await ``work`` in the request's own task; a client gone first cancels it (and with it the
    backend call) and raises `ClientGone`. The `Guard` learns of the client's leaving from the
    connection under `turnout serve` (no task), from one watcher task under other servers;
    running the work in a task of its own and racing it against a watcher with `asyncio.wait`
    cost two tasks, the wait's callbacks and a hand-over between tasks per request."""
    guard = Guard(request.receive, request.scope.get(DISCONNECT_HOOKS))
    try:
        return await work
    except asyncio.CancelledError:
        if not guard.gone:
            raise
        _uncancel()  # the client left: answer 499 (to nobody), quietly
        raise ClientGone from None
    finally:
        guard.close()


def _uncancel() -> None:
    task = asyncio.current_task()
    assert task is not None
    task.uncancel()


async def disconnected(receive: Receive) -> None:
    """Return when the client has gone away."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


#: the scope key under which `turnout serve`'s protocol (turnout/server/serving.py) puts a
#: request's `Disconnects`
DISCONNECT_HOOKS = "turnout.disconnects"


class Disconnects:
    """A request's word from its connection: `fire` is called by the protocol when the
    connection is lost before the response is complete."""

    __slots__ = ("callbacks", "lost")

    def __init__(self) -> None:
        self.lost = False
        self.callbacks: list[Callable[[], None]] = []

    def fire(self) -> None:
        self.lost = True
        callbacks, self.callbacks = self.callbacks, []
        for callback in callbacks:
            callback()


class Guard:
    """One per inference request: cancels the request's own task when the client goes away,
    wherever that task then waits (the backend call, opening the backend stream, reading the
    next chunk, writing one). Call `close` before the response's last message: a finished
    response also reads as a disconnect.

    Under `turnout serve` the connection tells it (``hooks``, the scope's `Disconnects`), so no
    task waits for the disconnect; under any other ASGI server a watcher task does, reading
    ``receive`` until it says ``http.disconnect`` (a task more per request)."""

    __slots__ = ("_hooks", "_receive", "_task", "_watch", "finished", "gone")

    def __init__(self, receive: Receive, hooks: Disconnects | None = None) -> None:
        task = asyncio.current_task()
        assert task is not None, "Guard needs the request's task"
        self._task = task
        self._receive = receive
        self._watch: asyncio.Task[None] | None = None
        self._hooks = hooks
        self.gone = False
        self.finished = False
        if hooks is not None:
            if hooks.lost:  # gone while its body was read
                self._gone()
            else:
                hooks.callbacks.append(self._gone)
            return
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
        self._gone()

    def _gone(self) -> None:
        if not self.finished:
            self.gone = True
            self._task.cancel()

    def close(self) -> None:
        self.finished = True
        if self._hooks is not None:
            self._hooks.callbacks.clear()
        # Let go of the watcher as it is cancelled: a cancelled task keeps its CancelledError,
        # whose traceback holds `_wait`'s frame and with it this guard, so keeping it would make
        # a reference cycle per request (the request's task, its uvicorn cycle and frames left
        # to the cyclic garbage collector: found costing more than the watcher itself).
        watch, self._watch = self._watch, None
        if watch is not None:
            watch.cancel()


class Encoder(Protocol):
    """How a front frames a stream. A front with nothing to remember between chunks (OpenAI's
    SSE) shares one encoder among all its streams; one that keeps state (Anthropic's content
    blocks, Ollama's final statistics) makes one per stream."""

    #: sent every ``server.sse_keepalive_seconds`` while the first chunk is slow (b"": the
    #: response still commits then, with nothing sent until the first chunk)
    keepalive: bytes

    def start(self, backend: str | None) -> Headers:
        """The response start's raw headers; ``backend`` is None when the keep-alives commit
        before a backend answered."""
        ...

    def chunk(self, chunk: Chunk) -> bytes:
        """One chunk's frame (b"": nothing to send for it)."""
        ...

    def end(self) -> bytes:
        """The last frame of a stream that ended well."""
        ...

    def error(self, exc: GatewayError) -> bytes:
        """The last frame of a stream that failed after it began."""
        ...


class HeaderCache:
    """A response start's raw headers per backend (``X-Turnout-Backend``), each built once."""

    __slots__ = ("_base", "_by_backend")

    def __init__(self, base: Headers) -> None:
        self._base = base
        self._by_backend: dict[str | None, Headers] = {None: list(base)}

    def __call__(self, backend: str | None) -> Headers:
        headers = self._by_backend.get(backend)
        if headers is None:
            assert backend is not None
            headers = [*self._base, (b"x-turnout-backend", backend.encode("latin-1"))]
            self._by_backend[backend] = headers
        return headers


#: a JSON reply's response headers, naming its backend
json_start = HeaderCache([(b"content-type", b"application/json")])


class KeepAlive:
    """While a stream's first chunk is slow: after ``every`` seconds commit the response to 200
    (the encoder's headers, no backend named yet) and send its keep-alive every ``every``
    seconds more, so that clients and proxies do not time out. Until then it is one timer; a
    task only once it fires."""

    __slots__ = ("_encoder", "_every", "_send", "_task", "_timer", "started")

    def __init__(self, send: Send, every: float, encoder: Encoder) -> None:
        self._send, self._every, self._encoder = send, every, encoder
        self._task: asyncio.Task[None] | None = None
        self.started = False  # the response start has gone out
        self._timer = asyncio.get_running_loop().call_later(every, self._fire)

    def _fire(self) -> None:
        self._task = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        headers = self._encoder.start(None)
        await self._send({"type": "http.response.start", "status": 200, "headers": headers})
        self.started = True
        frame = self._encoder.keepalive
        if not frame:
            return
        ping: Message = {"type": "http.response.body", "body": frame, "more_body": True}
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


class Stream:
    """A streamed answer (an ASGI app), served in the request's own task from the backend call
    to the last chunk: the first chunk goes out in the same step that receives it, each later
    one in the step that reads it (the benchmark found every hand-over between tasks on the time
    to first token). A client that goes away cancels the request wherever it waits, and with it
    the backend call."""

    __slots__ = ("body", "encoder", "errors", "gateway", "kind", "native")

    def __init__(
        self,
        gateway: Gateway,
        kind: Kind,
        body: JSON,
        encoder: Encoder,
        errors: Errors,
        native: Native | None = None,
    ) -> None:
        self.gateway, self.kind, self.body = gateway, kind, body
        self.encoder, self.errors = encoder, errors
        self.native = native  # the client's own request, for a backend that speaks its dialect

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        guard = Guard(receive, scope.get(DISCONNECT_HOOKS))
        try:
            await self._serve(scope, receive, send, guard)
        except asyncio.CancelledError:
            if not guard.gone:
                raise
            _uncancel()  # the client left: the request ends here, quietly
        finally:
            guard.close()

    async def _serve(self, scope: Scope, receive: Receive, send: Send, guard: Guard) -> None:
        encoder = self.encoder
        keepalive = KeepAlive(send, self.gateway.config.server.sse_keepalive_seconds, encoder)
        try:
            reply = await self.gateway.open_stream(self.kind, self.body, native=self.native)
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
                    await self.errors.response(exc)(scope, receive, send)
                else:
                    await server_error(scope["method"], scope["path"], self.errors)(
                        scope, receive, send
                    )
            elif isinstance(exc, GatewayError):
                await send({"type": "http.response.body", "body": encoder.error(exc)})
            else:
                raise  # after the commit: the ASGI server logs it and closes the connection
            return
        if reply.relayed:  # the backend speaks the client's dialect: its bytes go as they are
            encoder = (getattr(encoder, "relay", None) or Relaying)(encoder)
        start = None
        if not await keepalive.stop():
            start = encoder.start(reply.target.provider.name)
        await forward(reply.chunks, send, guard, start, encoder)


class Relaying:
    """A relayed stream's `Encoder`: each chunk's bytes as the backend sent them, the front's
    headers with ``X-Turnout-Passthrough: 1``, and the front's own error frame (a backend's
    error is raised, never relayed, so that it is cleaned like any other)."""

    __slots__ = ("_front", "keepalive")

    def __init__(self, front: Encoder) -> None:
        self._front, self.keepalive = front, front.keepalive

    def start(self, backend: str | None) -> Headers:
        # a translation's warning (what it had to drop) does not hold: nothing was translated
        kept = [h for h in self._front.start(backend) if h[0] != b"x-turnout-warning"]
        return [*kept, PASSTHROUGH]

    def chunk(self, chunk: Chunk) -> bytes:
        return chunk.raw or b""

    def end(self) -> bytes:
        return b""  # the backend's own end came with its last bytes

    def error(self, exc: GatewayError) -> bytes:
        return self._front.error(exc)


async def forward(
    chunks: AsyncIterator[Chunk], send: Send, guard: Guard, start: Headers | None, encoder: Encoder
) -> None:
    """Start the response (unless the keep-alives did), send every chunk as the encoder frames
    it as it arrives, then the end frame, or the error frame if the stream fails."""
    frame = encoder.chunk
    try:
        try:
            if start is not None:
                await send({"type": "http.response.start", "status": 200, "headers": start})
            async for chunk in chunks:
                data = frame(chunk)
                if data:
                    await send({"type": "http.response.body", "body": data, "more_body": True})
        finally:  # a client gone early: end the backend call and free its slot now, not at GC
            aclose = getattr(chunks, "aclose", None)
            if aclose is not None:
                await aclose()
    except GatewayError as exc:
        last = encoder.error(exc)
    except OSError:
        return  # the connection broke under the write: nobody to tell
    else:
        last = encoder.end()
    guard.close()
    await send({"type": "http.response.body", "body": last, "more_body": False})
