"""One pipeline for every request, hot or cold: its trace, the stages, then its route.

`Pipeline` is the gateway's ASGI app, built once (turnout/server/app.py). For each HTTP request it
finds the route, starts the request's `Trace`, runs the stages in order and then the route's
endpoint. A path without parameters is found with one dict lookup on the raw path (every
inference path of every front); the others are matched in table order. A request no route serves
gets a route too (404, 405, or a redirect to the path with or without its trailing slash), so
every request passes every stage: a policy added here cannot miss a route.

A stage is a function from the next handler to a handler, called once when the pipeline is built
(no object is made per request but the `Exchange` and its `Trace`):

    def admin_key(next: Handler) -> Handler:
        async def stage(x: Exchange) -> None:
            if x.route.admin:  # what the route table says about the route
                check_admin(x)  # a GatewayError is the reply, in the route's error dialect
            await next(x)

        return stage

A `GatewayError` raised before the response starts becomes the reply in the route's dialect
(`Route.errors`); any other exception is logged and becomes a 500 in that dialect. A client that
leaves before its body is complete is one log line, not a traceback.

**One record per request.** The pipeline hands each request's trace to ``record`` (the
gateway's telemetry) once its response is over, whatever its fate: answered, refused by a stage
or by validation (400, 403, 413, 415...), failed in a backend, failed inside turnout (500), left
by its client, cut by the shutdown (turnout/telemetry/record.py names the outcomes). Every
request of an inference route (``Route.inference``) is recorded, and any other that reached the
gateway. The gateway notes what it knows (its error, the client gone, the cut); what it did not
see (a stage's refusal, a reply the front made itself, an exception after it answered) is
settled here from the exception and the response's status.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import math
import os
import re
import traceback
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import unquote

from starlette.convertors import Convertor
from starlette.datastructures import State
from starlette.requests import ClientDisconnect, Request
from starlette.responses import RedirectResponse
from starlette.routing import compile_path
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..errors import GatewayError, InvalidRequestError, MethodNotAllowedError, NotFoundError
from ..telemetry import CURRENT, Trace
from .responses import OPENAI_ERRORS, Errors, server_error

__all__ = [
    "HEAD_LINES",
    "OVERRIDES",
    "Endpoint",
    "Exchange",
    "Handler",
    "HeadLines",
    "Lifespan",
    "Pipeline",
    "Route",
    "Stage",
]

log = logging.getLogger("turnout.server")

#: what serves a route: the request in, the response (an ASGI app) out
Endpoint = Callable[[Request], Awaitable[ASGIApp]]


@dataclass(frozen=True, slots=True, eq=False)
class Route:
    """One line of the route table: a path (Starlette's syntax, ``/v1/models/{model:path}``),
    the endpoint, its methods (GET also answers HEAD), and what the stages read about it."""

    path: str
    endpoint: Endpoint
    methods: tuple[str, ...] = ("GET",)
    #: the request changes what the gateway holds: it needs the admin key (turnout/server/admin.py)
    admin: bool = False
    #: the dialect its errors are told in (the route's front)
    errors: Errors = OPENAI_ERRORS
    name: str = ""
    #: a request for a model's answer: recorded in the statistics whatever its fate
    inference: bool = False
    #: the front that serves it, as the usage ledger records it
    front: str = "openai"

    @property
    def label(self) -> str:
        return self.name or getattr(self.endpoint, "__name__", self.path)


#: request header -> the `Trace` attribute it sets (seconds)
OVERRIDES = {
    b"x-turnout-timeout": "timeout",
    b"x-turnout-first-token-timeout": "first_token_timeout",
}
_PREFIX = b"x-turnout-"
_OVERHEAD = b"x-turnout-overhead-ms"
_REQUEST_ID = b"x-request-id"
#: scope key under `turnout serve`: where the response's own header lines go (`HeadLines`)
HEAD_LINES = "turnout.head_lines"
#: a client's X-Request-Id is kept when it is this (else the request gets an id of its own)
_CLIENT_ID = re.compile(rb"[A-Za-z0-9._:/+=-]{1,128}")
#: request ids: this process's random prefix and a counter (unique without a random draw each)
_ID_PREFIX = os.urandom(6).hex()
_ids = itertools.count(1)


class HeadLines(Protocol):
    """The connection's word to `Exchange.send` (under `turnout serve`; see turnout/server/
    serving.py): header lines put in ``lines`` go into the head of the response about to be
    written as they are, past uvicorn's check of each header (two regular-expression searches
    and a lower-casing each: for a key's six rate-limit headers, about as many instructions as
    the limits themselves; docs/decisions.md)."""

    lines: bytes | None


class Exchange(Request):
    """One request on its way through the pipeline: the `Request` its endpoint gets, with the
    route it matched and its trace. `send` is the way out for the response: it notes that the
    response has started and adds ``X-Request-Id``, ``X-Turnout-Overhead-Ms`` once the gateway
    took the request, and a gateway key's rate-limit headers.

    Those headers are turnout's own: names constant, values its numbers and a request id of
    safe characters only (`_CLIENT_ID`). Under `turnout serve` they go to the connection as
    ready header lines (`HEAD_LINES`); under any other ASGI server, with the response's headers.
    A stage's headers (CORS, which echo a configured origin) always go the checked way."""

    def __init__(
        self, scope: Scope, receive: Receive, send: Send, route: Route, trace: Trace
    ) -> None:
        super().__init__(scope, receive, send)
        self.route = route
        self.trace = trace
        self.status = 0  # the response's, once it started
        #: headers a stage adds to the response (CORS); the gateway leaves a key's rate-limit
        #: headers on the trace (``Trace.rate_headers``)
        self.extra: list[tuple[bytes, bytes]] | None = None

    @property
    def started(self) -> bool:
        return self.status != 0

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
            trace = self.trace
            own = [(_REQUEST_ID, trace.request_id.encode())]
            if trace.kind is not None:
                # Streams that commit before their first chunk (slow first token) still report
                # what turnout has spent so far, backend time excluded.
                seconds = trace.overhead_s if trace.overhead_s is not None else trace.overhead_now()
                own.append((_OVERHEAD, b"%.3f" % (seconds * 1000)))
            if trace.rate_headers:  # a gateway key's limits (x-ratelimit-*)
                own += trace.rate_headers
            head: HeadLines | None = self.scope.get(HEAD_LINES)
            if head is not None:
                head.lines = b"".join([b"%s: %s\r\n" % line for line in own])
                if self.extra is not None:  # a stage's (CORS)
                    message = {**message, "headers": [*message.get("headers", ()), *self.extra]}
            else:
                headers = [*message.get("headers", ()), *own]
                if self.extra is not None:
                    headers += self.extra
                message = {**message, "headers": headers}
        await self._send(message)


Handler = Callable[[Exchange], Awaitable[None]]
#: the next handler in, this stage's handler out; called once, when the pipeline is built
Stage = Callable[[Handler], Handler]
Lifespan = Callable[["Pipeline"], contextlib.AbstractAsyncContextManager[None]]


def start_trace(scope: Scope) -> Trace:
    """The request's trace, with the client's per-request overrides (``X-Turnout-Timeout``,
    ``X-Turnout-First-Token-Timeout``; a malformed one is kept as the trace's error) and its id:
    the client's ``X-Request-Id`` when it is up to 128 safe characters, else one of its own."""
    trace = Trace()
    trace.method, trace.path = scope["method"], scope["path"]  # for the request log
    trace.held = True  # the pipeline records it
    for name, value in scope["headers"]:
        if name.startswith(_PREFIX) and name in OVERRIDES:
            _override(trace, name, value)
        elif name == _REQUEST_ID and _CLIENT_ID.fullmatch(value):
            trace.request_id = value.decode()
        elif name == b"authorization":
            trace.client = hash(value)  # its key: the breaker tells clients apart by it
    if not trace.request_id:
        trace.request_id = f"{_ID_PREFIX}-{next(_ids):x}"
    if trace.client is None:
        client = scope.get("client")
        trace.client = client[0] if client else None
    return trace


def _override(trace: Trace, name: bytes, raw: bytes) -> None:
    header = name.decode().title()
    try:
        seconds = float(raw)
    except ValueError:
        seconds = math.nan
    if not (math.isfinite(seconds) and seconds > 0):
        got = raw.decode(errors="replace")
        trace.error = InvalidRequestError(
            f"Header {header} must be a positive number of seconds, got {got!r}.",
            param=header,
            code="invalid_header",
        )
        return
    setattr(trace, OVERRIDES[name], seconds)


async def _respond(x: Exchange) -> None:
    """The last handler: the route's endpoint and its response."""
    response = await x.route.endpoint(x)
    await response(x.scope, x.receive, x.send)


def _ignore(trace: Trace) -> None:
    pass


class Pipeline:
    """The gateway's ASGI app: trace, stages, route, for every HTTP request; the lifespan.
    ``record`` takes each request's trace once its response is over."""

    def __init__(
        self,
        routes: Sequence[Route],
        stages: Sequence[Stage],
        lifespan: Lifespan | None = None,
        record: Callable[[Trace], None] = _ignore,
    ) -> None:
        self.record = record
        self.routes = tuple(routes)
        self.stages = tuple(stages)
        self.state = State()
        self._table = _Table(self.routes)
        self._lifespan = lifespan
        handler: Handler = _respond
        for stage in reversed(self.stages):
            handler = stage(handler)
        self._handler = handler

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._other(scope, receive, send)
            return
        scope["app"] = self  # what Request.app reads
        trace = start_trace(scope)
        x = Exchange(scope, receive, send, self._table.find(scope), trace)
        token = CURRENT.set(trace)
        failure: BaseException | None = None
        try:
            await self._handler(x)
        except Exception as exc:
            failure = exc
            if x.started:
                raise  # after the response started: the ASGI server logs it and closes
            await self._failed(x, exc)
        except BaseException as exc:  # cancelled: the server stops, or the shutdown cut it
            failure = exc
            raise
        finally:
            CURRENT.reset(token)
            if trace.kind is not None or x.route.inference:
                if failure is not None or (trace.outcome == "ok" and not 0 < x.status < 400):
                    _settle(trace, x.status, failure)
                self.record(trace)

    async def _failed(self, x: Exchange, exc: Exception) -> None:
        """The reply to an exception raised before the response started."""
        if isinstance(exc, GatewayError):
            response = x.route.errors.response(exc)
        elif isinstance(exc, ClientDisconnect):  # the client left mid-body: nobody to answer
            log.info("client %s left before sending all of its request (%s %s)",
                     _peer(x.scope), x.method, _raw(x.scope))  # fmt: skip
            return
        else:
            response = server_error(x.method, x.url.path, x.route.errors)
        await response(x.scope, x.receive, x.send)

    async def _other(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._life(receive, send)
        elif scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1000})  # none served

    async def _life(self, receive: Receive, send: Send) -> None:
        """The ASGI lifespan protocol around ``lifespan`` (as Starlette's router runs it)."""
        started = False
        await receive()  # lifespan.startup
        try:
            if self._lifespan is None:
                await send({"type": "lifespan.startup.complete"})
                started = True
                await receive()
            else:
                async with self._lifespan(self):
                    await send({"type": "lifespan.startup.complete"})
                    started = True
                    await receive()  # lifespan.shutdown
        except BaseException:
            failed = "lifespan.shutdown.failed" if started else "lifespan.startup.failed"
            await send({"type": failed, "message": traceback.format_exc()})
            raise
        await send({"type": "lifespan.shutdown.complete"})


_Compiled = tuple[Route, re.Pattern[str], dict[str, Convertor[Any]], frozenset[str]]


class _Table:
    """Routes by path: exact paths in a dict on the raw path, the rest in table order (the
    first route matching path and method serves, as under Starlette)."""

    def __init__(self, routes: Sequence[Route]) -> None:
        self._ordered: list[_Compiled] = []
        for route in routes:
            regex, _, convertors = compile_path(route.path)
            head = ("HEAD",) if "GET" in route.methods else ()
            self._ordered.append((route, regex, convertors, frozenset((*route.methods, *head))))
        self._exact: dict[bytes, dict[str, Route]] = {}
        for route, _, convertors, accepted in self._ordered:
            if not convertors:
                for method in accepted:  # indexed where table order picks it anyway
                    if self._search({"path": route.path, "method": method}) is route:
                        self._exact.setdefault(route.path.encode(), {})[method] = route
        self._not_found = Route("", _not_found, (), name="not_found")
        self._redirect = Route("", _redirect, (), name="redirect_slash")
        self._refusals: dict[tuple[frozenset[str], Errors], Route] = {}

    def find(self, scope: Scope) -> Route:
        methods = self._exact.get(scope.get("raw_path") or b"")
        if methods is not None:
            route = methods.get(scope["method"])
            if route is not None:
                return route
        return self._search(scope) or self._miss(scope)

    def _search(self, scope: Scope) -> Route | None:
        """Match on the path as sent, not as percent-decoded: ``/v1%2fchat%2fcompletions`` or
        ``/st%61ts`` must not reach a route that a proxy in front of turnout guards by path.
        Only what a route captures is decoded (``/v1/models/a%2Fb`` names the model ``a/b``)."""
        path, method = _raw(scope), scope["method"]
        for route, regex, convertors, methods in self._ordered:
            match = regex.match(path)
            if match is not None and method in methods:
                if convertors:
                    params = {k: unquote(v) for k, v in match.groupdict().items()}
                    scope["path_params"] = {k: convertors[k].convert(v) for k, v in params.items()}
                return route
        return None

    def _miss(self, scope: Scope) -> Route:
        """A 405 (in the dialect of the first route on the path), a redirect, or a 404."""
        path = _raw(scope)
        on_path = [(r, m) for r, regex, _, m in self._ordered if regex.match(path)]
        if on_path:
            allowed = frozenset().union(*(m for _, m in on_path))
            errors = on_path[0][0].errors
            route = self._refusals.get((allowed, errors))
            if route is None:
                endpoint = _refuse(", ".join(sorted(allowed)), errors)
                route = Route("", endpoint, (), errors=errors, name="method_not_allowed")
                self._refusals[allowed, errors] = route
            return route
        if path != "/" and any(regex.match(_flip(path)) for _, regex, _, _ in self._ordered):
            return self._redirect
        return self._not_found


def _settle(trace: Trace, status: int, failure: BaseException | None) -> None:
    """How a request ended, where the gateway did not say (or said less than the pipeline
    saw): an exception turnout did not expect is turnout's failure, whatever came before it."""
    if trace.outcome == "cut":
        return
    if failure is not None:
        if isinstance(failure, ClientDisconnect):
            trace.outcome, trace.code, trace.status = "cancelled", "client_gone", 499
        elif trace.outcome == "ok" or not isinstance(
            failure, GatewayError | asyncio.CancelledError
        ):
            trace.failed(failure)  # a bug overrides what came before
    elif trace.outcome == "ok":
        if status == 0 or status == 499:  # no response, or one nobody reads: the client left
            trace.outcome, trace.code, trace.status = "cancelled", "client_gone", 499
        elif status >= 400:  # a reply the route made itself
            trace.outcome = "refused" if status < 500 else "error"
            trace.code, trace.status = f"http_{status}", status


def _peer(scope: Scope) -> str:
    client = scope.get("client")
    return f"{client[0]}:{client[1]}" if client else "a client"


def _flip(path: str) -> str:
    return path.rstrip("/") if path.endswith("/") else path + "/"


async def _not_found(request: Request) -> ASGIApp:
    raise NotFoundError(f"Unknown request URL: {request.method} {request.url.path}.")


def _refuse(allow: str, errors: Errors) -> Endpoint:
    async def method_not_allowed(request: Request) -> ASGIApp:
        error = MethodNotAllowedError(
            f"Method {request.method} is not allowed on {request.url.path}."
        )
        response = errors.response(error)
        response.headers["Allow"] = allow  # a 405 says what is allowed
        return response

    return method_not_allowed


async def _redirect(request: Request) -> ASGIApp:
    """The path with its trailing slash flipped names a route: send the client there. The
    ``Location`` is a path, never built from the client's ``Host`` (which would let a request
    name any site as the place to go next)."""
    location = _flip(_raw(request.scope))
    query = request.scope.get("query_string", b"")
    return RedirectResponse(location + ("?" + query.decode("latin-1") if query else ""))


def _raw(scope: Scope) -> str:
    """The request's path as the client sent it (percent escapes kept)."""
    raw = scope.get("raw_path")
    return raw.decode("latin-1") if raw else str(scope["path"])
