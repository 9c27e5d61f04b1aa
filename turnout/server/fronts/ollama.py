"""The Ollama API front, at the root as Ollama serves it, over every backend:

    GET/HEAD /              "Ollama is running" (also Claude Code's HEAD / probe)
    GET  /api/version       the Ollama API level served
    GET  /api/tags          every model turnout serves, as ``provider/model`` and by alias
    POST /api/show          details and ``capabilities`` (completion, tools, vision, embedding)
    GET  /api/ps            models in memory: the embedded engine's, and Ollama backends'
    POST /api/chat          NDJSON stream by default, ``stream: false`` for one object
    POST /api/generate      likewise; ``raw`` and ``suffix`` as text completions
    POST /api/embed         and the older /api/embeddings
    POST /api/pull          model management (fronts/ollama_models.py), with the admin key and
    DELETE /api/delete      LOCAL_LLM_ENABLE_PULL=true: pull and delete on an Ollama backend;
    POST /api/copy          copy and create where the model lives, an Ollama backend or the
    POST /api/create        models directory; push from an Ollama backend; any other backend
    POST /api/push          refused (501) in Ollama's error shape

Errors are Ollama's ``{"error": "..."}`` with the gateway's status; an error after a stream
began is a last line ``{"error": "..."}``. Translation: turnout/wire/ollama.py.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import time
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.types import ASGIApp

from ...errors import GatewayError, InvalidRequestError
from ...gateway import Gateway
from ...wire import ollama as wire
from ...wire.types import Kind, Native, Relayed
from ...wire.validate import validate_chat, validate_completion, validate_embedding
from ..models import managed_providers
from ..pipeline import Route
from ..responses import BytesResponse, json_response
from ..stream import PASSTHROUGH, ClientGone, Stream, read_json, while_connected
from .common import Framed, json_headers, stream_headers
from .ollama_errors import OLLAMA_ERRORS
from .ollama_models import copy, create, delete, ollama_backend, pull, push

__all__ = ["ollama_backend", "render_error", "routes"]

#: the Ollama API level this front implements (clients compare it to enable features)
API_VERSION = "0.14.0"
_NDJSON = stream_headers(b"application/x-ndjson")
_VALIDATE = {"chat": validate_chat, "completion": validate_completion}
_RELAYED = [PASSTHROUGH]


render_error = OLLAMA_ERRORS.response


async def _generate(request: Request, mode: wire.Mode) -> ASGIApp:
    gateway: Gateway = request.app.state.gateway
    timing = wire.Timing(time.perf_counter_ns())
    try:
        raw = await read_json(request, gateway.config.server.max_body_bytes)
        kind: Kind = "chat"
        if mode == "chat":
            body = wire.chat_to_internal(raw)
        else:
            kind, body = wire.generate_to_internal(raw)
        model = body["model"]
        if kind == "chat" and not body["messages"]:
            await gateway.catalog.resolve(model)  # an unknown model is still a 404
            return json_response(wire.load_reply(model, mode, raw.get("keep_alive") == 0))
        body = _VALIDATE[kind](body)
        native = Native(f"ollama/{mode}", raw)  # as it came, for an Ollama backend
        if body.get("stream"):
            # no keep-alive frame: an NDJSON reader takes every line for an object
            encoder = Framed(wire.ChatStream(model, timing, mode), _NDJSON, b"")
            return Stream(gateway, kind, body, encoder, OLLAMA_ERRORS, native)
        reply = await while_connected(request, gateway.complete(kind, body, native=native))
    except GatewayError as exc:
        return render_error(exc)
    except ClientGone:
        return Response(status_code=499)
    if isinstance(reply.body, Relayed):  # the backend's own Ollama reply: its bytes
        return BytesResponse(reply.body.raw, json_headers(reply.target.provider.name, _RELAYED))
    timing.end = time.perf_counter_ns()
    make = wire.chat_reply if mode == "chat" else wire.generate_reply
    start = json_headers(reply.target.provider.name, [])
    return BytesResponse(orjson.dumps(make(reply.body, model, timing)), start)


async def chat(request: Request) -> ASGIApp:
    return await _generate(request, "chat")


async def generate(request: Request) -> ASGIApp:
    return await _generate(request, "generate")


async def _embed(request: Request, legacy: bool) -> ASGIApp:
    gateway: Gateway = request.app.state.gateway
    timing = wire.Timing(time.perf_counter_ns())
    try:
        raw = await read_json(request, gateway.config.server.max_body_bytes)
        body = validate_embedding(wire.embed_to_internal(raw, legacy=legacy))
        reply = await while_connected(request, gateway.complete("embedding", body))
    except GatewayError as exc:
        return render_error(exc)
    except ClientGone:
        return Response(status_code=499)
    timing.end = time.perf_counter_ns()
    out = wire.embed_reply(reply.body, body["model"], timing, legacy=legacy)
    return BytesResponse(orjson.dumps(out), json_headers(reply.target.provider.name, []))


async def embed(request: Request) -> ASGIApp:
    return await _embed(request, legacy=False)


async def embeddings(request: Request) -> ASGIApp:
    return await _embed(request, legacy=True)


async def root(request: Request) -> Response:
    return PlainTextResponse("Ollama is running")


async def version(request: Request) -> Response:
    return json_response({"version": API_VERSION})


def _entry(name: str, meta: dict[str, Any], modified: float) -> dict[str, Any]:
    """One model as ``/api/tags`` lists it, from what its backend reported: Ollama's details,
    or the models directory's header (architecture, parameters, quantization, file size)."""
    details = {
        "parent_model": "",
        "format": str(meta.get("format") or "gguf"),
        "family": str(meta.get("family") or meta.get("architecture") or ""),
        "families": meta.get("families") or None,
        "parameter_size": str(meta.get("parameter_size") or meta.get("parameter_label") or ""),
        "quantization_level": str(meta.get("quantization_level") or meta.get("quantization") or ""),
    }
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(modified))
    digest = hashlib.sha256(name.encode()).hexdigest()
    size = meta.get("size")
    if not isinstance(size, int) and isinstance(meta.get("path"), str):
        with contextlib.suppress(OSError):
            size = os.stat(meta["path"]).st_size
    return {"name": name, "model": name, "modified_at": stamp,
            "size": size if isinstance(size, int) else 0, "digest": digest,
            "details": details}  # fmt: skip


async def tags(request: Request) -> Response:
    gateway: Gateway = request.app.state.gateway
    await gateway.start()
    out = []
    for model in await gateway.models():
        name, owner = str(model["id"]), str(model.get("owned_by") or "")
        meta = gateway.catalog.meta(owner, name.removeprefix(owner + "/"))
        created = model.get("created")
        out.append(_entry(name, meta, float(created) if isinstance(created, int) else time.time()))
    return json_response({"models": out})


async def show(request: Request) -> Response:
    gateway: Gateway = request.app.state.gateway
    try:
        raw = await read_json(request, gateway.config.server.max_body_bytes)
        name = raw.get("model") or raw.get("name") if isinstance(raw, dict) else None
        if not isinstance(name, str) or not name:
            raise InvalidRequestError("model is required", param="model")
        await gateway.start()
        target = (await gateway.catalog.resolve(name))[0]
    except GatewayError as exc:
        return render_error(exc)
    caps = target.provider.capabilities(target.model)
    capabilities = [c for c, ok in (("completion", caps.chat or caps.completion),
                    ("tools", caps.tools), ("vision", caps.vision),
                    ("embedding", caps.embeddings and not caps.chat)) if ok]  # fmt: skip
    info: dict[str, Any] = {"general.architecture": "", "general.name": target.model}
    if caps.context_length:
        info["general.context_length"] = caps.context_length
    entry = _entry(name, {}, time.time())
    return json_response(
        {"modelfile": f"FROM {target.address}\n", "parameters": "", "template": "",
         "details": entry["details"], "model_info": info, "capabilities": capabilities,
         "modified_at": entry["modified_at"]}
    )  # fmt: skip


async def ps(request: Request) -> Response:
    gateway: Gateway = request.app.state.gateway
    out = []
    for name, provider in managed_providers(gateway).items():
        for loaded in provider.status():
            if loaded.get("state") != "loaded":
                continue
            entry = _entry(f"{name}/{loaded['name']}", {}, loaded.get("loaded_at") or time.time())
            expires = loaded.get("expires_at")
            entry["expires_at"] = time.strftime(
                "%Y-%m-%dT%H:%M:%SZ", time.gmtime(expires if isinstance(expires, float) else 2**31)
            )
            entry["size"] = entry["size_vram"] = int(loaded.get("estimate_bytes") or 0)
            out.append(entry)
    return json_response({"models": out})


def _route(
    path: str, endpoint: Any, *methods: str, admin: bool = False, inference: bool = False
) -> Route:
    methods = methods or ("GET",)
    return Route(path, endpoint, methods, admin=admin, errors=OLLAMA_ERRORS, inference=inference)


routes = [
    _route("/", root),
    _route("/api/version", version),
    _route("/api/tags", tags),
    _route("/api/ps", ps),
    _route("/api/show", show, "POST"),
    _route("/api/chat", chat, "POST", inference=True),
    _route("/api/generate", generate, "POST", inference=True),
    _route("/api/embed", embed, "POST", inference=True),
    _route("/api/embeddings", embeddings, "POST", inference=True),
    _route("/api/pull", pull, "POST", admin=True),
    _route("/api/delete", delete, "DELETE", admin=True),
    _route("/api/push", push, "POST", admin=True),
    _route("/api/copy", copy, "POST", admin=True),
    _route("/api/create", create, "POST", admin=True),
]
