"""Fixtures of the contract suite: llama.cpp's ``llama-server`` (its binary from the session
fixture ``llama_server_binary`` in tests/conftest.py) and a llama-cpp-python server with
embeddings on, both on the Gemma 3 270M GGUF. Every runtime of the registry
(tests/contract/runtimes.py) is up for the duration of a test."""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import pytest_asyncio

from tests.contract.runtimes import EMBEDDED, REGISTRY, Runtime, gateway_config
from tests.support.servers import free_port, run_llama_cpp_server, run_process
from turnout.gateway import Gateway


@contextlib.contextmanager
def run_llama_server(binary: Path, model: Path, *extra: str) -> Iterator[str]:
    """llama.cpp's llama-server on ``model``; yield its base URL."""
    port = free_port()
    cmd = [
        str(binary), "-m", str(model), "--alias", "gemma-3-270m",
        "--host", "127.0.0.1", "--port", str(port),
        "-c", "2048", "-np", "1", "-t", str(os.cpu_count() or 2),
        # the Gemma GGUF's own Jinja template does not parse in llama.cpp's engine
        "--no-jinja", "--chat-template", "gemma",
        *extra,
    ]  # fmt: skip
    with run_process(cmd, f"http://127.0.0.1:{port}/health"):
        yield f"http://127.0.0.1:{port}"


@pytest.fixture(scope="session")
def llamacpp_server(llama_server_binary: Path, gemma_path: Path) -> Iterator[str]:
    """One llama-server for chat, completions and embeddings (mean pooling)."""
    with run_llama_server(
        llama_server_binary, gemma_path, "--embeddings", "--pooling", "mean"
    ) as url:
        yield url


@pytest.fixture(scope="session")
def llama_cpp_python_server(gemma_path: Path) -> Iterator[str]:
    """llama-cpp-python's server with embeddings on (the shared ``llama_server`` has them off)."""
    with run_llama_cpp_server(gemma_path, "gemma-3-270m", "--embedding", "true") as url:
        yield url


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def contract_embedded_gateway() -> AsyncIterator[Gateway]:
    """One gateway on the embedded engine for every embedded case: the model loads once."""
    async with Gateway(gateway_config(EMBEDDED), environ={}) as gw:
        yield gw


@pytest.fixture
def runtime(request: pytest.FixtureRequest) -> Iterator[Runtime]:
    """The registered runtime ``request.param``, up for the test."""
    with REGISTRY[request.param].start(request) as made:
        yield made
