"""Start real servers for tests: turnout's gateway (uvicorn in a thread with its own loop, so sync
and async clients both work) and llama-cpp-python's server as a subprocess on the Gemma GGUF."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import uvicorn

from turnout.gateway import Gateway
from turnout.server import create_app

__all__ = [
    "free_port",
    "run_gateway",
    "run_llama_cpp_server",
    "run_process",
    "run_silent_server",
    "wait_http",
]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_http(
    url: str, timeout: float = 120.0, proc: subprocess.Popen[bytes] | None = None
) -> None:
    """Wait until ``url`` answers HTTP 200, failing early if ``proc`` dies."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before answering {url}")
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{url} did not answer within {timeout}s")


class _ThreadedServer:
    def __init__(self, app: Any, port: int) -> None:
        self.server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
        )
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.error: BaseException | None = None

    def _run(self) -> None:
        try:
            asyncio.run(self.server.serve())
        except BaseException as exc:  # reported to the test
            self.error = exc

    def start(self, timeout: float = 120.0) -> None:
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"gateway did not start: {self.error!r}")
            time.sleep(0.05)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


@contextlib.contextmanager
def run_gateway(
    config: Mapping[str, Any] | Gateway, environ: Mapping[str, str] | None = None
) -> Iterator[str]:
    """Serve a gateway over real HTTP on a free port; yield its base URL (no trailing slash).
    A configuration naming providers but not ``embedded`` gets ``embedded: false``: a test of
    other backends neither loads nor lists the embedded default unless it asks for it."""
    asked = isinstance(config, Gateway) or bool({"embedded", "default_embedded"} & set(config))
    if not asked and config.get("providers"):
        config = {**config, "embedded": False}
    gateway = config if isinstance(config, Gateway) else Gateway(config, environ=environ or {})
    port = free_port()
    server = _ThreadedServer(create_app(gateway), port)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


@contextlib.contextmanager
def run_llama_cpp_server(
    model_path: Path, alias: str = "gemma-3-270m", *extra: str
) -> Iterator[str]:
    """llama-cpp-python's OpenAI-compatible server on ``model_path``; yield its base URL."""
    port = free_port()
    cmd = [
        sys.executable, "-m", "llama_cpp.server",
        "--model", str(model_path),
        "--model_alias", alias,
        "--chat_format", "gemma",
        "--n_ctx", "2048",
        "--n_threads", str(os.cpu_count() or 2),
        "--host", "127.0.0.1",
        "--port", str(port),
        *extra,
    ]  # fmt: skip
    with run_process(cmd, f"http://127.0.0.1:{port}/v1/models"):
        yield f"http://127.0.0.1:{port}"


@contextlib.contextmanager
def run_process(
    cmd: list[str], ready_url: str, timeout: float = 120.0
) -> Iterator[subprocess.Popen[bytes]]:
    """Run a server process until the block ends; enter once ``ready_url`` answers 200, with the
    process. Its output goes to a log file, whose tail is shown if it fails to come up."""
    log = tempfile.NamedTemporaryFile(prefix="server-", suffix=".log", delete=False)  # noqa: SIM115
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_http(ready_url, timeout=timeout, proc=proc)
        yield proc
    except BaseException:
        sys.stderr.write(Path(log.name).read_text(errors="replace")[-4000:])
        raise
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


@contextlib.contextmanager
def run_silent_server() -> Iterator[str]:
    """A TCP server that accepts connections, reads what is sent and never answers: a backend
    that hangs. Yields its base URL."""
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    holder: dict[str, Any] = {}

    writers: set[asyncio.StreamWriter] = set()

    async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.add(writer)
        try:
            while await reader.read(65536):
                pass
        finally:
            writers.discard(writer)
            writer.close()

    async def serve() -> None:
        server = await asyncio.start_server(swallow, "127.0.0.1", 0)
        holder["port"] = server.sockets[0].getsockname()[1]
        holder["stop"] = asyncio.Event()
        ready.set()
        async with server:
            await holder["stop"].wait()
            for writer in list(writers):
                writer.close()

    thread = threading.Thread(target=loop.run_until_complete, args=(serve(),), daemon=True)
    thread.start()
    if not ready.wait(10):
        raise RuntimeError("the silent server did not start")
    try:
        yield f"http://127.0.0.1:{holder['port']}"
    finally:
        loop.call_soon_threadsafe(holder["stop"].set)
        thread.join(timeout=10)
