"""llama-server run without ``--jinja`` refuses ``tools`` (400, "tools param requires --jinja
flag"): turnout learns that from the refusal, asks again with the tools held to a JSON schema
(turnout/providers/tool_schema.py), and from then on sends none (quirk ``jinja_tools`` of the
``llamacpp`` preset). A fake speaking llama-server's documented wire (its error body and its
``json_schema`` answer) stands in here; tests/e2e/test_tools_sdk.py runs the real one."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from aiohttp import web

from tests.fakes.openai_runtimes import serve_app
from turnout.gateway import Gateway

MODEL = "gemma-3-270m"
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}
#: what the model writes when the schema holds it to a call
CALL = '{"name": "get_weather", "arguments": {"city": "Paris"}}'
#: what llama-server (llama-cpp-python 0.3.36's llama.cpp, run --no-jinja) answers a request with
#: tools, status and body as read from the real binary: a 500 ``server_error``; older versions
#: answered 400 ``invalid_request_error``
REFUSALS = {
    500: {"code": 500, "message": "tools param requires --jinja flag", "type": "server_error"},
    400: {
        "code": 400,
        "message": "tools param requires --jinja flag",
        "type": "invalid_request_error",
    },
}


class NoJinja:
    """llama-server started with ``--no-jinja``: tools refused, ``json_schema`` honoured."""

    def __init__(self, status: int) -> None:
        self.status = status
        self.bodies: list[dict[str, Any]] = []

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/v1/models", self.models)
        app.router.add_post("/v1/chat/completions", self.chat)
        return app

    async def models(self, request: web.Request) -> web.Response:
        entry = {"id": MODEL, "object": "model", "created": 0, "owned_by": "llamacpp"}
        return web.json_response({"object": "list", "data": [entry]})

    async def chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.bodies.append(body)
        if body.get("tools"):
            refusal = {"error": REFUSALS[self.status]}
            return web.json_response(refusal, status=self.status)
        held = (body.get("response_format") or {}).get("type") == "json_schema"
        text = CALL if held else "It is sunny."
        usage = {"prompt_tokens": 9, "completion_tokens": 12, "total_tokens": 21}
        if not body.get("stream"):
            message = {"role": "assistant", "content": text}
            choice = {"index": 0, "message": message, "finish_reason": "stop"}
            reply = {"id": "chatcmpl-1", "object": "chat.completion", "created": 0,
                     "model": MODEL, "choices": [choice], "usage": usage}  # fmt: skip
            return web.json_response(reply)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        pieces = [text[i : i + 7] for i in range(0, len(text), 7)]
        for i, piece in enumerate(pieces):
            delta = {"role": "assistant", "content": piece} if i == 0 else {"content": piece}
            await response.write(_event({"choices": [{"index": 0, "delta": delta}]}))
        await response.write(
            _event({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
        )
        await response.write(_event({"choices": [], "usage": usage}))
        await response.write(b"data: [DONE]\n\n")
        return response


def _event(data: dict[str, Any]) -> bytes:
    chunk = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 0, "model": MODEL}
    return b"data: " + orjson.dumps({**chunk, **data}) + b"\n\n"


@pytest.fixture(params=[500, 400])
def server(request: pytest.FixtureRequest) -> Iterator[tuple[NoJinja, str]]:
    fake = NoJinja(request.param)
    with serve_app(fake.app(), "no-jinja") as url:
        yield fake, url


def _gateway(url: str) -> Gateway:
    settings = {
        "providers": {"cpp": {"type": "llamacpp", "endpoint": url, "max_retries": 0}},
        "embedded": False,
        "health": {"enabled": False},
    }
    return Gateway(settings, environ={})


async def test_a_refused_call_is_asked_again_with_the_tools_held_to_a_schema(
    server: tuple[NoJinja, str],
) -> None:
    fake, url = server
    async with _gateway(url) as gw:
        reply = await gw.chat(MODEL, ASK, tools=[WEATHER], tool_choice="required")
        again = await gw.chat(MODEL, ASK, tools=[WEATHER], tool_choice="required")
    for answer in (reply, again):
        choice = answer["choices"][0]
        (call,) = choice["message"]["tool_calls"]
        assert call["function"] == {"name": "get_weather", "arguments": '{"city":"Paris"}'}
        assert call["id"].startswith("call_") and choice["finish_reason"] == "tool_calls"
    assert [("tools" in b, "response_format" in b) for b in fake.bodies] == [
        (True, False),  # refused
        (False, True),  # asked again, held to a schema
        (False, True),  # learned: the next call goes held at once
    ]


async def test_a_refused_stream_is_asked_again_and_streams_the_call_once(
    server: tuple[NoJinja, str],
) -> None:
    fake, url = server
    async with _gateway(url) as gw:
        chunks = [c async for c in gw.stream(MODEL, ASK, tools=[WEATHER], tool_choice="required")]
    deltas = [d for c in chunks for ch in c["choices"] for d in ch["delta"].get("tool_calls", ())]
    named = [d for d in deltas if d.get("function", {}).get("name")]
    assert [d["function"]["name"] for d in named] == ["get_weather"]  # the name once
    assert sum(1 for d in deltas if "id" in d) == 1  # and the id once
    arguments = "".join(d["function"].get("arguments", "") for d in deltas)
    assert orjson.loads(arguments) == {"city": "Paris"}
    finish = [ch["finish_reason"] for c in chunks for ch in c["choices"] if ch.get("finish_reason")]
    assert finish == ["tool_calls"]
    assert [("tools" in b, "response_format" in b) for b in fake.bodies] == [
        (True, False),
        (False, True),
    ]


async def test_a_request_without_tools_is_never_rewritten(server: tuple[NoJinja, str]) -> None:
    fake, url = server
    async with _gateway(url) as gw:
        reply = await gw.chat(MODEL, ASK)
    assert reply["choices"][0]["message"]["content"] == "It is sunny."
    assert len(fake.bodies) == 1 and "response_format" not in fake.bodies[0]
