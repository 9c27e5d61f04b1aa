"""`turnout serve`'s connection protocol (turnout/server/serving.py): the held response head
(one send a whole reply) and the pipeline's own header lines put into it, on a recording
transport; and the protocol for real, under uvicorn, for the replies that have no body to join
(HEAD, 304) and for a streamed one."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import pytest
import uvicorn

from turnout.server.pipeline import HEAD_LINES
from turnout.server.serving import _Corked, guarded_protocol


class Recording:
    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True


HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n"
CHUNKED = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
)


def corked() -> tuple[_Corked, Recording]:
    transport = Recording()
    return _Corked(transport), transport  # type: ignore[arg-type]


def test_a_head_with_a_length_leaves_with_its_body() -> None:
    cork, transport = corked()
    cork.write(HEAD)
    assert transport.writes == []
    cork.write(b"{}")
    assert transport.writes == [HEAD + b"{}"]
    cork.flush()  # the response is complete: nothing left
    assert transport.writes == [HEAD + b"{}"]


def test_a_streamed_head_leaves_at_once_and_order_is_kept() -> None:
    cork, transport = corked()
    cork.write(CHUNKED)
    cork.write(b"5\r\nhello\r\n")
    assert transport.writes == [CHUNKED, b"5\r\nhello\r\n"]


def test_a_held_head_is_written_when_nothing_follows() -> None:
    cork, transport = corked()
    cork.write(HEAD)
    cork.flush()  # HEAD, 204, 304: the response completes without a body write
    assert transport.writes == [HEAD]
    cork.write(HEAD)
    cork.close()  # closed before its body: the head still goes first
    assert transport.writes == [HEAD, HEAD] and transport.closed


def test_own_header_lines_go_into_the_next_head_and_no_other() -> None:
    cork, transport = corked()
    cork.lines = b"x-request-id: a1\r\nx-ratelimit-limit-requests: 3\r\n"
    cork.write(HEAD)
    cork.write(b"{}")
    cork.flush()
    own = HEAD[:-2] + b"x-request-id: a1\r\nx-ratelimit-limit-requests: 3\r\n\r\n"
    assert transport.writes == [own + b"{}"]
    cork.lines = b"x-request-id: a2\r\n"
    cork.write(CHUNKED)  # a streamed head: at once, with the lines
    cork.write(b"HTTP/1.1 200 OK\r\n\r\n")  # a chunk that looks like a head: left as it is
    assert transport.writes[1:] == [CHUNKED[:-2] + b"x-request-id: a2\r\n\r\n",
                                    b"HTTP/1.1 200 OK\r\n\r\n"]  # fmt: skip
    cork.lines = b"x-request-id: a3\r\n"  # a response that never wrote its head...
    cork.flush()  # ...is complete: its lines go with it
    cork.write(HEAD)
    cork.flush()
    assert transport.writes[-1] == HEAD


async def _app(scope: Any, receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    scope[HEAD_LINES].lines = b"x-own: %s\r\n" % scope["path"].encode()
    if scope["path"] == "/stream":
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/plain")]})  # fmt: skip
        for part in (b"a", b"b"):
            await send({"type": "http.response.body", "body": part, "more_body": True})
        await send({"type": "http.response.body", "body": b""})
        return
    status = 304 if scope["path"] == "/same" else 200
    headers = [(b"content-length", b"5"), (b"content-type", b"text/plain")]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": b"" if status == 304 else b"hello"})


def _exchange(port: int, request: bytes, until: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(request)
        got = b""
        while until not in got:
            chunk = sock.recv(65536)
            assert chunk, got
            got += chunk
        return got


@pytest.mark.parametrize(
    ("request_line", "until", "expected"),
    [
        (b"GET / HTTP/1.1", b"hello", b"content-length: 5"),
        (b"HEAD / HTTP/1.1", b"\r\n\r\n", b"content-length: 5"),
        (b"GET /same HTTP/1.1", b"\r\n\r\n", b"304 Not Modified"),
        (b"GET /stream HTTP/1.1", b"0\r\n\r\n", b"1\r\na\r\n1\r\nb\r\n0\r\n\r\n"),
    ],
)
async def test_the_protocol_answers_every_kind_of_response(
    request_line: bytes, until: bytes, expected: bytes
) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = uvicorn.Config(
        _app, host="127.0.0.1", port=port, http=guarded_protocol(10, 60, 30), lifespan="off",
        log_level="warning",
    )  # fmt: skip
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    for _ in range(500):  # uvicorn says it started by a flag only
        if server.started:
            break
        await asyncio.sleep(0.02)
    path = request_line.split()[1]
    try:
        request = request_line + b"\r\nHost: 127.0.0.1\r\n\r\n"
        reply = await asyncio.to_thread(_exchange, port, request, until)
    finally:
        server.should_exit = True
        await task
    assert expected in reply, reply
    head = reply.split(b"\r\n\r\n")[0] + b"\r\n"
    assert reply.count(b"x-own: ") == 1 and head.endswith(b"\r\nx-own: %s\r\n" % path), reply
