"""llama.cpp's server as a managed process: one per model, started on demand, stopped when idle.

Source document 000's "direct process execution": the first request for a model starts
``llama-server -m MODEL`` on a free port, waits until ``/health`` answers 200, then requests are
relayed to it through turnout's OpenAI-compatible provider (preset ``llamacpp``). The scheduler
stops the process like it unloads an in-process model: after ``keep_alive``, to make room, or on
request. The binary is the one configured (``llama_server``), else ``llama-server`` on PATH, else
the one ``scripts/build_llama_server.sh`` caches under ``~/.cache/turnout/llama-server/``. Where
none exists, llama-cpp-python's own server (``python -m llama_cpp.server``, preset
``llama-cpp-python``) is managed the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import shutil
import socket
import sys
import tempfile
import threading
import time
from collections.abc import AsyncGenerator, Callable
from pathlib import Path
from typing import Any

from ...config import ProviderConfig
from ...errors import BackendError
from ...wire.openai import ChunkMaker, usage_dict
from ..base import JSON, Call, Chunk
from .llama_engine import LoadCancelled
from .settings import EmbeddedModel

__all__ = ["PYTHON_SERVER", "ManagedServer", "ServerEngine", "find_llama_server"]

logger = logging.getLogger("turnout.embedded")
#: the ``llama_server`` setting that asks for llama-cpp-python's server instead of a binary
PYTHON_SERVER = "llama-cpp-python"
_CACHE = Path(os.environ.get("TURNOUT_CACHE", "~/.cache/turnout")).expanduser() / "llama-server"


def find_llama_server(configured: str | None = None) -> str | None:
    """The llama-server binary to run: configured, on PATH, or built into turnout's cache;
    None for llama-cpp-python's server."""
    if configured == PYTHON_SERVER:
        return None
    if configured:
        path = shutil.which(configured) or configured
        if not os.access(path, os.X_OK):
            raise BackendError(f"llama_server: {configured!r} is not an executable file")
        return path
    found = shutil.which("llama-server")
    if found:
        return found
    try:
        from importlib.metadata import version

        preferred = _CACHE / version("llama-cpp-python") / "llama-server"
    except Exception:  # the package is not installed: any cached build will do
        preferred = _CACHE / "none"
    cuda = preferred.parent.with_name(preferred.parent.name + "-cuda") / "llama-server"
    candidates = [cuda, preferred, *sorted(_CACHE.glob("*/llama-server"), reverse=True)]
    return next((str(p) for p in candidates if os.access(p, os.X_OK)), None)


def server_environment(api_key: str) -> dict[str, str]:
    """The environment a managed server starts with: turnout's, plus the API key it must demand
    of every request (llama-server reads ``LLAMA_API_KEY``, llama-cpp-python's server
    ``API_KEY``). The server listens on loopback, where any local user could otherwise use it
    past the gateway's keys and limits; in the environment, unlike on the command line, the key
    is readable by the same user only."""
    return {**os.environ, "LLAMA_API_KEY": api_key, "API_KEY": api_key}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def command(binary: str | None, entry: EmbeddedModel, path: Path, port: int) -> list[str]:
    """The command line serving ``path`` as model ``entry.name`` on ``port``."""
    threads = str(entry.n_threads or os.cpu_count() or 1)
    if binary is None:
        cmd = [
            sys.executable, "-m", "llama_cpp.server", "--model", str(path),
            "--model_alias", entry.name, "--host", "127.0.0.1", "--port", str(port),
            "--n_ctx", str(entry.n_ctx), "--n_threads", threads, "--n_batch", str(entry.n_batch),
            "--n_gpu_layers", str(entry.n_gpu_layers), "--use_mmap", str(entry.use_mmap),
            "--use_mlock", str(entry.use_mlock),
        ]  # fmt: skip
        return cmd + (["--chat_format", entry.chat_format] if entry.chat_format else [])
    mode = (
        "mmap+mlock"
        if entry.use_mmap and entry.use_mlock
        else "mlock"
        if entry.use_mlock
        else ("mmap" if entry.use_mmap else "none")
    )
    cmd = [
        binary, "-m", str(path), "--alias", entry.name, "--host", "127.0.0.1", "--port", str(port),
        "-c", str(entry.n_ctx), "-t", threads, "-b", str(entry.n_batch),
        "-ngl", str(entry.n_gpu_layers), "--load-mode", mode, "--no-webui", "-np", "1",
    ]  # fmt: skip
    if not entry.chat_format:
        return cmd  # the GGUF's own template, through llama-server's Jinja engine
    # A built-in template by name needs Jinja off: with it on, the name is read as a template.
    name = _TEMPLATE_NAMES.get(entry.chat_format, entry.chat_format)
    return [*cmd, "--no-jinja", "--chat-template", name]


#: llama-cpp-python chat_format names -> llama.cpp's built-in template names, where they differ
_TEMPLATE_NAMES = {
    "llama-2": "llama2", "llama-3": "llama3", "mistral-instruct": "mistral-v1", "phi-3": "phi3",
    "qwen": "chatml", "openchat": "openchat", "zephyr": "zephyr", "vicuna": "vicuna",
}  # fmt: skip


class ManagedServer:
    """One running server process and the provider that relays requests to it."""

    def __init__(
        self, proc: asyncio.subprocess.Process, url: str, log: Path, preset: str, api_key: str
    ):
        from ..openai_compat import OpenAICompatProvider

        self.proc, self.url, self.log, self.preset = proc, url, log, preset
        self.api_key = api_key
        config = ProviderConfig.model_validate(
            {"type": preset, "endpoint": url, "max_retries": 0, "timeout": 600, "api_key": api_key}
        )
        self.provider = OpenAICompatProvider(f"{preset}@{url}", config)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def tail(self, lines: int = 15) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        return ""

    async def stop(self) -> None:
        await self.provider.close()
        if self.proc.returncode is None:
            self.proc.terminate()
            try:
                await asyncio.wait_for(self.proc.wait(), 10)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        self.log.unlink(missing_ok=True)


class ServerEngine:
    """A model served by a managed server process: what the scheduler loads and unloads."""

    def __init__(self, entry: EmbeddedModel, resolve: Callable[[], Path], binary: str | None):
        self.entry, self._resolve, self.binary = entry, resolve, binary
        self.server: ManagedServer | None = None
        self.start_timeout = 300.0

    @property
    def kind(self) -> str:
        return "llama-server" if self.binary else PYTHON_SERVER

    async def load(self, progress: Callable[[float], None], cancel: threading.Event) -> None:
        path = await asyncio.to_thread(self._resolve)
        entry = self.entry
        if entry.n_gpu_layers == "auto":
            from .llama_engine import llama_offloads, resolve_gpu_layers

            offloads = llama_offloads() if self.binary is None else None  # a binary: unknown
            layers, why = await asyncio.to_thread(resolve_gpu_layers, entry, path, offloads)
            logger.info("model %s: n_gpu_layers auto -> %d: %s", entry.name, layers, why)
            entry = entry.model_copy(update={"n_gpu_layers": layers})
        port = _free_port()
        api_key = secrets.token_urlsafe(32)
        fd, name = tempfile.mkstemp(prefix=f"turnout-{self.kind}-", suffix=".log")
        try:  # the server writes its log to a file: a pipe nobody reads would fill and block it
            proc = await asyncio.create_subprocess_exec(
                *command(self.binary, entry, path, port),
                stdout=fd, stderr=asyncio.subprocess.STDOUT, stdin=asyncio.subprocess.DEVNULL,
                env=server_environment(api_key),
            )  # fmt: skip
        finally:
            os.close(fd)
        log = Path(name)
        preset = "llamacpp" if self.binary else PYTHON_SERVER
        server = ManagedServer(proc, f"http://127.0.0.1:{port}", log, preset, api_key)
        progress(0.1)
        try:
            await self._wait_healthy(server, progress, cancel)
        except BaseException:
            await server.stop()
            raise
        self.server = server

    async def _wait_healthy(
        self, server: ManagedServer, progress: Callable[[float], None], cancel: threading.Event
    ) -> None:
        import aiohttp

        # llama-server answers /health 503 while loading; llama-cpp-python has no /health.
        probe = "/health" if server.preset == "llamacpp" else "/v1/models"
        deadline = time.monotonic() + self.start_timeout
        auth = {"Authorization": f"Bearer {server.api_key}"}
        async with aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=2), headers=auth
        ) as http:
            while True:
                if cancel.is_set():
                    raise LoadCancelled
                if server.proc.returncode is not None:
                    raise BackendError(
                        f"{self.kind} for model '{self.entry.name}' exited with "
                        f"{server.proc.returncode}: {server.tail(5)[-600:]}"
                    )
                with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                    async with http.get(server.url + probe) as resp:
                        if resp.status == 200:
                            break
                        progress(0.5)  # it answers: the model is loading
                if time.monotonic() > deadline:
                    raise BackendError(
                        f"{self.kind} for model '{self.entry.name}' was not ready within "
                        f"{self.start_timeout:g}s"
                    )
                await asyncio.sleep(0.1)
        await server.provider.start()

    async def unload(self) -> None:
        server, self.server = self.server, None
        if server is not None:
            await server.stop()

    def _live(self) -> ManagedServer:
        if self.server is None:
            raise BackendError(f"the server of model '{self.entry.name}' is not running")
        return self.server

    async def complete(self, call: Call) -> JSON:
        provider = self._live().provider
        await provider.acquire()  # llama-cpp-python's server: one request at a time
        try:
            return await provider.complete(call)
        finally:
            provider.release()

    async def stream(self, call: Call) -> AsyncGenerator[Chunk, None]:
        """The server's chunks; a usage chunk last, counted with the server's tokenizer when
        it reports none in streams (llama-cpp-python), as the in-process engine ends."""
        provider = self._live().provider
        await provider.acquire()
        try:
            pieces: list[str] = []
            usage = False
            async for chunk in provider.stream(call):
                usage = usage or bool(chunk.data.get("usage"))
                for choice in chunk.data.get("choices") or ():
                    delta = choice.get("delta")
                    text = delta.get("content") if isinstance(delta, dict) else choice.get("text")
                    pieces.append(text or "")
                yield chunk
            if not usage:
                yield Chunk(await self._usage(provider, call, "".join(pieces)))
        finally:
            provider.release()

    async def _usage(self, provider: Any, call: Call, completion: str) -> JSON:
        from .llama_wire import prompt_text

        # The chat template applied, as the server does; its count is without BOS (turnout counts
        # text that way), but the model read one before the prompt.
        prompt, has_bos, _ = prompt_text(self.entry, call)
        counts = []
        for text in (prompt, completion):
            counts.append((await provider.count_tokens(call.model, text) or 0) if text else 0)
        counts[0] += 0 if has_bos else 1
        chunks = ChunkMaker(call.kind, call.model, f"usage-{call.model}")
        return chunks.usage(usage_dict(counts[0], counts[1]))
