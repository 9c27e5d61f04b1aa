"""Exact accounting (issue 15, item 4): one statistics record per request on an inference route,
whatever its fate (answered, refused by validation, too large, refused by the guard stage, failed
in a backend, failed inside turnout, left by its client before its body or mid-stream, cut by the
shutdown), each with its reason; a client's departure is no backend failure; turnout's own
failure is not "cancelled"; a client that leaves mid-body is one log line, not a traceback.

Requests go straight into the ASGI app (no sockets), over a provider scripted by the prompt.
The same over HTTP against a real ``turnout serve``: tests/integration/test_accounting.py."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any, ClassVar

import orjson
import pytest

from turnout.config import ProviderConfig
from turnout.errors import BackendUnavailableError
from turnout.gateway import Gateway
from turnout.providers.base import Health, ModelInfo, Provider
from turnout.routing import Catalog, Router
from turnout.server import create_app
from turnout.server.fronts import anthropic
from turnout.wire.types import JSON, Call, Chunk


class Scripted(Provider):
    """Its answer is chosen by the last user message: ``down`` (unreachable), ``bug`` (raises
    what no provider may: a turnout bug), ``slow`` (a stream of 50 chunks 10 ms apart), else an
    answer at once."""

    dialect: ClassVar[str] = "memory"

    def __init__(self) -> None:
        super().__init__("local", ProviderConfig(type="openai", models=["m"], max_retries=0))

    async def list_models(self) -> list[ModelInfo]:
        return [ModelInfo("m", self.name)]

    async def probe(self) -> Health:
        return Health(True)

    def _fail(self, call: Call) -> None:
        text = str(call.body["messages"][-1]["content"])
        if text == "down":
            raise BackendUnavailableError("backend 'local' is unreachable", backend="local")
        if text == "bug":
            raise RuntimeError("a bug")

    async def complete(self, call: Call) -> JSON:
        self._fail(call)
        message = {"role": "assistant", "content": "hi"}
        usage = {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}
        return {"id": "c", "object": "chat.completion", "created": 1, "model": call.model,
                "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
                "usage": usage}  # fmt: skip

    async def stream(self, call: Call) -> AsyncIterator[Chunk]:
        self._fail(call)
        slow = call.body["messages"][-1]["content"] == "slow"
        for _ in range(50 if slow else 2):
            if slow:
                await asyncio.sleep(0.01)
            delta = {"index": 0, "delta": {"content": "tok "}, "finish_reason": None}
            yield Chunk({"id": "c", "object": "chat.completion.chunk", "created": 1,
                         "model": call.model, "choices": [delta]})  # fmt: skip


def _gateway() -> Gateway:
    gateway = Gateway(
        {"default_embedded": False, "health": {"enabled": False},
         "server": {"max_body_bytes": 4096}},
        environ={},
    )  # fmt: skip
    provider = Scripted()
    gateway.providers = {"local": provider}
    gateway.catalog = Catalog(gateway.providers)
    gateway.router = Router(gateway.catalog)
    return gateway


class Client:
    """One request into the app: its body in ``parts`` (None: the client leaves instead of
    sending the next part), ``leave_after`` response body messages (then it leaves)."""

    def __init__(
        self,
        path: str,
        parts: list[bytes | None],
        headers: dict[str, str] | None = None,
        leave_after: int | None = None,
    ) -> None:
        self.path, self.parts, self.leave_after = path, parts, leave_after
        self.headers = {"host": "127.0.0.1:8400", "content-type": "application/json",
                        **(headers or {})}  # fmt: skip
        self.status = 0
        self.bodies = 0
        self.gone = asyncio.Event()

    async def receive(self) -> dict[str, Any]:
        if self.parts:
            part = self.parts.pop(0)
            if part is None:
                return {"type": "http.disconnect"}
            return {"type": "http.request", "body": part, "more_body": bool(self.parts)}
        await self.gone.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
        elif message["type"] == "http.response.body":
            self.bodies += 1
            if not message.get("more_body") or self.bodies == self.leave_after:
                self.gone.set()

    async def __call__(self, app: Any) -> int:
        scope = {
            "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
            "scheme": "http", "path": self.path, "raw_path": self.path.encode(),
            "query_string": b"", "root_path": "", "client": ("127.0.0.1", 5000),
            "server": ("127.0.0.1", 8400),
            "headers": [(k.encode(), v.encode()) for k, v in self.headers.items()],
        }  # fmt: skip
        await app(scope, self.receive, self.send)
        return self.status


def chat(text: str, **extra: Any) -> bytes:
    return orjson.dumps({"model": "m", "messages": [{"role": "user", "content": text}], **extra})


CHAT = "/v1/chat/completions"
#: what a request is -> (the client, the status it gets, its outcome, its reason)
CASES: dict[str, tuple[Client, int, str, str | None]] = {}


def cases() -> dict[str, tuple[Client, int, str, str | None]]:
    big = chat("x" * 5000)
    return {
        "answered": (Client(CHAT, [chat("hi")]), 200, "ok", None),
        "streamed": (Client(CHAT, [chat("hi", stream=True)]), 200, "ok", None),
        "invalid": (Client(CHAT, [b'{"model": "m", "messages": 3}']), 400, "refused",
                    "invalid_value"),
        "not json": (Client(CHAT, [b"{nope"]), 400, "refused", "invalid_json"),
        "too large, declared": (Client(CHAT, [big], {"content-length": str(len(big))}), 413,
                                "refused", "request_too_large"),
        "too large, as it came": (Client(CHAT, [big[:3000], big[3000:]]), 413, "refused",
                                  "request_too_large"),
        "foreign host": (Client(CHAT, [chat("hi")], {"host": "evil.example"}), 403, "refused",
                         "host_not_allowed"),
        "form body": (Client(CHAT, [chat("hi")], {"content-type": "text/plain"}), 415,
                      "refused", "unsupported_media_type"),
        "unknown model": (Client(CHAT, [orjson.dumps({"model": "nope", "messages": [
            {"role": "user", "content": "hi"}]})]), 404, "refused", "model_not_found"),
        "backend down": (Client(CHAT, [chat("down")]), 502, "error", "backend_unavailable"),
        "turnout bug": (Client(CHAT, [chat("bug")]), 500, "internal", "internal_error"),
        "left mid-body": (Client(CHAT, [chat("hi")[:10], None]), 0, "cancelled", "client_gone"),
        "left mid-stream": (Client(CHAT, [chat("slow", stream=True)], leave_after=3), 200,
                            "cancelled", "client_gone"),
        "anthropic, invalid": (Client("/v1/messages", [b'{"model": "m"}']), 400, "refused",
                               None),
        "ollama chat": (Client("/api/chat", [chat("hi", stream=False)]), 200, "ok", None),
        "responses": (Client("/v1/responses", [b'{"model": "m", "input": "hi"}']), 200, "ok",
                      None),
    }  # fmt: skip


@pytest.mark.parametrize("name", list(cases()))
async def test_each_request_gives_one_record_with_its_reason(name: str) -> None:
    client, status, outcome, reason = cases()[name]
    async with _gateway() as gateway:
        app = create_app(gateway)
        assert await client(app) == status
        counted = gateway.stats()["requests"]
    assert counted["total"] == 1 and counted[outcome] == 1, counted
    if outcome == "ok":
        assert counted["reasons"] == {}
    else:
        (got,) = counted["reasons"][outcome].items()
        assert got[1] == 1
        if reason is not None:
            assert got[0] == reason, counted


async def test_all_at_once_count_exactly_and_other_routes_are_not_requests() -> None:
    async with _gateway() as gateway:
        app = create_app(gateway)
        every = cases()
        statuses = await asyncio.gather(*(client(app) for client, *_ in every.values()))
        assert statuses == [status for _, status, *_ in every.values()]
        for path in ("/stats", "/v1/models", "/health"):  # not inference: not counted
            scope_client = Client(path, [b""])
            scope_client.headers.pop("content-type")
            await scope_client(app)
        counted = gateway.stats()["requests"]
    assert counted["total"] == len(every)
    for outcome in ("ok", "refused", "error", "internal", "cancelled", "cut"):
        expected = sum(1 for *_, o, _ in every.values() if o == outcome)
        assert counted[outcome] == expected, (outcome, counted)


async def test_a_client_gone_mid_stream_is_no_backend_failure() -> None:
    async with _gateway() as gateway:
        app = create_app(gateway)
        client = Client(CHAT, [chat("slow", stream=True)], leave_after=3)
        assert await client(app) == 200
        stats = gateway.stats()
    local = stats["backends"]["local"]
    assert (local["failures"], local["successes"], local["cancelled"]) == (0, 0, 1)
    assert local["models"]["m"]["errors"] == {}
    assert local["circuit"]["state"] == "closed"


async def test_a_client_gone_mid_body_is_one_log_line(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    async with _gateway() as gateway:
        app = create_app(gateway)
        caplog.clear()
        assert await Client(CHAT, [chat("hi")[:10], None])(app) == 0
    mine = [r for r in caplog.records if "left before" in r.getMessage()]
    assert len(mine) == 1 and mine[0].exc_info is None, caplog.text
    assert not any(r.exc_info for r in caplog.records), caplog.text
    assert "Traceback" not in caplog.text


async def test_a_failure_after_the_gateway_answered_is_turnouts_own(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The backend answered (the gateway noted success) but the front failed to translate the
    answer: a 500, recorded as internal, not as ok."""

    def broken(*args: Any) -> Any:
        raise KeyError("choices")

    monkeypatch.setattr(anthropic, "from_chat", broken)
    body = orjson.dumps({"model": "m", "max_tokens": 8, "messages": [
        {"role": "user", "content": "hi"}]})  # fmt: skip
    async with _gateway() as gateway:
        app = create_app(gateway)
        assert await Client("/v1/messages", [body])(app) == 500
        counted = gateway.stats()["requests"]
    assert counted["internal"] == 1 and counted["ok"] == 0, counted
    assert counted["reasons"] == {"internal": {"internal_error": 1}}


async def test_a_stream_cut_by_the_shutdown_is_counted_as_cut() -> None:
    async with _gateway() as gateway:
        app = create_app(gateway)
        client = Client(CHAT, [chat("slow", stream=True)], leave_after=1000)
        task = asyncio.create_task(client(app))
        await asyncio.sleep(0.1)  # 50 chunks 10 ms apart: it is flowing
        assert gateway.in_flight() == 1
        gateway.drain()
        assert gateway.cut() == 1
        assert await task == 200  # it began: it ends with an error event
        refused = await Client(CHAT, [chat("hi")])(app)  # while draining: refused, counted
        counted = gateway.stats()["requests"]
    assert refused == 503
    assert counted["total"] == 2 and counted["cut"] == 1 and counted["error"] == 1, counted
    assert counted["reasons"]["cut"] == {"shutting_down": 1}
