"""Downloads through huggingface_hub from a local server that serves files the way the Hub does
(tests/support/hub.py): metadata, cache, revisions, resuming a transfer cut off mid-way,
checksum verification, nothing left behind by a failure, the CLI and the HTTP API.

The Hub is reached through ``HF_ENDPOINT``, huggingface_hub's own setting.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import Iterator
from pathlib import Path

import gguf
import pytest
from typer.testing import CliRunner

from tests.support import client
from tests.support.hub import FakeHub, run_fake_hub
from tests.support.servers import run_gateway
from turnout import Gateway
from turnout.cli import app
from turnout.models.directory import scan
from turnout.models.download import DownloadError, DownloadProgress, download

CHUNK = 10 * 1024 * 1024  # huggingface_hub writes what it receives in blocks of this size


def tiny_gguf(path: Path, tokens: int, file_type: int) -> bytes:
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(2)
    writer.add_context_length(2048)
    writer.add_file_type(file_type)
    writer.add_token_list([f"token-{i}" for i in range(tokens)])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path.read_bytes()


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    folder = tmp_path_factory.mktemp("hub-files")
    return {
        "tiny-Q4_K_M.gguf": tiny_gguf(folder / "a.gguf", 20_000, gguf.LlamaFileType.MOSTLY_Q4_K_M),
        "tiny-Q8_0.gguf": tiny_gguf(folder / "b.gguf", 30_000, gguf.LlamaFileType.MOSTLY_Q8_0),
        "README.md": b"# tiny\n",
        "config.json": b'{"model_type": "llama"}',
    }


@pytest.fixture
def hub(
    files: dict[str, bytes], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> Iterator[FakeHub]:
    with run_fake_hub() as fake:
        fake.add("acme/tiny-GGUF", files)
        monkeypatch.setenv("HF_ENDPOINT", fake.url)
        monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
        monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "default-cache"))  # never ~/.cache
        yield fake


def fetch(tmp_path: Path, repo: str, file: str | None = None, **kw: object) -> DownloadProgress:
    return download(repo, file, models_dir=tmp_path / "models", cache_dir=tmp_path / "cache", **kw)  # type: ignore[arg-type]


def everything_in(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*")) if folder.exists() else []


def test_download_places_a_verified_model_and_reports_progress(
    hub: FakeHub, files: dict[str, bytes], tmp_path: Path
) -> None:
    seen: list[DownloadProgress] = []
    result = fetch(tmp_path, "acme/tiny-GGUF", "tiny-Q8_0.gguf", progress=lambda s: seen.append(
        DownloadProgress(**s.to_json())
    ))  # fmt: skip
    target = tmp_path / "models" / "tiny-Q8_0.gguf"
    assert result.state == "done" and result.path == str(target)
    assert target.read_bytes() == files["tiny-Q8_0.gguf"]
    assert result.verified and not result.cached
    assert result.commit == hub.repos["acme/tiny-GGUF"].revisions["main"]
    states = [s.state for s in seen]
    assert states[0] == "resolving" and states[-1] == "done"
    assert {"downloading", "verifying", "placing"} <= set(states)
    completed = [s.completed for s in seen if s.state == "downloading"]
    assert completed == sorted(completed) and completed[-1] == len(files["tiny-Q8_0.gguf"])
    (model,) = scan(tmp_path / "models")
    assert model.name == "tiny-Q8_0" and model.header.quantization == "Q8_0"
    assert everything_in(tmp_path / "models") == ["tiny-Q8_0.gguf"]


def test_a_second_download_comes_from_the_cache(hub: FakeHub, tmp_path: Path) -> None:
    fetch(tmp_path, "acme/tiny-GGUF", "tiny-Q8_0.gguf")
    transfers = len(hub.transfers())
    (tmp_path / "models" / "tiny-Q8_0.gguf").unlink()
    again = fetch(tmp_path, "acme/tiny-GGUF", "tiny-Q8_0.gguf")
    assert again.cached and again.verified
    assert len(hub.transfers()) == transfers, "the cached file was fetched again"
    assert (tmp_path / "models" / "tiny-Q8_0.gguf").is_file()


def test_without_a_file_name_the_preferred_quantization_is_chosen(
    hub: FakeHub, tmp_path: Path
) -> None:
    result = fetch(tmp_path, "acme/tiny-GGUF")
    assert result.file == "tiny-Q4_K_M.gguf"
    hub.add("acme/many", {"x-IQ2_XS.gguf": b"x" * 2000, "y-IQ3_M.gguf": b"y" * 2000})
    with pytest.raises(DownloadError, match=r"name the file to download.*x-IQ2_XS\.gguf"):
        fetch(tmp_path, "acme/many")


def test_a_revision_is_honoured(hub: FakeHub, files: dict[str, bytes], tmp_path: Path) -> None:
    old = b"GGUF" + b"\0" * 3000
    commit = hub.add("acme/tiny-GGUF", {"tiny-Q8_0.gguf": old}, revision="v1")
    result = fetch(tmp_path, "acme/tiny-GGUF", "tiny-Q8_0.gguf", revision="v1")
    assert result.commit == commit
    assert (tmp_path / "models" / "tiny-Q8_0.gguf").read_bytes() == old
    latest = fetch(tmp_path, "acme/tiny-GGUF", "tiny-Q8_0.gguf")
    assert latest.commit != commit
    assert (tmp_path / "models" / "tiny-Q8_0.gguf").read_bytes() == files["tiny-Q8_0.gguf"]


@pytest.mark.slow
async def test_an_interrupted_download_resumes_and_the_model_answers(
    hub: FakeHub, gemma_path: Path, tmp_path: Path
) -> None:
    """The real Gemma GGUF through the fake Hub, the connection dropped after 100 MB: the client
    asks again from the last byte it kept (a Range request), the sha256 matches, and the
    downloaded model is served by the embedded engine."""
    data = gemma_path.read_bytes()  # noqa: ASYNC240 - test set-up, before any request
    hub.add("google/gemma-3-270m-GGUF", {"gemma-3-270m-Q4_K_M.gguf": data})
    hub.cut_after(100_000_000)
    result = fetch(tmp_path, "google/gemma-3-270m-GGUF")
    transfers = hub.transfers()
    assert len(transfers) == 2, transfers
    assert transfers[0].range is None
    kept = (100_000_000 // CHUNK) * CHUNK  # the whole blocks written before the cut
    assert transfers[1].range == f"bytes={kept}-"
    target = tmp_path / "models" / "gemma-3-270m-Q4_K_M.gguf"
    assert result.verified and target.stat().st_size == len(data)
    assert hashlib.sha256(target.read_bytes()).digest() == hashlib.sha256(data).digest()
    config = {"providers": {"local": {"type": "embedded", "models_dir": str(target.parent)}}}
    async with Gateway(config, environ={}) as gw:
        reply = await gw.chat(
            "local/gemma-3-270m-Q4_K_M", [{"role": "user", "content": "Hi"}], max_tokens=4
        )
    assert reply["choices"][0]["message"]["content"] is not None


def test_a_failed_download_leaves_no_partial_model(hub: FakeHub, tmp_path: Path) -> None:
    hub.fail_transfers(500)
    with pytest.raises(DownloadError, match="failed"):
        fetch(tmp_path, "acme/tiny-GGUF", "tiny-Q8_0.gguf")
    assert everything_in(tmp_path / "models") == []
    blobs = tmp_path / "cache" / "models--acme--tiny-GGUF" / "blobs"
    assert [p for p in everything_in(blobs) if not p.endswith(".lock")] == []


def test_a_checksum_mismatch_is_refused_and_forgotten(
    hub: FakeHub, files: dict[str, bytes], tmp_path: Path
) -> None:
    hub.corrupt(files["tiny-Q8_0.gguf"])
    with pytest.raises(DownloadError, match=r"checksum mismatch.*sha256"):
        fetch(tmp_path, "acme/tiny-GGUF", "tiny-Q8_0.gguf")
    assert everything_in(tmp_path / "models") == []
    hub._corrupt.clear()
    good = fetch(tmp_path, "acme/tiny-GGUF", "tiny-Q8_0.gguf")
    assert good.verified and not good.cached  # fetched afresh, not the bad cached copy


def test_small_files_are_checked_by_git_blob_id(hub: FakeHub, tmp_path: Path) -> None:
    hub.add("acme/onnx", {"model.onnx": b"\x08\x07onnx"})
    result = fetch(tmp_path, "acme/onnx", "model.onnx")
    assert result.verified and (tmp_path / "models" / "model.onnx").read_bytes() == b"\x08\x07onnx"


@pytest.mark.parametrize(
    ("repo", "file", "message"),
    [
        ("acme/missing", None, "Repository Not Found"),
        ("acme/tiny-GGUF", "nope.gguf", "has no file 'nope.gguf'.*tiny-Q4_K_M.gguf"),
    ],
)
def test_unknown_repo_or_file(
    hub: FakeHub, tmp_path: Path, repo: str, file: str | None, message: str
) -> None:
    with pytest.raises(DownloadError, match=message):
        fetch(tmp_path, repo, file)
    assert everything_in(tmp_path / "models") == []


def test_cli_download(hub: FakeHub, tmp_path: Path) -> None:
    args = ["models", "download", "acme/tiny-GGUF", "tiny-Q8_0.gguf"]
    args += ["--dir", str(tmp_path / "m"), "--cache-dir", str(tmp_path / "c")]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "tiny-Q8_0.gguf" in result.stdout and "checksum verified" in result.stdout
    assert (tmp_path / "m" / "tiny-Q8_0.gguf").is_file()
    missing = CliRunner().invoke(app, ["models", "download", "acme/nope", "--dir", str(tmp_path)])
    assert missing.exit_code == 1 and "Repository Not Found" in missing.output


async def listed(url: str, model: str, within: float = 30.0) -> None:
    """Wait until ``GET /v1/models`` lists ``model`` (its refresh runs in the background)."""
    deadline = time.monotonic() + within
    while True:
        models = [m["id"] for m in (await client.get(url + "/v1/models")).json()["data"]]
        if model in models:
            return
        assert time.monotonic() < deadline, f"{model} not listed within {within}s: {models}"
        await asyncio.sleep(0.05)


async def test_http_download_streams_progress(
    hub: FakeHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    config = {"models_dir": str(tmp_path / "models"), "providers": {
        "local": {"type": "embedded", "models_dir": str(tmp_path / "models")}}}  # fmt: skip
    with run_gateway(config, environ={}) as url:
        body = {"repo": "acme/tiny-GGUF", "file": "tiny-Q8_0.gguf"}
        refused = await client.post(url + "/v1/local/downloads", body)
        assert refused.status == 403
        assert refused.json()["error"]["code"] == "pull_disabled"
        assert "LOCAL_LLM_ENABLE_PULL=true" in refused.json()["error"]["message"]
        monkeypatch.setenv("LOCAL_LLM_ENABLE_PULL", "true")
        reply = await client.post(url + "/v1/local/downloads", body)
        assert reply.status == 200
        assert reply.headers["Content-Type"].startswith("application/x-ndjson")
        lines = [json.loads(line) for line in reply.body.decode().splitlines()]
        assert lines[0]["status"] == "resolving" and lines[-1]["status"] == "success"
        assert lines[-1]["verified"] is True
        assert any(line["status"] == "downloading" for line in lines)
        jobs = (await client.get(url + "/v1/local/downloads")).json()["data"]
        assert jobs[-1]["state"] == "done" and jobs[-1]["file"] == "tiny-Q8_0.gguf"
        failed = await client.post(url + "/v1/local/downloads", {"repo": "acme/missing"})
        last = json.loads(failed.body.decode().splitlines()[-1])
        assert last["error"]["code"] == "download_failed"
        assert "Repository Not Found" in last["error"]["message"]
        bad = await client.post(url + "/v1/local/downloads", {"repo": 7})
        assert bad.status == 400 and bad.json()["error"]["param"] == "repo"
        # The gateway refreshes its model list in the background once a download is done: wait
        # for that refresh rather than race it.
        await listed(url, "local/tiny-Q8_0")
