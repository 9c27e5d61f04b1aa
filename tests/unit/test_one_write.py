"""The connection transport of `turnout serve` (server/serving.py `_OneWrite`): a response's head
and body go out in one send; a head with no body at once (a stream waiting for its first token)
still goes out within the same turn of the event loop; nothing else is held."""

from __future__ import annotations

import asyncio
from typing import Any

from turnout.server.serving import _OneWrite


class Recorder:
    """Records what is written, as a socket transport would send it."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []
        self.closed = self.aborted = False

    def write(self, data: bytes) -> None:
        self.sent.append(bytes(data))

    def is_closing(self) -> bool:
        return self.closed or self.aborted

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.aborted = True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 1) if name == "peername" else default


async def test_head_and_body_leave_in_one_send() -> None:
    raw = Recorder()
    t = _OneWrite(raw, asyncio.get_running_loop())  # type: ignore[arg-type]
    t.hold_next()
    t.write(b"HTTP/1.1 200 OK\r\n\r\n")
    assert raw.sent == []  # held for the body
    t.write(b"{}")
    assert raw.sent == [b"HTTP/1.1 200 OK\r\n\r\n{}"]
    t.write(b"more")  # not armed again: straight through
    assert raw.sent[-1] == b"more" and len(raw.sent) == 2
    await asyncio.sleep(0)
    assert len(raw.sent) == 2  # the cancelled flush sends nothing again


async def test_a_head_alone_goes_out_within_the_loop_turn() -> None:
    raw = Recorder()
    t = _OneWrite(raw, asyncio.get_running_loop())  # type: ignore[arg-type]
    t.hold_next()
    t.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
    assert raw.sent == []
    await asyncio.sleep(0)
    assert raw.sent == [b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"]
    t.write(b"5\r\nhello\r\n")
    assert raw.sent[-1] == b"5\r\nhello\r\n"


async def test_a_large_body_is_not_copied_onto_the_head() -> None:
    raw = Recorder()
    t = _OneWrite(raw, asyncio.get_running_loop())  # type: ignore[arg-type]
    t.hold_next()
    t.write(b"head")
    body = b"x" * 100_000
    t.write(body)
    assert raw.sent == [b"head", body]


async def test_close_sends_what_is_held_and_abort_drops_it() -> None:
    loop = asyncio.get_running_loop()
    closing, aborting = Recorder(), Recorder()
    for raw in (closing, aborting):
        t = _OneWrite(raw, loop)  # type: ignore[arg-type]
        t.hold_next()
        t.write(b"head")
        t.close() if raw is closing else t.abort()
    await asyncio.sleep(0)
    assert closing.sent == [b"head"] and closing.closed
    assert aborting.sent == [] and aborting.aborted
    assert _OneWrite(closing, loop).get_extra_info("peername") == ("127.0.0.1", 1)  # type: ignore[arg-type]
