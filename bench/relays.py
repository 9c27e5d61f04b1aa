"""Minimal chat-completions relays measured by bench/http_clients.py.

Usage: python bench/relays.py KIND --port P --upstream URL

Each relay is one process with one event loop (uvloop) and one shared
upstream client. POST /v1/chat/completions forwards the request body to
URL and returns the upstream status, body and content-type. The
``aiohttp-stream`` kind (bench/run.py's bare relay) also passes a streamed
reply through piece by piece as it arrives, so it is the floor for streams too.
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager

import aiohttp
import uvicorn
import uvloop
from aiohttp import web
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

HOST = "127.0.0.1"
PATH = "/v1/chat/completions"
MAX_CONNECTIONS = 1000
TIMEOUT_S = 30.0
JSON_HEADERS = {"content-type": "application/json"}

# forward(request body) -> (status, response body, content-type)
Forward = Callable[[bytes], Awaitable[tuple[int, bytes, str]]]
ClientFactory = Callable[[str], AbstractAsyncContextManager[Forward]]


@asynccontextmanager
async def httpx_client(url: str) -> AsyncIterator[Forward]:
    """Yield a forwarder backed by one shared httpx.AsyncClient."""
    import httpx  # only this relay needs it; bench/run.py's relays run without it

    limits = httpx.Limits(
        max_connections=MAX_CONNECTIONS, max_keepalive_connections=MAX_CONNECTIONS
    )
    async with httpx.AsyncClient(limits=limits, timeout=TIMEOUT_S, trust_env=False) as client:

        async def forward(body: bytes) -> tuple[int, bytes, str]:
            r = await client.post(url, content=body, headers=JSON_HEADERS)
            return r.status_code, r.content, r.headers.get("content-type", "")

        yield forward


@asynccontextmanager
async def aiohttp_client(url: str) -> AsyncIterator[Forward]:
    """Yield a forwarder backed by one shared aiohttp.ClientSession."""
    connector = aiohttp.TCPConnector(limit=MAX_CONNECTIONS)
    timeout = aiohttp.ClientTimeout(total=TIMEOUT_S)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def forward(body: bytes) -> tuple[int, bytes, str]:
            async with session.post(url, data=body, headers=JSON_HEADERS) as r:
                return r.status, await r.read(), r.headers.get("content-type", "")

        yield forward


def starlette_app(url: str, client: ClientFactory) -> Starlette:
    """Build a Starlette relay whose upstream client lives for the app's lifespan."""

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Forward]]:
        async with client(url) as forward:
            yield {"forward": forward}

    async def relay(request: Request) -> Response:
        status, body, ctype = await request.state.forward(await request.body())
        return Response(body, status_code=status, media_type=ctype)

    return Starlette(routes=[Route(PATH, relay, methods=["POST"])], lifespan=lifespan)


async def serve_aiohttp(url: str, port: int) -> None:
    """Serve a bare aiohttp.web relay until the process is killed."""
    async with aiohttp_client(url) as forward:

        async def relay(request: web.Request) -> web.Response:
            status, body, ctype = await forward(await request.read())
            return web.Response(body=body, status=status, headers={"Content-Type": ctype})

        app = web.Application()
        app.router.add_post(PATH, relay)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, HOST, port).start()
        await asyncio.Event().wait()


async def serve_aiohttp_stream(url: str, port: int) -> None:
    """Serve a bare aiohttp.web relay that pipes every reply through as it arrives."""
    connector = aiohttp.TCPConnector(limit=MAX_CONNECTIONS)
    timeout = aiohttp.ClientTimeout(total=None, sock_read=TIMEOUT_S)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def relay(request: web.Request) -> web.StreamResponse:
            body = await request.read()
            async with session.post(url, data=body, headers=JSON_HEADERS) as upstream:
                ctype = upstream.headers.get("content-type", "")
                if not ctype.startswith("text/event-stream"):
                    payload = await upstream.read()
                    return web.Response(
                        body=payload, status=upstream.status, headers={"Content-Type": ctype}
                    )
                resp = web.StreamResponse(
                    status=upstream.status,
                    headers={"Content-Type": ctype, "Cache-Control": "no-cache"},
                )
                await resp.prepare(request)
                async for piece in upstream.content.iter_any():
                    await resp.write(piece)
                await resp.write_eof()
                return resp

        app = web.Application()
        app.router.add_post(PATH, relay)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, HOST, port, backlog=4096).start()
        await asyncio.Event().wait()


STARLETTE_CLIENTS: dict[str, ClientFactory] = {
    "starlette-httpx": httpx_client,
    "starlette-aiohttp": aiohttp_client,
}
KINDS = [*STARLETTE_CLIENTS, "aiohttp-bare", "aiohttp-stream"]


def main() -> None:
    """Parse arguments and run the selected relay."""
    parser = argparse.ArgumentParser(
        description="Chat-completions relay for bench/http_clients.py and bench/run.py."
    )
    parser.add_argument("kind", choices=KINDS)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True, help="full upstream URL to POST to")
    args = parser.parse_args()
    if args.kind == "aiohttp-bare":
        uvloop.run(serve_aiohttp(args.upstream, args.port))
    elif args.kind == "aiohttp-stream":
        uvloop.run(serve_aiohttp_stream(args.upstream, args.port))
    else:
        app = starlette_app(args.upstream, STARLETTE_CLIENTS[args.kind])
        uvicorn.run(
            app,
            host=HOST,
            port=args.port,
            loop="uvloop",
            http="httptools",
            access_log=False,
            log_level="warning",
        )


if __name__ == "__main__":
    main()
