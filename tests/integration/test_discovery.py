"""Acceptance: ``turnout discover`` finds a real llama-cpp-python server started on its default
port (127.0.0.1:8000) and names it, with its model."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.servers import run_process

DEFAULT_PORT = 8000  # llama-cpp-python's documented default (runtimes.md §5)
TURNOUT = Path(sys.executable).with_name("turnout")


def _port_taken(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


@pytest.fixture(scope="module")
def server_on_8000(gemma_path: Path) -> Iterator[str]:
    if _port_taken(DEFAULT_PORT):
        pytest.fail(
            f"port {DEFAULT_PORT} on 127.0.0.1 is already in use, so llama-cpp-python's server "
            "cannot start on its default port for this test; stop whatever listens there "
            f"(e.g. `ss -ltnp 'sport = :{DEFAULT_PORT}'`) and run it again"
        )
    cmd = [
        sys.executable, "-m", "llama_cpp.server", "--model", str(gemma_path),
        "--model_alias", "gemma-3-270m", "--chat_format", "gemma", "--n_ctx", "512",
        "--host", "127.0.0.1",  # and no --port: the default is what is being found
    ]  # fmt: skip
    with run_process(cmd, f"http://127.0.0.1:{DEFAULT_PORT}/v1/models"):
        yield f"http://127.0.0.1:{DEFAULT_PORT}"


def _discover(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1"}
    return subprocess.run(
        [str(TURNOUT), "discover", *args], capture_output=True, text=True, env=env, timeout=120
    )


@pytest.mark.slow
def test_discover_finds_llama_cpp_python_on_its_default_port(server_on_8000: str) -> None:
    done = _discover()  # no host, no port: this machine, every preset's default port
    assert done.returncode == 0, done.stderr
    row = next(line for line in done.stdout.splitlines() if server_on_8000 in line)
    assert "llama-cpp-python server" in row
    assert "gemma-3-270m" in row


@pytest.mark.slow
def test_discover_json(server_on_8000: str) -> None:
    done = _discover("localhost", "--json")
    assert done.returncode == 0, done.stderr
    found = {item["endpoint"]: item for item in json.loads(done.stdout)}
    assert found[server_on_8000]["runtime"] == "llama-cpp-python"
    assert found[server_on_8000]["models"] == ["gemma-3-270m"]
