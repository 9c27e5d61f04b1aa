"""A real ``turnout serve`` in a subprocess, for tests of what only a process shows: signals,
connection deadlines, the exit status, the log."""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import yaml

from tests.support.servers import free_port, wait_http

__all__ = ["Served", "closing_statistics", "paced_config", "read_sse", "serve_process"]


@dataclass
class Served:
    proc: subprocess.Popen[bytes]
    url: str
    log: Path

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


def paced_config(backend: str, **server: Any) -> dict[str, Any]:
    """A configuration serving the paced fake (tests/fakes/paced.py) as ``paced``."""
    return {
        "providers": {"paced": {"type": "openai", "endpoint": backend, "models": ["paced"]}},
        "health": {"enabled": False},
        "discovery": {"enabled": False},
        "server": server,
    }


@contextlib.contextmanager
def serve_process(tmp_path: Path, config: dict[str, Any]) -> Iterator[Served]:
    path = tmp_path / "turnout.yaml"
    path.write_text(yaml.safe_dump(config))
    env = {k: v for k, v in os.environ.items() if not k.startswith("TURNOUT_")}
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    port = free_port()
    log = tmp_path / "turnout.log"
    cmd = [sys.executable, "-m", "turnout", "serve", "--config", str(path), "--port", str(port)]
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
    served = Served(proc, f"http://127.0.0.1:{port}", log)
    try:
        wait_http(f"{served.url}/health", 60, proc)
        yield served
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


async def read_sse(response: aiohttp.ClientResponse) -> tuple[list[Any], bool]:
    """The JSON events of an SSE response, and whether it ended with ``[DONE]``."""
    events: list[Any] = []
    async for line in response.content:
        if line.startswith(b"data: [DONE]"):
            return events, True
        if line.startswith(b"data: "):
            events.append(orjson.loads(line[6:]))
    return events, False


def closing_statistics(log: str) -> dict[str, int]:
    """The request counts the gateway logs when it closes: the total, and each outcome that
    counted any (``statistics at close: 20 requests (18 ok, 0 refused, ..., 2 cut)``)."""
    line = re.search(r"statistics at close: (\d+) requests \(([^)]*)\)", log)
    assert line is not None, log
    counts = {"total": int(line.group(1))}
    for part in line.group(2).split(", "):
        n, outcome = part.split(" ")
        if int(n):
            counts[outcome] = int(n)
    return counts
