"""What turnout does with a partial blob found in huggingface_hub's cache
(``blobs/<etag>.incomplete``, what a killed download leaves): it resumes from it, a failed transfer
keeps what it received, and bytes that are not the file's are caught by the checksum and
forgotten. In process, against the Hub stand-in (tests/support/hub.py); the subprocess that is
really killed is in test_models_download_killed.py.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.hub import FakeHub, run_fake_hub
from turnout.models.download import DownloadError, download

REPO, FILE = "acme/big-GGUF", "big-Q4_K_M.gguf"
MiB = 1024 * 1024
DATA = b"GGUF" + os.urandom(25 * MiB)
SHA = hashlib.sha256(DATA).hexdigest()


@pytest.fixture
def hub(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[FakeHub]:
    with run_fake_hub() as fake:
        fake.add(REPO, {FILE: DATA})
        monkeypatch.setenv("HF_ENDPOINT", fake.url)
        monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
        yield fake


def blobs(tmp_path: Path) -> Path:
    return tmp_path / "cache" / "models--acme--big-GGUF" / "blobs"


def fetch(tmp_path: Path) -> None:
    download(REPO, FILE, models_dir=tmp_path / "models", cache_dir=tmp_path / "cache")


def leave_partial(tmp_path: Path, content: bytes) -> Path:
    blobs(tmp_path).mkdir(parents=True)
    partial = blobs(tmp_path) / f"{SHA}.incomplete"
    partial.write_bytes(content)
    return partial


def test_a_partial_in_the_cache_is_resumed(hub: FakeHub, tmp_path: Path) -> None:
    leave_partial(tmp_path, DATA[: 12 * MiB])
    fetch(tmp_path)
    (transfer,) = hub.transfers()
    assert transfer.range == f"bytes={12 * MiB}-"
    assert (tmp_path / "models" / FILE).read_bytes() == DATA
    assert sorted(p.name for p in blobs(tmp_path).iterdir()) == [SHA]


def test_a_failed_transfer_keeps_its_bytes_for_the_next_run(hub: FakeHub, tmp_path: Path) -> None:
    hub.fail_transfers(503)  # a status http_get does not retry: the call fails
    leave_partial(tmp_path, DATA[: 10 * MiB])
    with pytest.raises(DownloadError):
        fetch(tmp_path)
    assert (blobs(tmp_path) / f"{SHA}.incomplete").stat().st_size == 10 * MiB
    assert not (tmp_path / "models").exists() or not list((tmp_path / "models").iterdir())
    fetch(tmp_path)
    assert hub.transfers()[-1].range == f"bytes={10 * MiB}-"
    assert (tmp_path / "models" / FILE).read_bytes() == DATA


def test_a_partial_that_is_not_the_files_bytes_is_caught_and_forgotten(
    hub: FakeHub, tmp_path: Path
) -> None:
    leave_partial(tmp_path, b"\0" * (10 * MiB))
    with pytest.raises(DownloadError, match="checksum mismatch"):
        fetch(tmp_path)
    assert [p.name for p in blobs(tmp_path).iterdir()] == []
    fetch(tmp_path)
    assert hub.transfers()[-1].range is None  # started afresh
    assert (tmp_path / "models" / FILE).read_bytes() == DATA


def test_a_partial_longer_than_the_file_is_discarded(hub: FakeHub, tmp_path: Path) -> None:
    leave_partial(tmp_path, DATA + b"tail")
    fetch(tmp_path)
    assert hub.transfers()[-1].range is None
    assert (tmp_path / "models" / FILE).read_bytes() == DATA
