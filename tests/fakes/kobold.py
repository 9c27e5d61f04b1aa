"""A fake KoboldCpp server (its native Kobold API). KoboldCpp cannot be built and run here, so
turnout's Kobold dialect is tested against this stand-in, which follows the documented wire format
(shared/reference/runtimes.md §16.2; LostRuins/koboldcpp koboldcpp.py @2da346a, Oct 2024):

- ``GET /api/v1/model`` → ``{"result": "koboldcpp/<name>"}`` (``koboldcpp/protected-model``
  without the password when one is set); ``GET /api/extra/version`` → ``{"result": "KoboldCpp",
  "version", "protected", "txt2img", "vision", ...}``; ``GET /api/v1/info/version``,
  ``/api/v1/config/max_context_length`` and ``/api/extra/true_max_context_length``;
- ``POST /api/v1/generate`` takes ``prompt``, ``max_length`` (default **180**), samplers,
  ``stop_sequence`` and ``trim_stop`` (default true: a stop string and what follows it is cut) and
  answers ``{"results": [{"text", "finish_reason": "stop"|"length"}]}``;
- ``POST /api/extra/generate/stream`` takes the same body and answers SSE ``event: message`` /
  ``data: {"token", "finish_reason"}``, the intermediate events with the *string* ``"null"``, the
  last one ``stop`` or ``length`` (its token may be empty); **no** ``[DONE]``; then the
  connection closes;
- ``POST /api/extra/tokencount`` with ``{"prompt"}`` → ``{"value", "ids"}``;
- errors are ``{"detail": {"msg", "type"}}``: 401 ``unauthorized`` (with ``"error":
  "Unauthorized"``) when ``--password`` is set and the request lacks ``Authorization: Bearer``,
  503 ``service_unavailable`` while busy (`FakeKobold.busy`).

Its model is deterministic: it generates ``reply`` (by default ``Hello there, traveller.`` then
the ChatML end-of-turn marker and a made-up next turn, so a chat sent without the template's stop
strings runs on), a token being a whitespace-separated word. `requests` records every request.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from typing import Any

import orjson
from aiohttp import web

from tests.fakes.openai_runtimes import BODY, Received, serve_app

__all__ = ["DEFAULT_REPLY", "FakeKobold", "run_fake_kobold"]

JSON = dict[str, Any]
DEFAULT_REPLY = "Hello there, traveller.<|im_end|>\n<|im_start|>user\nAnd now I speak for you."
VERSION = "1.76"


class FakeKobold:
    def __init__(
        self,
        model: str = "Llama-3.2-1B-Instruct",
        password: str | None = None,
        original: bool = False,
    ) -> None:
        self.model = model
        self.password = password
        self.original = original  # the original KoboldAI API: no /api/extra, no finish_reason
        self.reply = DEFAULT_REPLY
        self.busy = False
        self.cut_stream = False  # end streams without the finishing event
        self.url = ""
        self.requests: list[Received] = []

    def bodies(self, path: str) -> list[Any]:
        return [r.body for r in self.requests if r.path == path]

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._record])
        app.router.add_get("/api/v1/model", self._model)
        app.router.add_get("/api/v1/info/version", self._info_version)
        app.router.add_get("/api/v1/config/max_context_length", self._context)
        app.router.add_post("/api/v1/generate", self._generate)
        if not self.original:
            app.router.add_get("/api/extra/version", self._version)
            app.router.add_get("/api/extra/true_max_context_length", self._context)
            app.router.add_post("/api/extra/generate/stream", self._stream)
            app.router.add_post("/api/extra/tokencount", self._tokencount)
        app.router.add_route("*", "/{tail:.*}", self._not_found)
        return app

    async def _not_found(self, request: web.Request) -> web.Response:
        # FastAPI's 404 (KoboldAI) / KoboldCpp's: a JSON detail
        return self._detail(404, "Not Found", "not_found")

    @staticmethod
    def _detail(status: int, msg: str, kind: str, **extra: str) -> web.Response:
        return web.json_response({"detail": {**extra, "msg": msg, "type": kind}}, status=status)

    def _authorised(self, request: web.Request) -> bool:
        if not self.password:
            return True
        return request.headers.get("Authorization", "") == f"Bearer {self.password}"

    @web.middleware
    async def _record(self, request: web.Request, handler: Any) -> web.StreamResponse:
        raw = await request.read()
        try:
            body: Any = orjson.loads(raw) if raw else None
        except orjson.JSONDecodeError:
            body = raw
        self.requests.append(Received(request.method, request.path, body, dict(request.headers)))
        if request.method == "POST" and not self._authorised(request):
            return self._detail(
                401,
                "Authentication key is missing or invalid.",
                "unauthorized",
                error="Unauthorized",
            )
        request[BODY] = body if isinstance(body, dict) else {}
        response: web.StreamResponse = await handler(request)
        return response

    async def _model(self, request: web.Request) -> web.Response:
        name = self.model if self._authorised(request) else "protected-model"
        return web.json_response({"result": f"koboldcpp/{name}"})

    async def _version(self, request: web.Request) -> web.Response:
        return web.json_response(
            {
                "result": "KoboldCpp", "version": VERSION, "protected": bool(self.password),
                "txt2img": False, "vision": False, "transcribe": False, "multiplayer": False,
                "websearch": False,
            }
        )  # fmt: skip

    async def _info_version(self, request: web.Request) -> web.Response:
        return web.json_response({"result": "1.2.5"})

    async def _context(self, request: web.Request) -> web.Response:
        return web.json_response({"value": 4096})

    async def _tokencount(self, request: web.Request) -> web.Response:
        prompt = str(request[BODY].get("prompt", ""))
        words = prompt.split()
        return web.json_response({"value": len(words), "ids": list(range(len(words)))})

    def _run(self, body: JSON) -> tuple[list[str], str]:
        """The tokens generated for ``body`` and the finish reason, as KoboldCpp stops."""
        limit = int(body.get("max_length") or 180)
        pieces = re.findall(r"\s*\S+", self.reply)  # a token: a word and the space before it
        stops = [s for s in body.get("stop_sequence") or () if isinstance(s, str) and s]
        out: list[str] = []
        for piece in pieces[:limit]:
            text = "".join(out) + piece
            hit = min((text.find(s) for s in stops if s in text), default=-1)
            if hit >= 0:
                if body.get("trim_stop", True):  # the stop string and what follows it go
                    kept = text[:hit][len("".join(out)) :]
                    if kept:
                        out.append(kept)
                else:
                    out.append(piece)
                return out, "stop"
            out.append(piece)
        return out, "length" if len(pieces) > limit else "stop"

    async def _generate(self, request: web.Request) -> web.Response:
        if self.busy:
            return self._detail(
                503, "Server is busy; please try again later.", "service_unavailable"
            )
        pieces, finish = self._run(request[BODY])
        result: JSON = {"text": "".join(pieces)}
        if not self.original:
            result["finish_reason"] = finish
        return web.json_response({"results": [result]})

    async def _stream(self, request: web.Request) -> web.StreamResponse:
        if self.busy:
            return self._detail(
                503, "Server is busy; please try again later.", "service_unavailable"
            )
        pieces, finish = self._run(request[BODY])
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "cache-control": "no-cache"}
        )
        await response.prepare(request)
        events = [{"token": p, "finish_reason": "null"} for p in pieces]
        if not self.cut_stream:
            events.append({"token": "", "finish_reason": finish})
        for event in events:
            await response.write(b"event: message\n")
            await response.write(b"data: " + orjson.dumps(event) + b"\n\n")
        await response.write_eof()
        return response


@contextlib.contextmanager
def run_fake_kobold(**settings: Any) -> Iterator[FakeKobold]:
    """Serve a `FakeKobold` on a free port for the duration of the block."""
    fake = FakeKobold(**settings)
    with serve_app(fake.app(), "fake-koboldcpp") as url:
        fake.url = url
        yield fake
