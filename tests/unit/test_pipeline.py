"""The pipeline (turnout/server/pipeline.py): every request, to every mounted route of the built
app, to no route at all (404, 405, a slash redirect), passes every stage; a stage wraps the whole
response, streams included; a stage's refusal is told in the route's dialect; the inference paths
are found with one lookup on the raw path.

The routes are not listed here: the test walks the route table of the app `create_app` builds, so
a route added later is covered without touching this file."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Iterator
from typing import Any, ClassVar

import orjson
import pytest

from turnout.config import ProviderConfig
from turnout.errors import InvalidRequestError
from turnout.gateway import Gateway
from turnout.providers.base import Health, ModelInfo, Provider
from turnout.routing import Catalog, Router
from turnout.server import create_app
from turnout.server.app import STAGES
from turnout.server.pipeline import Exchange, Handler, Pipeline, Route, Stage
from turnout.server.responses import BytesResponse
from turnout.wire.types import JSON, Call, Chunk


class Memory(Provider):
    """Answers every kind at once; streams two chunks."""

    dialect: ClassVar[str] = "memory"

    def __init__(self) -> None:
        super().__init__("local", ProviderConfig(type="openai", models=["m"], max_retries=0))

    async def list_models(self) -> list[ModelInfo]:
        return [ModelInfo("m", self.name)]

    async def probe(self) -> Health:
        return Health(True)

    async def complete(self, call: Call) -> JSON:
        if call.kind == "embedding":
            return {"object": "list", "model": "m",
                    "data": [{"object": "embedding", "index": 0, "embedding": [0.5]}]}  # fmt: skip
        message = {"role": "assistant", "content": "hi"}
        return {"id": "c", "object": "chat.completion", "created": 1, "model": call.model,
                "choices": [{"index": 0, "message": message, "finish_reason": "stop"}]}  # fmt: skip

    async def stream(self, call: Call) -> AsyncIterator[Chunk]:
        for text in ("he", "llo"):
            delta = {"index": 0, "delta": {"content": text}}
            yield Chunk({"id": "c", "object": "chat.completion.chunk", "created": 1,
                         "model": call.model, "choices": [delta]})  # fmt: skip


def gateway() -> Gateway:
    gw = Gateway({"default_embedded": False, "health": {"enabled": False}}, environ={})
    gw.providers = {"local": Memory()}
    gw.catalog = Catalog(gw.providers)
    gw.router = Router(gw.catalog)
    return gw


class Seen:
    """A test stage: records each request it sees (route, method, path, path parameters) and
    either answers it itself (``answer``: no endpoint runs) or passes it on, noting how many
    response messages had gone out when the rest of the pipeline returned."""

    def __init__(self, answer: bool) -> None:
        self.answer = answer
        self.requests: list[tuple[Route, str, str, dict[str, Any]]] = []
        self.sent_when_done: list[int] = []
        self.sent: list[Any] = []

    def __call__(self, next: Handler) -> Handler:
        async def stage(x: Exchange) -> None:
            self.requests.append((x.route, x.method, x.url.path, dict(x.path_params)))
            if self.answer:
                await BytesResponse(b"seen", [])(x.scope, x.receive, x.send)
                return
            await next(x)
            self.sent_when_done.append(len(self.sent))

        return stage


async def request(
    app: Pipeline, method: str, path: str, body: object = None, sent: list[Any] | None = None
) -> tuple[int, dict[bytes, bytes], bytes]:
    """One request through ``app`` in process (ASGI): status, headers, body. After its body the
    client stays connected until the response ends."""
    raw = b"" if body is None else orjson.dumps(body)
    messages = sent if sent is not None else []
    received = False

    async def receive() -> Any:
        nonlocal received
        if not received:
            received = True
            return {"type": "http.request", "body": raw, "more_body": False}
        await asyncio.Event().wait()  # connected until cancelled (the disconnect guard)

    async def send(message: Any) -> None:
        messages.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method,
             "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"",
             "root_path": "", "headers": [(b"content-type", b"application/json")],
             "client": ("127.0.0.1", 5000), "server": ("127.0.0.1", 8400)}  # fmt: skip
    await app(scope, receive, send)
    start = messages[0]
    body_out = b"".join(m.get("body", b"") for m in messages[1:])
    return start["status"], dict(start["headers"]), body_out


def concrete(path: str) -> tuple[str, dict[str, str]]:
    """A path that the route template ``path`` matches, and the parameters it carries."""
    params: dict[str, str] = {}

    def fill(match: re.Match[str]) -> str:
        name, kind = match.group(1), match.group(2) or ""
        params[name] = "org/some-model" if kind == ":path" else "p1"
        return params[name]

    return re.sub(r"{(\w+)(:\w+)?}", fill, path), params


def every_request(app: Pipeline) -> Iterator[tuple[Route, str, str, dict[str, str]]]:
    """(route, method, path, parameters) for each method of each mounted route."""
    for route in app.routes:
        path, params = concrete(route.path)
        for method in (*route.methods, *(("HEAD",) if "GET" in route.methods else ())):
            yield route, method, path, params


@pytest.mark.parametrize("where", ["first", "last"])
async def test_a_stage_sees_a_request_to_every_mounted_route(where: str) -> None:
    seen = Seen(answer=True)
    stages: list[Stage] = [seen, *STAGES] if where == "first" else [*STAGES, seen]
    app = create_app(gateway(), stages=stages)
    asked = list(every_request(app))
    paths = {path for _, _, path, _ in asked}
    # The walk reaches the hot paths and the cold ones, the admin ones among them.
    for path in ("/v1/chat/completions", "/v1/embeddings", "/v1/models", "/health", "/metrics",
                 "/v1/local/downloads", "/v1/models/org/some-model/load",
                 "/v1/ollama/p1/api/pull", "/v1/providers"):  # fmt: skip
        assert path in paths
    assert any(route.admin for route, *_ in asked)
    for route, method, path, params in asked:
        status, _, body = await request(app, method, path, {"model": "m"})
        assert (status, body) == (200, b"seen"), (method, path)
        got_route, got_method, got_path, got_params = seen.requests[-1]
        assert (got_method, got_path) == (method, path)
        assert got_route is route, f"{method} {path} reached {got_route.path}, not {route.path}"
        assert got_params == params
    assert len(seen.requests) == len(asked)


@pytest.mark.parametrize(
    ("method", "path", "name"),
    [
        ("GET", "/v2/nothing", "not_found"),
        ("POST", "/v2", "not_found"),  # "/" is now the Ollama front's root (GET, HEAD)
        ("GET", "/v1/chat/completions", "method_not_allowed"),
        ("PUT", "/v1/ollama/p1/api/pull", "method_not_allowed"),
        ("GET", "/health/", "redirect_slash"),
    ],
)
async def test_a_stage_sees_requests_no_route_serves(method: str, path: str, name: str) -> None:
    seen = Seen(answer=False)
    app = create_app(gateway(), stages=[*STAGES, seen])
    status, headers, _ = await request(app, method, path)
    assert [(r.name, m, p) for r, m, p, _ in seen.requests] == [(name, method, path)]
    assert status == {"not_found": 404, "method_not_allowed": 405, "redirect_slash": 307}[name]
    if name == "redirect_slash":
        assert headers[b"location"] == b"/health"  # a path: never built from the client's Host


async def test_a_405_is_told_in_the_routes_dialect_and_says_what_is_allowed() -> None:
    app = create_app(gateway())
    status, headers, body = await request(app, "GET", "/v1/ollama/p1/api/pull")
    assert status == 405 and headers[b"allow"] == b"POST"
    assert orjson.loads(body) == {"error": "Method GET is not allowed on /v1/ollama/p1/api/pull."}
    status, headers, body = await request(app, "DELETE", "/v1/models")
    assert status == 405 and headers[b"allow"] == b"GET, HEAD"
    assert orjson.loads(body)["error"]["code"] == "method_not_allowed"


def chat(stream: bool) -> JSON:
    return {"model": "m", "stream": stream, "messages": [{"role": "user", "content": "hi"}]}


@pytest.mark.parametrize(
    ("path", "body", "tail"),
    [
        ("/v1/chat/completions", chat(True), b'"llo"}}]}\n\ndata: [DONE]\n\n'),
        ("/v1/chat/completions", chat(False), b'"finish_reason":"stop","logprobs":null}]}'),
        ("/v1/embeddings", {"model": "m", "input": "hi"}, b'"embedding":[0.5]}]}'),
    ],
)
async def test_a_stage_wraps_the_whole_response_streams_included(
    path: str, body: JSON, tail: bytes
) -> None:
    seen = Seen(answer=False)
    app = create_app(gateway(), stages=[seen, *STAGES])
    status, headers, out = await request(app, "POST", path, body, sent=seen.sent)
    assert status == 200 and headers[b"x-turnout-backend"] == b"local", out
    assert out.endswith(tail), out
    assert [(r.path, m) for r, m, _, _ in seen.requests] == [(path, "POST")]
    # The stage's `await next(x)` returned after the last message of the response.
    assert seen.sent_when_done == [len(seen.sent)]
    assert seen.sent[-1].get("more_body", False) is False
    if body.get("stream"):
        assert len(seen.sent) == 4  # start, two chunks, [DONE]: streamed, not gathered


def refuse(next: Handler) -> Handler:
    async def stage(x: Exchange) -> None:
        if x.route.path.startswith("/v1/ollama/"):
            raise InvalidRequestError("refused by a stage", param="stage")
        await next(x)

    return stage


async def test_a_stage_refusal_is_told_in_the_dialect_of_the_route() -> None:
    app = create_app(gateway(), stages=[*STAGES, refuse])
    status, _, body = await request(app, "GET", "/v1/ollama/p1/api/tags")
    assert status == 400 and orjson.loads(body) == {"error": "refused by a stage"}
    status, _, body = await request(app, "GET", "/v1/ollama/p1/tags")
    assert status == 400 and orjson.loads(body)["error"]["param"] == "stage"


async def test_stages_run_in_order_each_once() -> None:
    order: list[str] = []

    def named(name: str) -> Stage:
        def make(next: Handler) -> Handler:
            async def stage(x: Exchange) -> None:
                order.append(name)
                await next(x)

            return stage

        return make

    app = create_app(gateway(), stages=[named("a"), *STAGES, named("b")])
    assert (await request(app, "GET", "/health"))[0] == 200
    assert order == ["a", "b"]


def test_every_path_without_parameters_is_one_lookup_on_the_raw_path() -> None:
    app = create_app(gateway())
    exact = app._table._exact
    for route, method, path, params in every_request(app):
        if not params:
            assert exact[path.encode()][method] is route, (method, path)
    assert {b"/v1/chat/completions", b"/v1/completions", b"/v1/embeddings"} <= set(exact)
