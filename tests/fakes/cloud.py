"""Plumbing shared by the fakes of the cloud APIs that cannot be reached from here (OpenAI,
Anthropic, Gemini): an aiohttp server in its own thread on a port the OS picked, a record of every
request, injected failures (a status with the vendor's error body and headers, for the next few
requests or until reset; a failure part-way through a stream; a stream cut short), and the
deterministic "model" they share: a token is a whitespace-separated word, and the answer to a
user message is ``You said: <its text>``.

Each vendor's wire format (paths, validation, bodies, error shapes, stream framing) lives in its
own module; this one holds nothing a vendor's format decides.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import struct
import uuid
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

import orjson
from aiohttp import web

from tests.support.aioserver import serve_app

__all__ = [
    "Failure",
    "FakeCloud",
    "Received",
    "Reject",
    "cut_words",
    "embedding_of",
    "request_id",
    "serve",
    "words",
]

BODY = web.RequestKey("body", object)
F = TypeVar("F", bound="FakeCloud")


@dataclass(frozen=True)
class Received:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]  # names lower-cased
    body: Any  # parsed JSON; raw bytes if not JSON; None if empty


@dataclass
class Failure:
    """An error reply the fake sends instead of an answer: ``times`` requests, or all (None)."""

    status: int
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)
    times: int | None = None


class Reject(Exception):
    """Raised by a handler: answer with this status and the vendor's error body."""

    def __init__(self, status: int, body: dict[str, Any], headers: dict[str, str] | None = None):
        super().__init__(str(body))
        self.status = status
        self.body = body
        self.headers = headers or {}


def words(text: str) -> int:
    return len(text.split())


def cut_words(text: str, limit: int | None, stops: list[str] | None) -> tuple[str, str | None]:
    """The reply cut before the first stop string and to ``limit`` words, and why it ended:
    None (naturally), the stop string met, or ``"length"``."""
    reason: str | None = None
    for stop in stops or ():
        if stop and stop in text:
            text, reason = text[: text.index(stop)], stop
            break
    pieces = text.split(" ")
    if limit is not None and 0 < limit < len([p for p in pieces if p]):
        return " ".join(pieces[:limit]), "length"
    return text, reason


def embedding_of(text: str, dimensions: int) -> list[float]:
    """A deterministic unit vector for ``text``, exact in float32."""
    seed = hashlib.sha256(text.encode()).digest()
    raw = [((seed[i % 32] + 31 * i) % 256) / 127.5 - 1.0 for i in range(dimensions)]
    norm = math.sqrt(sum(v * v for v in raw)) or 1.0
    return [struct.unpack("<f", struct.pack("<f", v / norm))[0] for v in raw]


class FakeCloud(ABC):
    """State shared by every cloud fake: what it received, and the failures it was told to give.
    Subclasses add the vendor's routes in `routes` and its error body in `error_body`."""

    name = "cloud"

    def __init__(self, *, api_key: str = "test-key") -> None:
        self.api_key = api_key
        self.url = ""
        self.requests: list[Received] = []
        self.sent: list[list[Any]] = []  # per answered request: the objects (or events) sent
        self.failure: Failure | None = None
        self.midstream: tuple[int, dict[str, Any]] | None = None
        self.cut: int | None = None

    # What tests control.

    def fail(
        self,
        status: int,
        message: str,
        kind: str | None = None,
        headers: dict[str, str] | None = None,
        *,
        times: int | None = None,
        body: dict[str, Any] | None = None,
    ) -> None:
        """Answer the next ``times`` requests (all, if None) with the vendor's error body."""
        error = body if body is not None else self.error_body(status, message, kind)
        self.failure = Failure(status, error, dict(headers or {}), times)

    def fail_midstream(self, after: int = 2, message: str = "", kind: str | None = None) -> None:
        """Streams send ``after`` pieces of content, then the vendor's in-stream error, and end."""
        self.midstream = (after, self.stream_error_body(message, kind))

    def cut_stream(self, after: int = 2) -> None:
        """Streams send ``after`` pieces of content and end without their ending."""
        self.cut = after

    def reset(self) -> None:
        self.failure = self.midstream = self.cut = None
        self.requests.clear()
        self.sent.clear()

    def bodies(self, path: str) -> list[Any]:
        return [r.body for r in self.requests if r.path == path]

    # What a vendor module provides.

    @abstractmethod
    def routes(self, app: web.Application) -> None:
        """Add the vendor's endpoints to ``app``."""

    @abstractmethod
    def error_body(self, status: int, message: str, kind: str | None) -> dict[str, Any]:
        """The vendor's error body for an HTTP error."""

    @abstractmethod
    def stream_error_body(self, message: str, kind: str | None) -> dict[str, Any]:
        """The vendor's error event inside a stream."""

    def response_headers(self) -> dict[str, str]:
        return {}

    # The machinery.

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._record], client_max_size=64 * 1024 * 1024)
        self.routes(app)
        return app

    def take_failure(self) -> Failure | None:
        failure = self.failure
        if failure is not None and failure.times is not None:
            failure.times -= 1
            if failure.times <= 0:
                self.failure = None
        return failure

    @web.middleware
    async def _record(self, request: web.Request, handler: Any) -> web.StreamResponse:
        raw = await request.read()
        body: Any = None
        if raw:
            try:
                body = orjson.loads(raw)
            except orjson.JSONDecodeError:
                body = raw
        request[BODY] = body
        headers = {k.lower(): v for k, v in request.headers.items()}
        self.requests.append(
            Received(request.method, request.path, dict(request.query), headers, body)
        )
        try:
            response: web.StreamResponse = await handler(request)
        except Reject as exc:
            headers = {**self.response_headers(), **exc.headers}
            return web.json_response(exc.body, status=exc.status, headers=headers)
        return response


def request_id(prefix: str) -> str:
    return prefix + uuid.uuid4().hex[:24]


@contextlib.contextmanager
def serve(fake: F) -> Iterator[F]:
    """Serve ``fake`` on a free port for the duration of the block; ``fake.url`` is its base."""
    with serve_app(fake.app(), fake.name) as (url,):
        fake.url = url
        yield fake
