"""The local-models admin API: the models directory, what is loaded, load and unload.

    GET  /v1/local/models               models in models_dir with their metadata
    GET  /v1/local/ps                   loaded, loading (with progress) and queued models
    POST /v1/models/{model}/load        load now; body {"keep_alive": "10m"} optional
    POST /v1/models/{model}/unload      unload once its running requests are done
    POST /v1/local/downloads            {"repo", "file"?, "revision"?, "stream"?}: fetch from the
                                        Hub into models_dir; streams NDJSON progress (as Ollama's
                                        pull does) unless "stream": false
    GET  /v1/local/downloads            every download since start, with its progress

``{model}`` is addressed as on the OpenAI front (``provider/model``, a bare name, an alias).
Errors are OpenAI's ``{"error": {...}}``. A client that goes away while a load waits cancels it.
Downloads write to disk from the network, so they are refused unless ``LOCAL_LLM_ENABLE_PULL=true``
(the switch source document 003 sets for pulling models).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, TypeVar

import orjson
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from ..errors import GatewayError, InvalidRequestError
from ..gateway import Gateway
from ..models.download import DownloadError, DownloadProgress, download
from ..providers.base import LocalModels
from .admin import guarded
from .pipeline import Route
from .responses import error_response, json_response
from .stream import disconnected

__all__ = ["managed_providers", "pull_enabled", "read_body", "require_pull", "routes"]

T = TypeVar("T")


def managed_providers(gateway: Gateway) -> dict[str, LocalModels]:
    """The providers that load and unload models themselves (the embedded engine)."""
    return {n: p for n, p in gateway.providers.items() if isinstance(p, LocalModels)}


async def read_body(request: Request) -> dict[str, Any]:
    raw = await request.body()
    if not raw.strip():
        return {}
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequestError(
            f"The body is not valid JSON: {exc}.", code="invalid_json"
        ) from None
    if not isinstance(body, dict):
        raise InvalidRequestError("The body must be a JSON object.", code="invalid_json")
    return body


async def _target(gateway: Gateway, model: str) -> tuple[str, LocalModels, str]:
    """(provider name, provider, model) of the first target of ``model`` that manages loading."""
    await gateway.start()  # idempotent; the catalog is filled by it
    targets = await gateway.catalog.resolve(model)
    for target in targets:
        if isinstance(target.provider, LocalModels):
            return target.provider.name, target.provider, target.model
    names = ", ".join(t.provider.name for t in targets)
    raise InvalidRequestError(
        f"The model '{model}' is served by {names}, which loads models on its own; only the "
        "embedded engine's models are loaded and unloaded through turnout.",
        param="model",
        code="unsupported_provider",
    )


async def _until_gone(request: Request, work: asyncio.Future[T]) -> T | None:
    """The result of ``work``, or None (and ``work`` cancelled) if the client leaves first."""
    watch: asyncio.Future[Any] = asyncio.ensure_future(disconnected(request.receive))
    try:
        await asyncio.wait([work, watch], return_when=asyncio.FIRST_COMPLETED)
    finally:
        watch.cancel()
    if not work.done():
        work.cancel()
        with contextlib.suppress(BaseException):
            await work
        return None
    return work.result()


async def load(request: Request) -> Response:
    gateway: Gateway = request.app.state.gateway
    try:
        body = await read_body(request)
        name, provider, model = await _target(gateway, request.path_params["model"])
        seconds = await _until_gone(
            request, asyncio.ensure_future(provider.load_model(model, body.get("keep_alive")))
        )
    except GatewayError as exc:
        return error_response(exc)
    if seconds is None:
        return Response(status_code=499)
    return json_response(
        {"id": f"{name}/{model}", "object": "model.load", "state": "loaded",
         "load_seconds": round(seconds, 3)}
    )  # fmt: skip


async def unload(request: Request) -> Response:
    gateway: Gateway = request.app.state.gateway
    try:
        name, provider, model = await _target(gateway, request.path_params["model"])
        was_loaded = await provider.unload_model(model)
    except GatewayError as exc:
        return error_response(exc)
    state = "unloaded" if was_loaded else "not_loaded"
    return json_response({"id": f"{name}/{model}", "object": "model.unload", "state": state})


async def ps(request: Request) -> Response:
    gateway: Gateway = request.app.state.gateway
    data: list[dict[str, Any]] = []
    stats: dict[str, Any] = {}
    for name, provider in managed_providers(gateway).items():
        for entry in provider.status():
            data.append({"id": f"{name}/{entry['name']}", "provider": name, **entry})
        stats[name] = provider.load_stats()
    return json_response({"object": "list", "data": data, "stats": stats})


async def local_models(request: Request) -> Response:
    gateway: Gateway = request.app.state.gateway
    dirs = [gateway.config.models_dir]
    served: dict[Path, str] = {}  # file -> the provider/model id that serves it
    engines: dict[str, str] = {}  # provider/model id -> the engine that runs it
    for name, provider in managed_providers(gateway).items():
        folder = provider.models_folder()
        if folder:
            dirs.append(folder)
            for file in provider.local_files():
                served[file.path] = f"{name}/{file.model}"
                engines[served[file.path]] = file.engine
    data = await asyncio.to_thread(_listing, dirs, served)
    for item in data:
        item["engine"] = engines.get(item["served_as"])
    return json_response({"object": "list", "models_dir": gateway.config.models_dir, "data": data})


def _listing(dirs: list[str], served: dict[Path, str]) -> list[dict[str, Any]]:
    from ..models.directory import scan

    # Absolute, not resolved: two links to one file are two models.
    by_file = {path.absolute(): id for path, id in served.items()}
    data: list[dict[str, Any]] = []
    for folder in dict.fromkeys(Path(d).expanduser().absolute() for d in dirs):
        for model in scan(folder):
            item = model.to_json()
            item["models_dir"] = str(folder)
            item["served_as"] = by_file.get(model.path.absolute())
            data.append(item)
    return data


def pull_enabled() -> bool:
    return os.environ.get("LOCAL_LLM_ENABLE_PULL", "").strip().lower() in ("true", "1", "yes")


class PullDisabledError(GatewayError):
    status = 403
    type = "permission_error"
    code = "pull_disabled"


def require_pull() -> None:
    if not pull_enabled():
        raise PullDisabledError(
            "Downloading and deleting models is disabled on this gateway; start it with "
            "LOCAL_LLM_ENABLE_PULL=true to allow it."
        )


def _jobs(request: Request) -> list[DownloadProgress]:
    state = request.app.state
    if not hasattr(state, "turnout_downloads"):
        state.turnout_downloads = []
    jobs: list[DownloadProgress] = state.turnout_downloads
    return jobs


async def start_download(request: Request) -> Response | StreamingResponse:
    gateway: Gateway = request.app.state.gateway
    try:
        require_pull()
        body = await read_body(request)
        for key in ("repo", "file", "revision"):
            value = body.get(key)
            if (value is not None or key == "repo") and not (isinstance(value, str) and value):
                raise InvalidRequestError(f"'{key}' must be a non-empty string.", param=key)
    except GatewayError as exc:
        return error_response(exc)
    loop = asyncio.get_running_loop()
    updates: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    last: list[Any] = [0.0, None]  # when the last line went, and its state

    def progress(state: DownloadProgress) -> None:  # from the download thread
        now = time.monotonic()
        if state.state == last[1] and now - last[0] < 0.1:
            return  # at most ten progress lines a second within one state
        last[:] = [now, state.state]
        loop.call_soon_threadsafe(updates.put_nowait, state.to_json())

    work = asyncio.ensure_future(
        asyncio.to_thread(
            download, body["repo"], body.get("file"), models_dir=gateway.config.models_dir,
            revision=body.get("revision"), progress=progress,
        )
    )  # fmt: skip
    job = DownloadProgress(body["repo"], body.get("file"), body.get("revision"))
    _jobs(request).append(job)
    work.add_done_callback(lambda _: asyncio.ensure_future(gateway.catalog.refresh()))
    if body.get("stream", True) is False:
        try:
            result = await work
        except DownloadError as exc:
            job.state, job.error = "failed", str(exc)
            return error_response(GatewayError(str(exc), code="download_failed", status=502))
        _copy(job, result)
        return json_response({"status": "success", **result.to_json()})
    return StreamingResponse(_progress_lines(work, updates, job), media_type="application/x-ndjson")


def _copy(job: DownloadProgress, state: DownloadProgress) -> None:
    for key, value in state.to_json().items():
        setattr(job, key, value)


async def _progress_lines(
    work: asyncio.Future[DownloadProgress],
    updates: asyncio.Queue[dict[str, Any]],
    job: DownloadProgress,
) -> AsyncIterator[bytes]:
    """Ollama's pull framing: one JSON object a line, ``status`` first, ``success`` last."""
    while not (work.done() and updates.empty()):
        getter: asyncio.Future[Any] = asyncio.ensure_future(updates.get())
        waiting: list[asyncio.Future[Any]] = [getter, work]
        await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
        if not getter.done():
            getter.cancel()
            continue
        update = getter.result()
        _copy(job, DownloadProgress(**update))
        yield orjson.dumps({"status": update["state"], **update}) + b"\n"
    try:
        result = work.result()
    except DownloadError as exc:
        job.state, job.error = "failed", str(exc)
        error = GatewayError(str(exc), code="download_failed", status=502)
        yield orjson.dumps(error.to_openai()) + b"\n"
        return
    yield orjson.dumps({"status": "success", **result.to_json()}) + b"\n"


async def list_downloads(request: Request) -> Response:
    return json_response({"object": "list", "data": [j.to_json() for j in _jobs(request)]})


#: every route that changes state (downloads, load, unload) is marked admin
routes = guarded([
    Route("/v1/local/models", local_models),
    Route("/v1/local/ps", ps),
    Route("/v1/local/downloads", start_download, ("POST",)),
    Route("/v1/local/downloads", list_downloads),
    Route("/v1/models/{model:path}/load", load, ("POST",)),
    Route("/v1/models/{model:path}/unload", unload, ("POST",)),
])  # fmt: skip
