"""Fixtures of the contract suite: llama.cpp's ``llama-server`` (built once by
scripts/build_llama_server.sh and cached) and a llama-cpp-python server with embeddings on, both
on the Gemma 3 270M GGUF; every other runtime is a fake served per test."""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.contract.runtimes import REAL, Runtime, fake_runtime, real_runtime
from tests.support.servers import free_port, run_llama_cpp_server, run_process

ROOT = Path(__file__).resolve().parents[2]
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


@pytest.fixture
def runtime(request: pytest.FixtureRequest) -> Iterator[Runtime]:
    name: str = request.param
    if name in REAL:
        fixture = "llamacpp_server" if name == "llama-server" else "llama_cpp_python_server"
        yield real_runtime(name, request.getfixturevalue(fixture))
        return
    with fake_runtime(name) as made:
        yield made
