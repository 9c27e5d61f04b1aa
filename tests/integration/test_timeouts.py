"""Timeouts of a real ``turnout serve`` (issue 15, item 2), with small configured values: a backend
that stalls gives a 504 within the first-token timeout (not three times that), one that stalls
mid-stream ends it with an error event at the idle timeout, one that never ends is cut at the total
timeout; on the client side, slowloris connections are closed by the header timeout while normal
requests stay fast, a body that never comes is cut by the body timeout, and a client that stops
reading frees a one-slot backend within the write deadline. The backend is the paced fake."""

from __future__ import annotations

import asyncio
import os
import socket
import statistics
import sys
import time
from collections.abc import Iterator
from typing import Any

import aiohttp
import orjson
import pytest

from tests.fakes.paced import Paced, run_paced
from tests.support.gateway_process import Served, paced_config, read_sse, serve_process

FIRST_TOKEN, IDLE, TOTAL = 1.0, 1.0, 3.0
HEADER, BODY, WRITE = 2.0, 1.0, 2.0
#: a kept-alive connection idle this long is closed (2 s or more: kept by the sweep, not a timer)
KEEPALIVE = 2.0
#: slowloris connections, and for how long they are kept up (the issue's figure is 500 for 30 s;
#: TURNOUT_SLOWLORIS_SECONDS=30 runs that)
SLOWLORIS, SLOWLORIS_SECONDS = 500, float(os.environ.get("TURNOUT_SLOWLORIS_SECONDS", "4"))


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Served, Paced]]:
    with run_paced() as paced:
        config = paced_config(
            paced.url,
            header_timeout_seconds=HEADER,
            body_timeout_seconds=BODY,
            write_timeout_seconds=WRITE,
            keepalive_timeout_seconds=KEEPALIVE,
            log_level="info",
        )
        config["providers"]["paced"].update(
            first_token_timeout=FIRST_TOKEN, idle_timeout=IDLE, total_timeout=TOTAL
        )
        # a one-slot backend with the default (long) timeouts: only the write deadline frees it
        config["providers"]["slot"] = {
            "type": "openai",
            "endpoint": paced.url,
            "models": ["paced"],
            "max_concurrency": 1,
        }
        with serve_process(tmp_path_factory.mktemp("timeouts"), config) as served:
            yield served, paced


def _body(prompt: str, stream: bool, model: str = "paced/paced") -> dict[str, Any]:
    return {"model": model, "stream": stream, "messages": [{"role": "user", "content": prompt}]}


async def _post(url: str, prompt: str, stream: bool) -> tuple[int, Any, float]:
    started = time.monotonic()
    timeout = aiohttp.ClientTimeout(total=30)
    async with (
        aiohttp.ClientSession(timeout=timeout) as http,
        http.post(f"{url}/v1/chat/completions", json=_body(prompt, stream)) as reply,
    ):
        if reply.status == 200 and stream:
            answer: Any = await read_sse(reply)
        else:
            answer = await reply.json()
        return reply.status, answer, time.monotonic() - started


@pytest.mark.parametrize("stream", [True, False])
def test_a_stalled_backend_is_a_504_within_the_first_token_timeout(
    served: tuple[Served, Paced], stream: bool
) -> None:
    gateway, _ = served
    if not stream:  # a whole reply has no first token: its bound is the total timeout
        status, body, elapsed = asyncio.run(_post(gateway.url, "stall", False))
        assert status == 504 and body["error"]["code"] == "backend_timeout", body
        assert "total_timeout of 3s" in body["error"]["message"]
        assert TOTAL <= elapsed < TOTAL + 1.5, elapsed
        return
    status, body, elapsed = asyncio.run(_post(gateway.url, "stall", True))
    assert status == 504 and body["error"]["code"] == "backend_timeout", body
    assert "first-token timeout of 1s" in body["error"]["message"]
    assert FIRST_TOKEN <= elapsed < FIRST_TOKEN + 1.0, elapsed  # no retry of the stall


def test_a_stream_that_stalls_midway_ends_at_the_idle_timeout(
    served: tuple[Served, Paced],
) -> None:
    gateway, _ = served
    status, (events, done), elapsed = asyncio.run(_post(gateway.url, "stall-after-first", True))
    assert status == 200 and not done
    assert events[-1]["error"]["code"] == "backend_timeout"
    assert "sent nothing for 1s" in events[-1]["error"]["message"]
    assert IDLE <= elapsed < IDLE + 1.0, elapsed


def test_a_stream_that_never_ends_is_cut_at_the_total_timeout(
    served: tuple[Served, Paced],
) -> None:
    gateway, _ = served
    status, (events, done), elapsed = asyncio.run(_post(gateway.url, "endless every=0.05", True))
    assert status == 200 and not done
    assert len(events) > 20  # it flowed all along
    assert "total_timeout of 3s" in events[-1]["error"]["message"]
    assert TOTAL <= elapsed < TOTAL + 1.0, elapsed


async def _latencies(url: str, n: int, every: float = 0.0) -> list[float]:
    out = []
    async with aiohttp.ClientSession() as http:
        for _ in range(n):
            await asyncio.sleep(every)
            started = time.perf_counter()
            async with http.post(f"{url}/v1/chat/completions", json=_body("chunks=1", False)) as r:
                assert r.status == 200
                await r.read()
            out.append(time.perf_counter() - started)
    return out


def test_slowloris_is_closed_by_the_header_timeout_and_others_stay_fast(
    served: tuple[Served, Paced],
) -> None:
    gateway, _ = served
    host, port = "127.0.0.1", int(gateway.url.rsplit(":", 1)[1])

    async def scenario() -> tuple[list[float], list[float], list[float]]:
        pace = SLOWLORIS_SECONDS / 80  # spread over the attack, reconnection waves included
        idle = await _latencies(gateway.url, 30, pace)
        attack = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tests.support.slowloris", host, str(port), str(SLOWLORIS),
            str(SLOWLORIS_SECONDS), stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        await asyncio.sleep(0.5)  # all connected and trickling
        loaded = await _latencies(gateway.url, 60, pace)
        out, _ = await attack.communicate()
        idle += await _latencies(gateway.url, 30, pace)  # before and after: the machine's noise
        return idle, loaded, orjson.loads(out)

    idle, loaded, closed_after = asyncio.run(scenario())
    print(
        f"\nslowloris x{SLOWLORIS} for {SLOWLORIS_SECONDS:g}s: {len(closed_after)} connections "
        f"closed by the server, after {min(closed_after):.2f}-{max(closed_after):.2f}s; "
        f"normal request median {statistics.median(idle) * 1000:.2f} ms idle, "
        f"{statistics.median(loaded) * 1000:.2f} ms under attack"
    )
    assert len(closed_after) >= SLOWLORIS  # every attacker was cut off, at least once
    # each lived about the header timeout (from the attacker's view, which starts the clock a
    # little after the server does when 500 connect at once)
    assert max(closed_after) < HEADER + 1.0, sorted(closed_after)[-5:]
    assert statistics.median(closed_after) > HEADER * 0.7, statistics.median(closed_after)
    assert statistics.median(loaded) <= 2 * statistics.median(idle), (idle, loaded)


def _exchange(sock: socket.socket) -> bytes:
    """One whole non-streamed request on an open connection; its reply's bytes."""
    body = orjson.dumps(_body("chunks=1", False))
    sock.sendall(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
    )
    reply = b""
    while b"\r\n\r\n" not in reply or not reply.rstrip().endswith(b"}"):
        chunk = sock.recv(65536)
        assert chunk, reply
        reply += chunk
    return reply


def test_a_kept_alive_connection_is_closed_after_the_keepalive_timeout(
    served: tuple[Served, Paced],
) -> None:
    """The keep-alive deadline (swept twice a second): a connection idle for less than it
    serves its next request; one idle for longer is closed within half a second after it."""
    gateway, _ = served
    port = int(gateway.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.settimeout(KEEPALIVE + 3)
        for _ in range(3):  # each request, read whole, starts the wait again
            assert _exchange(sock).startswith(b"HTTP/1.1 200")
            time.sleep(KEEPALIVE * 0.6)
        assert _exchange(sock).startswith(b"HTTP/1.1 200")
        started = time.monotonic()
        assert sock.recv(4096) == b""  # closed by the server
        elapsed = time.monotonic() - started
    assert KEEPALIVE - 0.1 <= elapsed < KEEPALIVE + 1.0, elapsed


def test_a_body_that_never_comes_is_cut_by_the_body_timeout(
    served: tuple[Served, Paced],
) -> None:
    gateway, _ = served
    port = int(gateway.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: application/json\r\n"
            b'Content-Length: 1000\r\n\r\n{"model": '
        )
        sock.settimeout(BODY + 2)
        started = time.monotonic()
        rest = b""
        while chunk := sock.recv(4096):
            rest += chunk
        elapsed = time.monotonic() - started
    assert BODY - 0.1 <= elapsed < BODY + 1.0, elapsed
    assert "did not arrive within 1s" in gateway.log_text()


def test_a_client_that_stops_reading_frees_a_one_slot_backend(
    served: tuple[Served, Paced],
) -> None:
    gateway, paced = served
    port = int(gateway.url.rsplit(":", 1)[1])
    slow = socket.socket()
    slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    slow.connect(("127.0.0.1", port))
    body = (
        b'{"model": "slot/paced", "stream": true, "messages": [{"role": "user", '
        b'"content": "chunks=1000000 pad=2000"}]}'
    )
    slow.sendall(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Content-Type: application/json\r\n"
        b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
    )

    async def next_client() -> tuple[int, float]:
        await asyncio.sleep(0.5)
        before = paced.requests
        started = time.monotonic()
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
            reply = await http.post(
                f"{gateway.url}/v1/chat/completions", json=_body("chunks=1", False, "slot/paced")
            )
            await reply.read()
        assert paced.requests == before + 1
        return reply.status, time.monotonic() - started

    async def read_slowly() -> int:
        got = 0
        slow.setblocking(False)
        loop = asyncio.get_running_loop()
        for _ in range(30):
            try:
                data = await asyncio.wait_for(loop.sock_recv(slow, 1), 1.0)
            except TimeoutError:
                continue
            if not data:
                break
            got += 1
            await asyncio.sleep(1.0)  # one byte a second
        return got

    async def scenario() -> tuple[int, float]:
        reader = asyncio.create_task(read_slowly())
        status, waited = await next_client()
        reader.cancel()
        return status, waited

    try:
        status, waited = asyncio.run(scenario())
    finally:
        slow.close()
    print(f"\nthe next client on the one-slot backend waited {waited:.2f}s")
    assert status == 200
    assert waited < WRITE + 3.0, waited  # buffers fill in well under a second, then the deadline
    assert "took nothing written to it for 2s" in gateway.log_text()


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_a_client_that_leaves_is_seen_at_once_and_frees_a_one_slot_backend(
    served: tuple[Served, Paced], stream: bool
) -> None:
    """Under `turnout serve` the connection itself tells the request its client left (no
    watcher task): a client that hangs up while its backend is still thinking ends the request
    as cancelled (client_gone) within moments, and the one-slot backend serves the next."""
    gateway, _ = served
    # a whole reply that takes 20 s; a stream whose backend never starts
    prompt = "chunks=1 every=20" if not stream else "stall"

    async def stats(http: aiohttp.ClientSession) -> dict[str, Any]:
        async with http.get(f"{gateway.url}/stats") as reply:
            requests: dict[str, Any] = (await reply.json())["requests"]
            return requests

    async def scenario() -> tuple[int, float, int]:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
            gone = (await stats(http))["reasons"].get("cancelled", {}).get("client_gone", 0)
            leaving = asyncio.create_task(
                http.post(f"{gateway.url}/v1/chat/completions",
                          json=_body(prompt, stream, "slot/paced"))
            )  # fmt: skip
            await asyncio.sleep(0.5)  # it reached the backend, which holds its one slot
            leaving.cancel()  # the client hangs up
            started = time.monotonic()
            async with http.post(
                f"{gateway.url}/v1/chat/completions", json=_body("chunks=1", False, "slot/paced")
            ) as reply:
                await reply.read()
            waited = time.monotonic() - started
            counted = await stats(http)
            now = counted["reasons"].get("cancelled", {}).get("client_gone", 0)
            return reply.status, waited, now - gone

    status, waited, cancelled = asyncio.run(scenario())
    assert status == 200 and waited < 2.0, (status, waited)
    assert cancelled == 1
