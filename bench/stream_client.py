"""Per-chunk timing of streamed chat completions, for bench/run.py's streaming scenario.

wrk times whole responses only, so this small asyncio client (raw sockets, no HTTP library in
the way) times each chunk instead. It sends one streamed request at a time on a kept-alive
connection and, for every chunk
bench/stream_upstream.py sent (content `tok<k>@<ns>;`, ns = the upstream's monotonic clock at
send), records when it arrived and which socket read brought it. From that:

- time to first token: request about to be written -> first chunk read (connection set-up
  excluded);
- per-chunk delay: arrival - send, on the machine-wide monotonic clock (so the gateway's share is
  this figure through it less the same figure direct);
- held back: chunks that arrived in the same socket read as the chunk before them although the
  upstream sent them at least half its spacing apart (a gateway that coalesces or buffers).
"""

from __future__ import annotations

import asyncio
import re
import time
from dataclasses import dataclass, field

import orjson

TOKEN = re.compile(rb"tok(\d+)@(\d+);")
READ_TIMEOUT_S = 30


@dataclass
class StreamTiming:
    """What one streamed request looked like at the client."""

    ttft_ms: float
    delays_ms: list[float] = field(default_factory=list)  # per chunk: arrival - send
    gaps_ms: list[float] = field(default_factory=list)  # arrival gaps between chunks
    sent_gaps_ms: list[float] = field(default_factory=list)  # the upstream's gaps
    held_back: int = 0
    chunks: int = 0


async def timed_stream(
    conn: Connection,
    path: str,
    body: dict[str, object],
    headers: dict[str, str],
    spacing_ms: float,
    end: bytes = b"[DONE]",
) -> StreamTiming:
    """Send one streamed request on conn (kept alive) and time every chunk of its answer."""
    payload = orjson.dumps(body)
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {conn.host}:{conn.port}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n"
        "Accept: text/event-stream\r\n"
        + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        + "\r\n"
    ).encode()
    reader, writer = await conn.open()
    # The clock starts before the write: on loopback the write itself can run the receiver (the
    # kernel delivers the bytes in the sender's system call, and a woken server may take the CPU
    # before the client gets it back), so starting it after the write would leave out a
    # varying share of the server's own work.
    start = time.monotonic_ns()
    writer.write(head + payload)
    await writer.drain()
    arrivals: list[tuple[int, int, int]] = []  # (k, sent ns, arrived ns)
    reads: list[int] = []  # index of the socket read each chunk came in
    seen: set[int] = set()
    status_line = b""
    chunked = False
    pending = b""
    n_read = 0
    while True:
        data = await asyncio.wait_for(reader.read(65536), READ_TIMEOUT_S)
        if not data:  # the server closed: the end of a reply without chunked framing
            conn.close()
            break
        now = time.monotonic_ns()
        n_read += 1
        if not status_line:
            status_line = data.split(b"\r\n", 1)[0]
            if b" 200 " not in status_line + b" ":
                conn.close()
                raise RuntimeError(f"stream answered {data[:300]!r}")
            head_end = data.find(b"\r\n\r\n")
            chunked = b"transfer-encoding: chunked" in data[:head_end].lower()
        pending += data
        last_end = 0
        for m in TOKEN.finditer(pending):
            if int(m[1]) in seen:
                continue  # a final event repeating the text (Responses' .done events)
            seen.add(int(m[1]))
            arrivals.append((int(m[1]), int(m[2]), now))
            reads.append(n_read)
            last_end = m.end()
        done = chunked and pending.endswith(b"\r\n0\r\n\r\n") and end in pending
        # keep an incomplete marker split across two reads for the next one
        pending = pending[last_end:][-64:] if last_end else pending[-64:]
        if done:
            break
    if not arrivals:
        raise RuntimeError(f"no chunks in the stream ({status_line!r})")
    timing = StreamTiming(ttft_ms=(arrivals[0][2] - start) / 1e6, chunks=len(arrivals))
    timing.delays_ms = [(arrived - sent) / 1e6 for _, sent, arrived in arrivals]
    for i in range(1, len(arrivals)):
        sent_gap = (arrivals[i][1] - arrivals[i - 1][1]) / 1e6
        timing.sent_gaps_ms.append(sent_gap)
        timing.gaps_ms.append((arrivals[i][2] - arrivals[i - 1][2]) / 1e6)
        if reads[i] == reads[i - 1] and sent_gap >= spacing_ms / 2:
            timing.held_back += 1
    return timing


class Connection:
    """One keep-alive connection, reopened when the server closes it: connection set-up stays
    out of the time to first token, as it does for a client with a connection pool."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self._streams: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None

    async def open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self._streams is None:
            self._streams = await asyncio.open_connection(self.host, self.port)
        return self._streams

    def close(self) -> None:
        if self._streams is not None:
            self._streams[1].close()
            self._streams = None


async def timed_streams(
    url: str,
    n: int,
    headers: dict[str, str],
    model: str,
    spacing_ms: float,
    path: str = "/v1/chat/completions",
    body: dict[str, object] | None = None,
    end: bytes = b"[DONE]",
) -> list[StreamTiming]:
    """n streamed requests, one after another, on one kept-alive connection (``body``: another
    front's request, ``end``: what ends its stream)."""
    host, port = url.removeprefix("http://").split(":")
    body = body or {
        "model": model,
        "stream": True,
        "max_tokens": 128,
        "messages": [{"role": "user", "content": "Count to one hundred."}],
    }
    conn = Connection(host, int(port))
    try:
        return [await timed_stream(conn, path, body, headers, spacing_ms, end) for _ in range(n)]
    finally:
        conn.close()
