"""A fault-injecting proxy in front of a real OpenAI-compatible runtime, for faults a real runtime
will not produce on demand.

A provider under test points at ``{proxy}/{fault}``. ``POST {proxy}/{fault}/v1/...`` either
injects the fault or, once the fault is used up, forwards the request unchanged to the upstream
(llama-cpp-python's server in the tests) and streams its answer back as it arrives, so every
answer that is not a fault is a real one. ``GET .../v1/models`` is answered by the proxy itself:
health probes and model-list refreshes never reach the upstream (llama-cpp-python cuts off a
running stream when any other request arrives).

Faults (``<fault>xN`` injects it into the first N requests only, then forwards):

====== ==================================================================================
ok     forward
500    HTTP 500 with llama.cpp's error body ``{"error": {"code", "message", "type"}}``
429    HTTP 429, ``Retry-After: 1``, OpenAI's rate-limit error body
hang   accept the request and never answer (no status line: a timeout before the first byte)
stall  forward the first event of the stream, then send nothing more
cut    forward the first event of the stream, then close the connection mid-stream
error  forward the first event of the stream, then an error event as OpenAI's API sends one
       (``data: {"error": {"message", "type", "code"}}``) and the end of the body
flip   the odd-numbered requests get the ``500``, the even-numbered ones are forwarded
====== ==================================================================================

``stallN``, ``cutN`` and ``errorN`` forward the first N events instead of one. The body of every
POST is kept in `FaultProxy.bodies`, by fault spec.

====== ==================================================================================
badjson HTTP 200 ``application/json`` whose body is cut off mid-object
badtype HTTP 200 ``text/html``, the error page of a proxy in between
badevent HTTP 200 ``text/event-stream`` whose first event's data is not JSON
====== ==================================================================================
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
from collections import Counter
from collections.abc import Iterator
from typing import Any

import aiohttp
from aiohttp import web

__all__ = ["FaultProxy", "faulty_provider", "run_fault_proxy"]

_MODELS = {
    "object": "list",
    "data": [{"id": "gemma-3-270m", "object": "model", "created": 0, "owned_by": "me"}],
}


class FaultProxy:
    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.rstrip("/")
        self.url = ""
        #: POST requests received per fault spec (``500x1``, ``hang``...)
        self.counts: Counter[str] = Counter()
        #: the bodies of those requests, in order, per fault spec
        self.bodies: dict[str, list[bytes]] = {}
        self._stop: asyncio.Event | None = None
        self._session: aiohttp.ClientSession | None = None

    def endpoint(self, fault: str) -> str:
        return f"{self.url}/{fault}"

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        fault, _, rest = request.path.lstrip("/").partition("/")
        if request.method == "GET":
            return web.json_response(_MODELS)
        self.counts[fault] += 1
        self.bodies.setdefault(fault, []).append(await request.read())
        kind, _, times = fault.partition("x")
        if kind == "flip":
            kind = "500" if self.counts[fault] % 2 else "ok"
        if kind == "ok" or (times and self.counts[fault] > int(times)):
            return await self._forward(request, rest)
        if kind == "500":
            error = {"code": 500, "message": "llama_decode returned -3", "type": "server_error"}
            return web.json_response({"error": error}, status=500)
        if kind == "429":
            error = {"message": "Too many requests", "type": "rate_limit_error", "code": None}
            return web.json_response({"error": error}, status=429, headers={"Retry-After": "1"})
        if kind == "hang":
            assert self._stop is not None
            await self._stop.wait()
            return web.Response(status=503)  # the proxy is stopping; nobody is listening
        if kind == "badjson":
            return web.Response(
                body=b'{"id": "cmpl-1", "choices": [{"index": 0, "mess',
                content_type="application/json",
            )
        if kind == "badtype":
            page = "<html><body><h1>502 Bad Gateway</h1></body></html>"
            return web.Response(text=page, content_type="text/html")
        if kind == "badevent":
            resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await resp.prepare(request)
            await resp.write(b"data: {'choices': [not json\n\n")
            await resp.write_eof()
            return resp
        name = kind.rstrip("0123456789")
        if name in ("stall", "cut", "error"):
            return await self._fail_mid_stream(request, rest, name, int(kind[len(name) :] or 1))
        raise web.HTTPNotFound(text=f"unknown fault {fault!r}")

    async def _forward(self, request: web.Request, path: str) -> web.StreamResponse:
        assert self._session is not None
        body = await request.read()
        headers = {"Content-Type": request.headers.get("Content-Type", "application/json")}
        async with self._session.post(f"{self.upstream}/{path}", data=body, headers=headers) as up:
            resp = web.StreamResponse(
                status=up.status,
                headers={"Content-Type": up.headers.get("Content-Type", "application/json")},
            )
            await resp.prepare(request)
            async for block in up.content.iter_any():
                await resp.write(block)
            await resp.write_eof()
            return resp

    async def _fail_mid_stream(
        self, request: web.Request, path: str, fault: str, events: int
    ) -> web.StreamResponse:
        """Forward a stream's first ``events`` events, then stall, cut or send an error event.
        Until they came, SSE comments keep the connection busy, so that only the fault itself
        can trip a read timeout however slow the upstream is today."""
        assert self._session is not None and self._stop is not None
        session = self._session
        body = await request.read()
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)

        async def first_event() -> tuple[aiohttp.ClientResponse, bytes]:
            up = await session.post(
                f"{self.upstream}/{path}", data=body, headers={"Content-Type": "application/json"}
            )
            return up, await _first_events(up, events)

        opening = asyncio.ensure_future(first_event())
        try:
            while not opening.done():
                await asyncio.wait({opening}, timeout=0.2)
                if not opening.done():
                    await resp.write(b": waiting for the upstream\n\n")
            up, event = opening.result()
        finally:
            opening.cancel()
        try:
            await resp.write(event)
            if fault == "cut":
                assert request.transport is not None
                request.transport.close()  # mid-stream, chunked body never finished
                return resp
            if fault == "error":
                error = {"message": "llama_decode returned -1", "type": "server_error", "code": 500}
                await resp.write(b"data: " + json.dumps({"error": error}).encode() + b"\n\n")
                await resp.write_eof()
                return resp
            await self._stop.wait()  # stall: the stream stays open and silent
            return resp
        finally:
            up.close()

    async def serve(self, ready: threading.Event) -> None:
        self._stop = asyncio.Event()
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120))
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        runner = web.AppRunner(app, shutdown_timeout=1)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert server is not None
        port = server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}"
        ready.set()
        try:
            await self._stop.wait()
        finally:
            await self._session.close()
            await runner.cleanup()


async def _first_events(up: aiohttp.ClientResponse, count: int) -> bytes:
    """The upstream's bytes up to the end of its ``count``-th SSE event."""
    buffer = b""
    async for block in up.content.iter_any():
        buffer += block
        end = 0
        for _ in range(count):
            found = [
                (at, sep) for sep in (b"\r\n\r\n", b"\n\n") if (at := buffer.find(sep, end)) != -1
            ]
            if not found:
                break
            at, sep = min(found)
            end = at + len(sep)
        else:
            return buffer[:end]
    return buffer


@contextlib.contextmanager
def run_fault_proxy(upstream: str) -> Iterator[FaultProxy]:
    """Serve a `FaultProxy` in a thread with its own event loop."""
    proxy = FaultProxy(upstream)
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    holder: dict[str, Any] = {}

    def run() -> None:
        try:
            loop.run_until_complete(proxy.serve(ready))
        except BaseException as exc:  # reported below
            holder["error"] = exc
            ready.set()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    if not ready.wait(10) or "error" in holder:
        raise RuntimeError(f"the fault proxy did not start: {holder.get('error')!r}")
    try:
        yield proxy
    finally:
        assert proxy._stop is not None
        loop.call_soon_threadsafe(proxy._stop.set)
        thread.join(timeout=10)
        loop.close()


def faulty_provider(endpoint: str, **extra: Any) -> dict[str, Any]:
    """A provider entry for an OpenAI-dialect endpoint (a fault proxy's, or a closed port) serving
    the test GGUF's model, not retried on the same backend; ``extra`` adds or overrides keys."""
    return {
        "type": "openai",
        "endpoint": endpoint,
        "models": ["gemma-3-270m"],
        "max_retries": 0,
        **extra,
    }
