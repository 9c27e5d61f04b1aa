"""The mixed load of bench/run.py's soak: plain requests, streams read to the end, and streams
the client cuts, at a fixed concurrency, until a number of requests is reached.

wrk can neither check that a stream ended nor leave in the middle of one, so this is an asyncio
client (aiohttp, uvloop). Every `MIX` requests: 5 plain, 4 streamed and read to their end
marker, 1 streamed and cut: the client reads the first piece of the stream, then closes the
connection (a client that leaves mid-stream: the gateway must notice, cancel the backend call and
free what the request held). Each kind has its own body: the one for cut streams asks for a long
stream, so that the cut comes in its middle. A plain reply must be a 200 with choices, a stream
a 200 that ends with the dialect's end marker; anything else is an error, by kind.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

import aiohttp
import orjson

#: one cycle of the mix, repeated: request i is of kind MIX[i % len(MIX)]
MIX = ("plain", "stream", "plain", "stream", "plain", "cut", "plain", "stream", "plain", "stream")
TIMEOUT_S = 30


def mix_text() -> str:
    counts = Counter(MIX)
    return ", ".join(f"{counts[k]} {k}" for k in ("plain", "stream", "cut")) + f" per {len(MIX)}"


@dataclass
class SoakLoad:
    """What one mixed load sent and got."""

    requests: int = 0
    wall_s: float = 0.0
    kinds: dict[str, int] = field(default_factory=dict)  # sent, per kind
    errors: dict[str, int] = field(default_factory=dict)  # what went wrong, per kind of error
    #: cut streams whose end had already arrived in the first piece (not cut after all)
    cut_late: int = 0

    @property
    def rps(self) -> float:
        return self.requests / max(self.wall_s, 1e-9)

    def row(self) -> dict[str, Any]:
        return {**asdict(self), "rps": self.rps}


class _Mixed:
    def __init__(self, url: str, bodies: dict[str, dict[str, object]], end: bytes, n: int) -> None:
        self.url = url
        self.bodies = {kind: orjson.dumps(bodies[kind]) for kind in set(MIX)}
        self.end = end
        self.n = n
        self.next = itertools.count()
        self.kinds: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()
        self.cut_late = 0

    async def worker(self, http: aiohttp.ClientSession, headers: dict[str, str]) -> None:
        while (i := next(self.next)) < self.n:
            kind = MIX[i % len(MIX)]
            self.kinds[kind] += 1
            body = self.bodies[kind]
            try:
                await self.one(http, kind, body, headers)
            except (aiohttp.ClientError, TimeoutError) as exc:
                self.errors[f"{kind}: {type(exc).__name__}"] += 1

    async def one(
        self, http: aiohttp.ClientSession, kind: str, body: bytes, headers: dict[str, str]
    ) -> None:
        async with http.post(self.url, data=body, headers=headers) as response:
            if response.status != 200:
                await response.read()
                self.errors[f"{kind}: HTTP {response.status}"] += 1
            elif kind == "cut":
                first = await response.content.readany()
                self.cut_late += self.end in first
                response.close()  # the connection closed under the stream: the client left
            elif kind == "stream":
                if self.end not in (await response.read())[-256:]:
                    self.errors["stream: no end marker"] += 1
            elif b'"choices"' not in await response.read():
                self.errors["plain: no choices"] += 1


async def soak_load(
    url: str,
    bodies: dict[str, dict[str, object]],
    n: int,
    *,
    concurrency: int = 64,
    headers: dict[str, str] | None = None,
    end: bytes = b"[DONE]",
) -> SoakLoad:
    """n requests to url (a chat endpoint), `MIX` of plain / streamed / cut (bodies: the request
    of each kind), `concurrency` at a time; the client's connections are closed when it
    returns."""
    mixed = _Mixed(url, bodies, end, n)
    sent = {"Content-Type": "application/json", **(headers or {})}
    connector = aiohttp.TCPConnector(limit=concurrency)
    timeout = aiohttp.ClientTimeout(total=TIMEOUT_S)
    start = time.monotonic()
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http:
        await asyncio.gather(*(mixed.worker(http, sent) for _ in range(concurrency)))
    return SoakLoad(
        requests=sum(mixed.kinds.values()),
        wall_s=time.monotonic() - start,
        kinds=dict(mixed.kinds),
        errors=dict(mixed.errors),
        cut_late=mixed.cut_late,
    )
