"""A download whose process is killed resumes: ``turnout models download`` runs in a subprocess
against the Hub stand-in (tests/support/hub.py) serving the real Gemma GGUF slowly, is SIGKILLed
part-way, and the next run asks only for the bytes it does not have (``Range: bytes=K-``, K the
size of the partial left in the cache), ends with the right sha256, and at no time puts anything
partial in the models directory.

A killed process cannot clean up; huggingface_hub 2.x would leave its partial under a name no
later call reads and start again from byte 0 (turnout/models/download.py explains what turnout
does instead).
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.hub import FakeHub, run_fake_hub

pytestmark = pytest.mark.slow

REPO, FILE = "google/gemma-3-270m-GGUF", "gemma-3-270m-Q4_K_M.gguf"
CHUNK = 10 * 1024 * 1024  # huggingface_hub writes what it receives in blocks of this size
KILL_AFTER = 45 * 1024 * 1024  # content bytes the stand-in has sent when the CLI is killed


@pytest.fixture
def hub(gemma_path: Path) -> Iterator[tuple[FakeHub, bytes]]:
    data = gemma_path.read_bytes()
    with run_fake_hub() as fake:
        fake.add(REPO, {FILE: data})
        yield fake, data


def start(hub: FakeHub, tmp_path: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "HF_ENDPOINT": hub.url, "HF_HUB_DISABLE_TELEMETRY": "1",
           "HF_HUB_CACHE": str(tmp_path / "default-cache")}  # fmt: skip
    cmd = [sys.executable, "-m", "turnout", "models", "download", REPO, FILE,
           "--dir", str(tmp_path / "models"), "--cache-dir", str(tmp_path / "cache")]  # fmt: skip
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def watch(proc: subprocess.Popen[bytes], models: Path, until: object = None) -> set[str]:
    """Every name seen in the models directory while ``proc`` runs (or until ``until()``)."""
    seen: set[str] = set()
    deadline = time.monotonic() + 180
    while proc.poll() is None and not (callable(until) and until()):
        assert time.monotonic() < deadline, "the download did not progress within 180s"
        seen.update(p.name for p in models.iterdir()) if models.exists() else None
        time.sleep(0.01)
    return seen


def test_a_killed_download_resumes_from_the_bytes_on_disk(
    hub: tuple[FakeHub, bytes], tmp_path: Path
) -> None:
    fake, data = hub
    models = tmp_path / "models"
    blobs = tmp_path / "cache" / "models--google--gemma-3-270m-GGUF" / "blobs"
    fake.rate = 40 * 1024 * 1024  # bytes a second: the 253 MB file would take about 6 s

    first = start(fake, tmp_path)
    seen = watch(first, models, until=lambda: fake.sent >= KILL_AFTER)
    assert first.poll() is None, first.communicate()[0].decode()[-2000:]
    first.send_signal(signal.SIGKILL)
    first.wait(10)
    assert first.returncode == -signal.SIGKILL
    seen |= set(os.listdir(models)) if models.exists() else set()
    assert seen == set(), f"the killed download put {seen} in the models directory"

    partials = [p for p in blobs.iterdir() if p.name.endswith(".incomplete")]
    assert [p.name for p in partials] == [f"{hashlib.sha256(data).hexdigest()}.incomplete"]
    kept = partials[0].stat().st_size
    assert kept > 0 and kept % CHUNK == 0, kept  # whole blocks, as huggingface_hub writes them
    assert data[:kept] == partials[0].read_bytes()

    fake.rate = None
    transfers_before = len(fake.transfers())
    second = start(fake, tmp_path)
    seen = watch(second, models)
    output = second.communicate(timeout=120)[0].decode()
    assert second.returncode == 0, output[-2000:]
    assert "checksum verified" in output, output[-2000:]
    assert seen <= {FILE}, f"partial files in the models directory: {seen}"

    (resumed,) = fake.transfers()[transfers_before:]
    assert resumed.range == f"bytes={kept}-"
    target = models / FILE
    assert target.stat().st_size == len(data)
    assert hashlib.sha256(target.read_bytes()).digest() == hashlib.sha256(data).digest()
    assert sorted(os.listdir(models)) == [FILE]
    assert not [p for p in blobs.iterdir() if p.name.endswith(".incomplete")]
