"""A fake Hugging Face Hub. The real Hub cannot be reached from here, so turnout's downloads are
tested against this stand-in, which serves files the way huggingface.co does for the calls
``huggingface_hub`` makes in ``HfApi.model_info`` and ``hf_hub_download`` (Hub API documentation,
"Hub API Endpoints", and huggingface_hub's ``file_download.py`` / ``utils/_http.py``):

- ``GET /api/models/{repo}`` and ``/api/models/{repo}/revision/{revision}`` answer the model's
  ``id``, ``sha`` (the commit) and ``siblings``; with ``?blobs=true`` each sibling has ``size``,
  ``blobId`` (git blob sha1) and, for LFS files, ``lfs: {size, sha256, pointerSize}``.
- ``HEAD``/``GET /{repo}/resolve/{revision}/{file}``: a small (non-LFS) file answers 200 with
  ``ETag`` = its git blob sha1, ``X-Repo-Commit`` and ``Content-Length``. An LFS file answers
  302 to the content server (another origin, as the Hub's CDN is) with ``X-Repo-Commit``,
  ``X-Linked-Etag`` = its sha256 and ``X-Linked-Size``.
- The content server answers ``GET /lfs/{sha256}`` with ``Accept-Ranges: bytes`` and honours
  ``Range: bytes=N-`` with 206 and ``Content-Range``.
- Errors carry the Hub's ``X-Error-Code``: ``RepoNotFound`` (401), ``RevisionNotFound`` (404),
  ``EntryNotFound`` (404, with ``X-Repo-Commit``), and a JSON ``{"error": ...}`` body.

Tests can cut the next transfers off after a number of bytes (`FakeHub.cut_after`), make them fail
with a status (`fail_transfers`) or serve altered bytes of the right size (`corrupt`). `requests`
records what was asked (method, path, Range header). `rate` (bytes a second) slows the content
server down, and `sent` counts the content bytes written to clients, so a test can act on a
client part-way through a transfer.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from tests.support.aioserver import serve_app

__all__ = ["FakeHub", "run_fake_hub"]

LFS_THRESHOLD = 1024  # files from this size on are stored with LFS, as a repo's .gitattributes says


def git_blob_id(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class Repo:
    revisions: dict[str, str] = field(default_factory=dict)  # branch or tag -> commit
    commits: dict[str, dict[str, bytes]] = field(default_factory=dict)  # commit -> files


@dataclass(frozen=True)
class Seen:
    method: str
    path: str
    range: str | None


class FakeHub:
    def __init__(self) -> None:
        self.repos: dict[str, Repo] = {}
        self.blobs: dict[str, bytes] = {}  # sha256 -> content, for the content server
        self.requests: list[Seen] = []
        self.url = ""
        self.cdn_url = ""
        self._cuts: list[int] = []
        self._failures: list[int] = []
        self._corrupt: set[str] = set()
        self.rate: float | None = None  # content bytes a second; None: as fast as it goes
        self.sent = 0  # content bytes written to clients so far

    def add(self, repo: str, files: dict[str, bytes], revision: str = "main") -> str:
        """Commit ``files`` to ``repo`` under ``revision``; returns the commit hash."""
        entry = self.repos.setdefault(repo, Repo())
        commit = hashlib.sha1(f"{repo}@{revision}@{sorted(files)}".encode()).hexdigest()
        entry.revisions[revision] = commit
        entry.commits[commit] = dict(files)
        for data in files.values():
            self.blobs[hashlib.sha256(data).hexdigest()] = data
        return commit

    def cut_after(self, size: int, times: int = 1) -> None:
        """The next ``times`` transfers stop after ``size`` bytes, the connection dropped."""
        self._cuts.extend([size] * times)

    def fail_transfers(self, status: int = 500, times: int = 1) -> None:
        self._failures.extend([status] * times)

    def corrupt(self, data: bytes) -> None:
        """Serve these contents with their last byte changed (same size, wrong checksum)."""
        self._corrupt.add(hashlib.sha256(data).hexdigest())

    def transfers(self) -> list[Seen]:
        return [r for r in self.requests if r.path.startswith("/lfs/")]

    # The Hub's API.

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._record])
        app.router.add_get("/api/models/{owner}/{name}", self._info)
        app.router.add_get("/api/models/{owner}/{name}/revision/{revision}", self._info)
        # add_get answers HEAD too, as the Hub does for /resolve
        app.router.add_get("/{owner}/{name}/resolve/{revision}/{file:.+}", self._resolve)
        app.router.add_get("/lfs/{sha256}", self._content)
        return app

    @web.middleware
    async def _record(self, request: web.Request, handler: Any) -> web.StreamResponse:
        self.requests.append(Seen(request.method, request.path, request.headers.get("Range")))
        response: web.StreamResponse = await handler(request)
        return response

    @staticmethod
    def _error(status: int, code: str, message: str, **headers: str) -> web.Response:
        return web.json_response(
            {"error": message}, status=status, headers={"X-Error-Code": code, **headers}
        )

    def _commit(self, request: web.Request) -> tuple[str, str, dict[str, bytes]] | web.Response:
        repo_id = f"{request.match_info['owner']}/{request.match_info['name']}"
        repo = self.repos.get(repo_id)
        if repo is None:
            return self._error(401, "RepoNotFound", "Repository not found")
        revision = request.match_info.get("revision", "main")
        commit = repo.revisions.get(revision, revision if revision in repo.commits else None)
        if commit is None:
            return self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
        return repo_id, commit, repo.commits[commit]

    async def _info(self, request: web.Request) -> web.Response:
        found = self._commit(request)
        if isinstance(found, web.Response):
            return found
        repo_id, commit, files = found
        blobs = request.query.get("blobs") in ("true", "True", "1")
        siblings: list[dict[str, Any]] = []
        for name, data in sorted(files.items()):
            sibling: dict[str, Any] = {"rfilename": name}
            if blobs:
                sibling.update(size=len(data), blobId=git_blob_id(data))
                if len(data) >= LFS_THRESHOLD:
                    sha = hashlib.sha256(data).hexdigest()
                    sibling["lfs"] = {"size": len(data), "sha256": sha, "pointerSize": 134}
            siblings.append(sibling)
        return web.json_response(
            {"_id": commit[:24], "id": repo_id, "modelId": repo_id, "sha": commit,
             "private": False, "tags": ["gguf"], "siblings": siblings}
        )  # fmt: skip

    async def _resolve(self, request: web.Request) -> web.StreamResponse:
        found = self._commit(request)
        if isinstance(found, web.Response):
            return found
        _, commit, files = found
        name = request.match_info["file"]
        if name not in files:
            return self._error(404, "EntryNotFound", "Entry not found", **{"X-Repo-Commit": commit})
        data = files[name]
        if len(data) >= LFS_THRESHOLD:
            sha = hashlib.sha256(data).hexdigest()
            headers = {
                "Location": f"{self.cdn_url}/lfs/{sha}",
                "X-Repo-Commit": commit,
                "X-Linked-Etag": f'"{sha}"',
                "X-Linked-Size": str(len(data)),
                "ETag": f'"{git_blob_id(data)}"',
            }
            return web.Response(status=302, headers=headers)
        headers = {"X-Repo-Commit": commit, "ETag": f'"{git_blob_id(data)}"'}
        if request.method == "HEAD":
            headers["Content-Length"] = str(len(data))
            return web.Response(status=200, headers=headers)
        return web.Response(status=200, body=data, headers=headers)

    async def _content(self, request: web.Request) -> web.StreamResponse:
        sha = request.match_info["sha256"]
        data = self.blobs.get(sha)
        if data is None:
            return web.Response(status=404, text="NoSuchKey")
        if self._failures:
            return web.Response(status=self._failures.pop(0), text="Internal Error")
        if sha in self._corrupt:
            data = data[:-1] + bytes([data[-1] ^ 0xFF])
        start = 0
        ranged = request.headers.get("Range", "")
        if ranged.startswith("bytes="):
            start = int(ranged[6:].split("-")[0])
        body = data[start:]
        headers = {"Accept-Ranges": "bytes", "ETag": f'"{sha}"', "Content-Length": str(len(body))}
        status = 200
        if start:
            status = 206
            headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
        response = web.StreamResponse(status=status, headers=headers)
        await response.prepare(request)
        if self._cuts:
            cut = self._cuts.pop(0)
            await response.write(body[:cut])
            await asyncio.sleep(0.05)  # let the bytes leave before the connection drops
            assert request.transport is not None
            request.transport.close()
            return response
        for i in range(0, len(body), 64 * 1024):
            await response.write(body[i : i + 64 * 1024])
            self.sent += len(body[i : i + 64 * 1024])
            if self.rate:
                await asyncio.sleep(64 * 1024 / self.rate)
        await response.write_eof()
        return response


@contextlib.contextmanager
def run_fake_hub() -> Iterator[FakeHub]:
    """Serve a `FakeHub` for the duration of the block; ``hub.url`` is its HF_ENDPOINT."""
    hub = FakeHub()
    # Two ports: the Hub and its content server (another origin, so the client sees a CDN).
    with serve_app(hub.app(), "Hub", ports=2) as (hub.url, hub.cdn_url):
        yield hub
