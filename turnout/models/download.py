"""Model downloads from the Hugging Face Hub (or any server speaking its API) into models_dir.

The transfer goes through huggingface_hub: its cache (a file already there is not fetched
again), revisions (branch, tag or commit), ETag checks, and resumption of a transfer cut off
mid-way (``http_get`` asks again from the byte it reached with a ``Range`` request). On top of it
turnout verifies the file's checksum against what the Hub's file listing declares (the LFS
sha256, or the git blob id of a small file), then places it in models_dir under a hidden name and
renames it, so a download that fails or does not verify leaves no model file behind.

A download whose process was killed resumes too. huggingface_hub 2.x writes each transfer to a
file named for that one process (``<etag>.<random>.incomplete``) and deletes it when the call
fails, so a killed process leaves an orphan no later call reads, and the next download starts
from byte 0. turnout therefore fetches a blob itself into the cache, under the stable name
``blobs/<etag>.incomplete`` (huggingface_hub 0.x's resumable name), with huggingface_hub's
``http_get`` and its cache lock; a later download appends from the bytes on disk with a
``Range`` request, then moves the blob into place, and ``hf_hub_download`` only links it into
the snapshot. A partial with bytes in it is kept when a transfer fails, so a retry resumes; the
etag in its name (the file's sha256 for LFS files) ties it to one content. Xet-stored files
are left to huggingface_hub, whose Xet client keeps its own chunk cache.

The Hub's address is huggingface_hub's own setting, ``HF_ENDPOINT``, read at each download (tests
point it at a local server), like its cache (``HF_HUB_CACHE``, ``HF_HOME``); a token comes from
``HF_TOKEN`` or ``huggingface-cli login``.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["DownloadError", "DownloadProgress", "download", "pick_file"]

#: GGUF quantizations tried in this order when a repository holds several and none is named
#: (source document 001's quantizationPreference, extended)
PREFERRED = ("Q4_K_M", "Q4_K_S", "Q5_K_M", "Q8_0", "Q6_K", "Q4_0", "F16", "BF16")
_MODEL_SUFFIXES = (".gguf", ".safetensors", ".onnx")


class DownloadError(Exception):
    """A download that cannot go on, with a message for the user."""


@dataclass(slots=True)
class DownloadProgress:
    repo: str
    file: str | None = None
    revision: str | None = None
    state: str = "resolving"  # resolving | downloading | verifying | placing | done | failed
    total: int | None = None
    completed: int = 0
    commit: str | None = None
    path: str | None = None
    error: str | None = None
    cached: bool = False
    verified: bool = False  # checked against a checksum the Hub listed
    started: float = field(default_factory=time.time)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def pick_file(repo: str, files: list[str]) -> str:
    """The model file to fetch from a repository when none is named: its only model file, or
    the GGUF of the preferred quantization."""
    models = [f for f in files if f.lower().endswith(_MODEL_SUFFIXES)]
    ggufs = [f for f in models if f.lower().endswith(".gguf") and "mmproj" not in f.lower()]
    if len(models) == 1:
        return models[0]
    for quant in PREFERRED:
        for name in ggufs:
            if quant.lower() in Path(name).name.lower():
                return name
    if len(ggufs) == 1:
        return ggufs[0]
    listing = ", ".join(models) or "none"
    raise DownloadError(f"{repo}: name the file to download (model files there: {listing})")


def download(
    repo: str,
    file: str | None = None,
    *,
    models_dir: str | Path,
    revision: str | None = None,
    cache_dir: str | Path | None = None,
    endpoint: str | None = None,
    token: str | None = None,
    progress: Callable[[DownloadProgress], None] | None = None,
) -> DownloadProgress:
    """Fetch ``file`` of ``repo`` (blocking: run it in a thread) into ``models_dir``."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import (
        EntryNotFoundError,
        HfHubHTTPError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    # huggingface_hub reads its settings once, at import: read them at each download instead.
    endpoint = endpoint or os.environ.get("HF_ENDPOINT") or None
    if cache_dir is None and os.environ.get("HF_HUB_CACHE"):
        cache_dir = os.environ["HF_HUB_CACHE"]
    elif cache_dir is None and os.environ.get("HF_HOME"):
        cache_dir = Path(os.environ["HF_HOME"]) / "hub"
    state = DownloadProgress(repo, file, revision)

    def report(**changes: Any) -> None:
        for key, value in changes.items():
            setattr(state, key, value)
        if progress is not None:
            progress(state)

    report()
    try:
        info = HfApi(endpoint=endpoint, token=token).model_info(
            repo, revision=revision, files_metadata=True
        )
        siblings = {s.rfilename: s for s in info.siblings or ()}
        name = file or pick_file(repo, list(siblings))
        if name not in siblings:
            raise DownloadError(
                f"{repo} has no file {name!r} at revision {revision or 'main'} (model files: "
                f"{', '.join(f for f in siblings if f.endswith(_MODEL_SUFFIXES)) or 'none'})"
            )
        sibling = siblings[name]
        report(file=name, commit=info.sha, total=sibling.size)
        target = Path(models_dir).expanduser() / Path(name).name
        cached = _fetch(repo, name, info.sha or revision, cache_dir, endpoint, token, report)
        report(state="verifying")
        report(verified=_verify(cached, sibling))
        report(state="placing")
        _place(cached, target)
    except DownloadError as exc:
        report(state="failed", error=str(exc))
        raise
    except RepositoryNotFoundError:
        where = endpoint or "https://huggingface.co"
        message = (
            f"Repository Not Found: {repo} at {where} (a private or gated repository needs "
            "HF_TOKEN)"
        )
        report(state="failed", error=message)
        raise DownloadError(message) from None
    except RevisionNotFoundError:
        message = f"{repo} has no revision {revision!r}"
        report(state="failed", error=message)
        raise DownloadError(message) from None
    except EntryNotFoundError:
        message = f"{repo} has no file {state.file!r} at revision {revision or 'main'}"
        report(state="failed", error=message)
        raise DownloadError(message) from None
    except (HfHubHTTPError, OSError) as exc:
        message = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        report(state="failed", error=message)
        raise DownloadError(f"download of {repo}/{file or '?'} failed: {message}") from None
    report(state="done", path=str(target), completed=target.stat().st_size)
    return state


def _fetch(
    repo: str,
    name: str,
    revision: str | None,
    cache_dir: str | Path | None,
    endpoint: str | None,
    token: str | None,
    report: Callable[..., None],
) -> Path:
    """The file in huggingface_hub's cache, downloaded (or resumed) if it is not there yet."""
    from huggingface_hub import hf_hub_download

    fetched: list[bool] = []  # huggingface_hub opens a bar only when it transfers bytes

    class Bar:
        """What huggingface_hub needs of a progress bar, turned into progress reports."""

        def __init__(self, **kwargs: Any) -> None:
            fetched.append(True)
            self.n = int(kwargs.get("initial") or 0)
            report(state="downloading", total=kwargs.get("total"), completed=self.n)

        def __enter__(self) -> Bar:
            return self

        def __exit__(self, *exc: object) -> None:
            return None

        def update(self, n: float | None = 1) -> None:
            self.n += int(n or 0)
            report(completed=self.n)

        def close(self) -> None:
            return None

    _resume_into_cache(repo, name, revision, cache_dir, endpoint, token, Bar)
    path = hf_hub_download(
        repo,
        name,
        revision=revision,
        cache_dir=str(cache_dir) if cache_dir else None,
        endpoint=endpoint,
        token=token,
        tqdm_class=Bar,
    )
    report(cached=not fetched)
    return Path(path)


def _resume_into_cache(
    repo: str,
    name: str,
    revision: str | None,
    cache_dir: str | Path | None,
    endpoint: str | None,
    token: str | None,
    bar: type[Any],
) -> None:
    """Put ``name``'s blob in huggingface_hub's cache, continuing from the bytes a previous
    (perhaps killed) transfer left in ``blobs/<etag>.incomplete``; nothing if it is there."""
    from urllib.parse import urlsplit

    from huggingface_hub import constants, get_hf_file_metadata, hf_hub_url
    from huggingface_hub.file_download import http_get, repo_folder_name

    # Public in huggingface_hub.utils, whose lazy __init__ hides them from mypy: same objects.
    from huggingface_hub.utils._fixes import WeakFileLock
    from huggingface_hub.utils._headers import build_hf_headers

    url = hf_hub_url(repo, name, revision=revision, endpoint=endpoint)
    meta = get_hf_file_metadata(url, token=token, endpoint=endpoint)
    if meta.etag is None or meta.commit_hash is None or meta.xet_file_data is not None:
        return  # hf_hub_download explains a server that is not a Hub; Xet is its own
    cache = Path(cache_dir) if cache_dir else Path(constants.HF_HUB_CACHE)
    folder = repo_folder_name(repo_id=repo, repo_type="model")
    blob = cache / folder / "blobs" / meta.etag
    if blob.exists():
        return
    partial = blob.with_name(f"{blob.name}.incomplete")
    lock = cache / ".locks" / folder / f"{meta.etag}.lock"  # the lock hf_hub_download takes
    lock.parent.mkdir(parents=True, exist_ok=True)
    blob.parent.mkdir(parents=True, exist_ok=True)
    headers = build_hf_headers(token=token)
    if urlsplit(meta.location).netloc != urlsplit(url).netloc:
        headers.pop("authorization", None)  # a CDN's signed address takes no Hub token
    with WeakFileLock(str(lock)):
        if blob.exists():  # another process finished it while this one waited
            return
        kept = partial.stat().st_size if partial.exists() else 0
        if meta.size is not None and kept > meta.size:
            partial.unlink()  # not a prefix of this file: start again
            kept = 0
        try:
            with partial.open("ab") as f:
                http_get(
                    meta.location, f, resume_size=kept, headers=headers,
                    expected_size=meta.size, displayed_filename=name, tqdm_class=bar,
                )  # fmt: skip
        except BaseException:
            if partial.exists() and partial.stat().st_size == 0:
                partial.unlink()  # nothing to resume from
            raise
        os.replace(partial, blob)


def _verify(path: Path, sibling: Any) -> bool:
    """The file's sha256 against the Hub's LFS record, or its git blob id for a small file. A
    mismatch removes the cached copy, so the next attempt fetches it afresh."""
    lfs = getattr(sibling, "lfs", None)
    if lfs is not None and getattr(lfs, "sha256", None):
        expected, actual = lfs.sha256, _digest(path, hashlib.sha256())
        kind = "sha256"
    elif getattr(sibling, "blob_id", None):
        size = path.stat().st_size
        expected, actual = sibling.blob_id, _digest(path, hashlib.sha1(f"blob {size}\0".encode()))
        kind = "git blob id"
    else:
        return False  # no checksum listed: huggingface_hub's size check is all there is
    if actual != expected:
        real = path.resolve()
        path.unlink(missing_ok=True)
        real.unlink(missing_ok=True)
        raise DownloadError(
            f"checksum mismatch for {path.name}: {kind} {actual} but the Hub lists {expected}; "
            "the cached copy was removed, run the download again"
        )
    return True


def _digest(path: Path, hasher: Any) -> str:
    with path.open("rb") as f:
        while block := f.read(4 * 1024 * 1024):
            hasher.update(block)
    return str(hasher.hexdigest())


def _place(source: Path, target: Path) -> None:
    """Put the verified file at ``target`` all at once: a hard link to the cached copy when the
    two share a file system (no second copy on disk), else a copy under a hidden name, renamed."""
    target.parent.mkdir(parents=True, exist_ok=True)
    hidden = target.with_name(f".{target.name}.partial")
    hidden.unlink(missing_ok=True)
    try:
        try:
            os.link(source.resolve(), hidden)
        except OSError:
            shutil.copyfile(source, hidden)
        os.replace(hidden, target)
    finally:
        hidden.unlink(missing_ok=True)
