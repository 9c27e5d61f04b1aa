"""A raw HTTP client for the integration tests: exact status, headers and bytes, no SDK in between.

`post` sends a body (a JSON-able object, or bytes sent as they are) and returns the reply;
`stream` reads a server-sent event stream line by line, stamping each line with its arrival time.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from yarl import URL

__all__ = ["Reply", "Stream", "get", "post", "request", "stream"]

TIMEOUT = aiohttp.ClientTimeout(total=120)


@dataclass
class Reply:
    status: int
    headers: Mapping[str, str]
    body: bytes
    elapsed: float

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Stream:
    status: int
    headers: Mapping[str, str]
    #: every non-empty line, with the monotonic time it arrived
    lines: list[tuple[float, str]] = field(default_factory=list)
    started: float = 0.0

    @property
    def data(self) -> list[str]:
        return [line[6:] for _, line in self.lines if line.startswith("data: ")]

    @property
    def events(self) -> list[dict[str, Any]]:
        """The JSON events, without the final ``[DONE]``."""
        return [json.loads(d) for d in self.data if d != "[DONE]"]

    @property
    def chunks(self) -> list[dict[str, Any]]:
        """Events that carry choices (not the usage-only chunk, not an error)."""
        return [e for e in self.events if e.get("choices")]

    @property
    def done(self) -> bool:
        return bool(self.data) and self.data[-1] == "[DONE]"

    @property
    def comments(self) -> list[str]:
        return [line for _, line in self.lines if line.startswith(":")]

    def text(self) -> str:
        pieces = []
        for chunk in self.chunks:
            choice = chunk["choices"][0]
            piece = choice["delta"].get("content") if "delta" in choice else choice.get("text")
            pieces.append(piece or "")
        return "".join(pieces)


async def post(url: str, body: Any, headers: Mapping[str, str] | None = None) -> Reply:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    sent = {"Content-Type": "application/json", **(headers or {})}
    start = time.monotonic()
    async with (
        aiohttp.ClientSession(timeout=TIMEOUT) as session,
        session.post(url, data=data, headers=sent) as resp,
    ):
        raw = await resp.read()
        return Reply(resp.status, resp.headers.copy(), raw, time.monotonic() - start)


async def get(url: str, headers: Mapping[str, str] | None = None) -> Reply:
    start = time.monotonic()
    async with (
        aiohttp.ClientSession(timeout=TIMEOUT) as session,
        session.get(url, headers=headers) as resp,
    ):
        raw = await resp.read()
        return Reply(resp.status, resp.headers.copy(), raw, time.monotonic() - start)


async def request(
    method: str,
    url: str,
    body: Any = None,
    headers: Mapping[str, str] | None = None,
    *,
    follow: bool = True,
) -> Reply:
    """Any method, a JSON body (or none), headers as given (``Host`` included: aiohttp sends the
    one given instead of its own), the URL sent as written (percent escapes kept)."""
    data = None if body is None else json.dumps(body).encode()
    sent = {"Content-Type": "application/json", **(headers or {})} if data else dict(headers or {})
    start = time.monotonic()
    async with (
        aiohttp.ClientSession(timeout=TIMEOUT) as session,
        session.request(
            method, URL(url, encoded=True), data=data, headers=sent, allow_redirects=follow
        ) as resp,
    ):
        raw = await resp.read()
        return Reply(resp.status, resp.headers.copy(), raw, time.monotonic() - start)


async def stream(url: str, body: Any) -> Stream:
    """POST ``body`` and read the whole reply as SSE lines (one line if it is not a stream)."""
    start = time.monotonic()
    async with (
        aiohttp.ClientSession(timeout=TIMEOUT) as session,
        session.post(url, json=body) as resp,
    ):
        out = Stream(resp.status, resp.headers.copy(), started=start)
        async for raw in resp.content:
            line = raw.decode().rstrip("\r\n")
            if line:
                out.lines.append((time.monotonic(), line))
        return out
