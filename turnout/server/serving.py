"""How `turnout serve` runs the app under uvicorn: the connection protocol, with the client side
timed out, and the graceful shutdown.

The protocol is uvicorn's httptools protocol with deadlines.
uvicorn times out an idle keep-alive connection between requests, and nothing else: a client that
opens a connection and sends nothing, trickles its headers a byte at a time (slowloris), never
finishes its body, or stops reading a stream it asked for holds its connection (and a stream's
backend slot) for as long as it likes. Here each connection has at most one deadline at a time:

- from the connection's start, and from the first byte of each later request, the headers must
  be complete within ``header_timeout`` (else the connection is closed);
- from the end of the headers, the body must be complete within ``body_timeout`` (else the
  connection is closed and the request sees its client gone);
- while the connection's write buffer is over its high-water mark (the client takes nothing), it
  must drain within ``write_timeout`` (else the connection is aborted: the stream ends, its
  backend call is closed and its slot freed).

A deadline two seconds away or more is checked twice a second by one sweep of the loop's
connections rather than a timer each (it may fire up to half a second late); each closing logs
one line. Beyond ``server.max_connections`` open connections (or
requests) uvicorn answers 503; uvicorn closes a kept-alive connection idle for
``server.keepalive_timeout_seconds``.

The shutdown (`Server`): on SIGTERM or SIGINT, `Gateway.drain`: new requests are refused with a
503 ``shutting_down`` and ``/health`` answers 503 "draining" (the listener stays open meanwhile,
so that a balancer sees it), while the requests and streams in flight finish, for at most
``server.shutdown_grace_seconds``; then `Gateway.cut` ends each that has not with an error in its
client's dialect (an error event for a stream), uvicorn closes the listener and the connections,
the app's lifespan flushes the statistics and stops managed model servers, and the process exits
0. A second signal cuts everything at once and skips the wait. A worker of
``turnout serve --workers N`` (turnout/server/workers.py) takes signals within a second of the
first as the same one: its parent passes on the SIGTERM it gets, and a terminal's Ctrl-C or a
service manager may signal every process of the group as well.
"""

from __future__ import annotations

import asyncio
import logging
import math
import resource
import time
import weakref
from collections.abc import Callable
from types import FrameType
from typing import Any

import uvicorn
from starlette.types import ASGIApp, Receive, Scope, Send
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from ..errors import RedactingFilter
from ..gateway import Gateway
from .app import create_app
from .pipeline import HEAD_LINES
from .stream import DISCONNECT_HOOKS, Disconnects

__all__ = ["GuardedProtocol", "Server", "guarded_protocol", "redact_logs"]

log = logging.getLogger("turnout.server")


#: a connection deadline this many seconds away or more is checked by the sweep, not a timer
COARSE_FROM = 2.0
#: how often the sweep runs: how late a coarse deadline may fire, at most
SWEEP = 0.5


class GuardedProtocol(HttpToolsProtocol):
    """`HttpToolsProtocol` with header, body and write deadlines (class attributes, set by
    `guarded_protocol`), and uvicorn's keep-alive timeout kept the same way.

    A connection has at most one of the header, body and keep-alive deadlines at a time. One
    `COARSE_FROM` seconds away or more (the defaults: 10, 60 and 5 s) is a number on the
    connection (`_due`) that the loop's `_Sweep` compares with the clock every `SWEEP` seconds,
    so that it fires up to half a second late; a nearer one is a timer of its own. A timer each
    (uvicorn arms one for every keep-alive wait, this protocol one for each request's headers and
    one for its body) measured 260 against 253 µs of CPU a request at c=64 (`python bench/ab.py
    --runs 5 timer-per-deadline`: small, and near this machine's noise)."""

    header_timeout = 10.0
    body_timeout = 60.0
    write_timeout = 30.0

    _deadline: asyncio.TimerHandle | None = None
    _writer: asyncio.TimerHandle | None = None
    _in_headers = False
    #: the coarse deadline (loop time; inf when none) and what it is for
    _due = math.inf
    _due_what = ""
    _corked: _Corked

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._corked = _Corked(transport)
        _Sweep.of(self.loop).add(self)
        self._headers_due()

    def connection_lost(self, exc: Exception | None) -> None:
        self._clear()
        _Sweep.of(self.loop).discard(self)
        if self._writer is not None:
            self._writer.cancel()
            self._writer = None
        cycle = self.cycle
        super().connection_lost(exc)
        if cycle is not None and not cycle.response_complete:
            disconnects = cycle.scope.get(DISCONNECT_HOOKS)
            if isinstance(disconnects, Disconnects):
                disconnects.fire()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.scope[DISCONNECT_HOOKS] = Disconnects()  # type: ignore[literal-required]
        self.scope[HEAD_LINES] = self._corked  # type: ignore[literal-required]
        if not self._in_headers:  # a later request on a kept-alive connection
            self._headers_due()

    def on_headers_complete(self) -> None:
        self._in_headers = False
        # the request's cycle (made here) writes its response through `_Corked`
        transport, self.transport = self.transport, self._corked  # type: ignore[assignment]
        try:
            super().on_headers_complete()
        finally:
            self.transport = transport
        self._arm("body", self.body_timeout)

    def on_message_complete(self) -> None:
        self._clear()
        super().on_message_complete()

    def on_response_complete(self) -> None:
        # uvicorn's, with its keep-alive timer one of this protocol's deadlines
        self._corked.flush()  # a response without a body write (HEAD, 204, 304)
        self.server_state.total_requests += 1
        if self.transport.is_closing():
            return
        self._unset_keepalive_if_required()
        self.flow.resume_reading()
        if self.pipeline:
            cycle, app = self.pipeline.pop()
            self._start_asgi_task(cycle, app)
        else:
            self._arm("keep-alive", self.timeout_keep_alive)

    def _unset_keepalive_if_required(self) -> None:
        super()._unset_keepalive_if_required()
        if self._due_what == "keep-alive":
            self._clear()

    def pause_writing(self) -> None:
        super().pause_writing()
        if self._writer is None:
            self._writer = self.loop.call_later(self.write_timeout, self._stalled)

    def resume_writing(self) -> None:
        super().resume_writing()
        if self._writer is not None:
            self._writer.cancel()
            self._writer = None

    def _headers_due(self) -> None:
        self._in_headers = True
        self._arm("headers", self.header_timeout)

    def _arm(self, what: str, seconds: float) -> None:
        self._clear()
        if seconds >= COARSE_FROM:
            self._due, self._due_what = self.loop.time() + seconds, what
        else:
            self._deadline = self.loop.call_later(seconds, self._expired, what)

    def _clear(self) -> None:
        self._due, self._due_what = math.inf, ""
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _overdue(self) -> None:
        """Called by the sweep once `_due` has passed."""
        what = self._due_what
        self._due, self._due_what = math.inf, ""
        if what == "keep-alive":
            self.timeout_keep_alive_handler()
        else:
            self._expired(what)

    def _expired(self, what: str) -> None:
        self._deadline = None
        if self.transport.is_closing():
            return
        limit = self.header_timeout if what == "headers" else self.body_timeout
        log.info(
            "closed a connection from %s: its request's %s did not arrive within %gs",
            _peer(self.client),
            what,
            limit,
        )
        self.transport.close()

    def _stalled(self) -> None:
        self._writer = None
        if self.transport.is_closing():
            return
        log.info(
            "closed a connection from %s: it took nothing written to it for %gs",
            _peer(self.client),
            self.write_timeout,
        )
        self.transport.abort()  # close() would wait for the buffer the client does not read


class _Corked:
    """The connection's transport as a response sees it: the head of a response that declares
    its length is held until the body's first write, so that a whole reply leaves in one send
    (uvicorn writes the head and the body separately: two system calls, and two wake-ups of the
    client, a request). A streamed response's head (chunked) goes out at once; a held head is
    written before anything else, and at the latest when the response is complete.

    It is also the request's `HeadLines` (``scope[HEAD_LINES]``): the header lines the pipeline
    leaves in ``lines`` go into the next head written, before the blank line that ends it, and
    are forgotten when the response is complete (written or not)."""

    __slots__ = ("_head", "_transport", "lines")

    def __init__(self, transport: asyncio.Transport) -> None:
        self._transport = transport
        self._head: bytes | None = None
        self.lines: bytes | None = None

    def write(self, data: bytes) -> None:
        lines = self.lines
        if lines is not None and data.startswith(b"HTTP/1.1 ") and data.endswith(b"\r\n\r\n"):
            self.lines = None
            data = data[:-2] + lines + b"\r\n"
        head = self._head
        if head is not None:
            self._head = None
            self._transport.write(head + data)
        elif data.startswith(b"HTTP/1.1 ") and b"\r\ncontent-length: " in data:
            self._head = data
        else:
            self._transport.write(data)

    def flush(self) -> None:
        self.lines = None
        head, self._head = self._head, None
        if head is not None:
            self._transport.write(head)

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def close(self) -> None:
        self.flush()
        self._transport.close()


class _Sweep:
    """The open connections of one event loop, whose coarse deadlines one repeating timer
    checks every `SWEEP` seconds while any connection is open."""

    def __init__(self) -> None:  # no reference to the loop: `_SWEEPS` holds it weakly
        self.connections: set[GuardedProtocol] = set()
        self._timer: asyncio.TimerHandle | None = None

    @staticmethod
    def of(loop: asyncio.AbstractEventLoop) -> _Sweep:
        sweep = _SWEEPS.get(loop)
        if sweep is None:
            sweep = _SWEEPS[loop] = _Sweep()
        return sweep

    def add(self, connection: GuardedProtocol) -> None:
        self.connections.add(connection)
        if self._timer is None:
            self._timer = connection.loop.call_later(SWEEP, self._tick)

    def discard(self, connection: GuardedProtocol) -> None:
        self.connections.discard(connection)

    def _tick(self) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        for connection in [c for c in self.connections if c._due <= now]:
            connection._overdue()
        self._timer = loop.call_later(SWEEP, self._tick) if self.connections else None


_SWEEPS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Sweep] = weakref.WeakKeyDictionary()


def _peer(client: tuple[str, int] | None) -> str:
    return f"{client[0]}:{client[1]}" if client else "a client"


def guarded_protocol(header: float, body: float, write: float) -> type[GuardedProtocol]:
    """The protocol class to give uvicorn (``uvicorn.Config(http=...)``) with these deadlines."""
    attrs: dict[str, Any] = {"header_timeout": header, "body_timeout": body, "write_timeout": write}
    return type("GuardedProtocol", (GuardedProtocol,), attrs)


class _QuietCut:
    """The app, except that a request `Gateway.cut` cancelled where the gateway could not turn
    it into an error (while writing to a client that does not read) ends quietly, not as an
    "Exception in ASGI application" traceback."""

    def __init__(self, app: ASGIApp, gateway: Gateway) -> None:
        self.app, self.gateway = app, gateway

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await self.app(scope, receive, send)
        except BaseException as exc:
            if self.gateway.cut_short(exc) is None:
                raise


class Server(uvicorn.Server):
    """uvicorn serving ``gateway`` with `GuardedProtocol` and the graceful shutdown."""

    #: seconds after the first stop signal during which another is the same stop (workers: 1)
    repeat_window = 0.0
    #: called once the app has started and the sockets listen (a worker tells its parent)
    on_ready: Callable[[], None] | None = None

    def __init__(self, gateway: Gateway, log_level: str | None = None) -> None:
        server = gateway.config.server
        try:
            import uvloop  # noqa: F401

            loop = "uvloop"
        except ImportError:
            loop = "asyncio"
        super().__init__(
            uvicorn.Config(
                _QuietCut(create_app(gateway), gateway),
                host=server.host,
                port=server.port,
                loop=loop,
                http=guarded_protocol(
                    server.header_timeout_seconds,
                    server.body_timeout_seconds,
                    server.write_timeout_seconds,
                ),
                access_log=False,
                proxy_headers=False,  # turnout reads no forwarded headers: skip the wrapper
                log_level=log_level or server.log_level,
                timeout_keep_alive=server.keepalive_timeout_seconds,  # type: ignore[arg-type]
                limit_concurrency=server.max_connections,
                # turnout drains before uvicorn's shutdown starts: by then only the replies of
                # what `Gateway.cut` ended are left to send; uvicorn's own cut, which ends a
                # request without a word, comes only if that takes longer
                timeout_graceful_shutdown=2,
            )
        )
        self.gateway = gateway
        self.grace = server.shutdown_grace_seconds
        self._drainer: asyncio.Task[None] | None = None
        self._stopped_at = 0.0
        _raise_open_files(server.max_connections)

    async def startup(self, sockets: Any = None) -> None:
        await super().startup(sockets)
        if self.started and self.on_ready is not None:
            self.on_ready()

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # Not uvicorn's: it re-raises the signal once stopped (a non-zero exit), and only a
        # second SIGINT (not SIGTERM) forces the exit.
        loop = asyncio.get_event_loop()
        if self.gateway.draining or self.should_exit:  # the second signal: now
            if time.monotonic() - self._stopped_at < self.repeat_window:
                return  # the first one, heard twice
            self.should_exit = self.force_exit = True
            loop.call_soon_threadsafe(self._cut)
            return
        self._stopped_at = time.monotonic()
        self.gateway.drain()
        loop.call_soon_threadsafe(self._start_drain)

    def _start_drain(self) -> None:
        self._drainer = asyncio.get_running_loop().create_task(self._drain())

    async def _drain(self) -> None:
        log.info("shutting down: requests in flight have %gs to finish", self.grace)
        loop = asyncio.get_running_loop()
        end = loop.time() + self.grace
        while loop.time() < end:  # polled: cheaper than a signal from every request's end
            if not self.gateway.in_flight():
                break
            await asyncio.sleep(0.05)
        self._cut()
        self.should_exit = True  # uvicorn closes the listener and waits for the connections

    def _cut(self) -> None:
        cut = self.gateway.cut()
        if cut:
            log.warning("shutdown grace over: ended %d request(s) still in flight", cut)

    async def serve(self, sockets: Any = None) -> None:
        try:
            await super().serve(sockets)
        finally:
            if self._drainer is not None:
                self._drainer.cancel()
            if self.force_exit and self.gateway.started:  # uvicorn skipped the lifespan's end
                await asyncio.wait_for(self.gateway.close(), 5)


def redact_logs() -> None:
    """Redact configured secrets from everything turnout and uvicorn log (turnout/errors.py)."""
    loggers = [logging.getLogger(), *(logging.getLogger(n) for n in ("uvicorn", "uvicorn.error"))]
    for logger in loggers:
        for handler in logger.handlers:
            if not any(isinstance(f, RedactingFilter) for f in handler.filters):
                handler.addFilter(RedactingFilter())


def _raise_open_files(connections: int) -> None:
    """Let the process open what ``server.max_connections`` allows (and backends' sockets too):
    a soft limit of 1,024 files with 1,000 idle connections would lock every client out."""
    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        wanted = connections * 2 + 256
        if soft != resource.RLIM_INFINITY and soft < wanted:
            limit = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
            resource.setrlimit(resource.RLIMIT_NOFILE, (limit, hard))
    except (ValueError, OSError):  # pragma: no cover - a platform that does not allow it
        pass
