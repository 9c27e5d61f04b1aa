"""Model management on the Ollama front (fronts/ollama.py), mapped to what the target can do:

    POST   /api/pull    {model}: into an Ollama backend (``provider/model`` picks it, else the
                        first); the name's registry must be in ``security.pull_registries``
    DELETE /api/delete  {model}: from an Ollama backend (the same choice)
    POST   /api/copy    {source, destination}: where ``source`` lives. On an Ollama backend, its
                        own /api/copy; in turnout's models directory, a second name for the file
                        (hard-linked, else copied; a name already taken is a 400). An empty 200.
    POST   /api/create  {model, from, ...}: on the Ollama backend ``from`` lives on (or, without
                        ``from``, the one ``model`` names, else the first), by its /api/create
                        with every field; in the models directory, ``from`` alone: the new name
                        for its file (a directory model has no Modelfile to keep ``system``,
                        ``template``, ``parameters``... so those are refused, 400 naming them)
    POST   /api/push    {model}: by the Ollama backend holding it, to the registry its name
                        names, which ``security.pull_registries`` must list (a name without a
                        host goes to registry.ollama.ai); the models directory cannot push (501)

Names are turnout's (``provider/model``, bare names, aliases: the catalog resolves them); a new
name (``destination``, create's ``model``) may carry the same ``provider/`` prefix and is given
to that backend without it. A model on any other backend (a cloud vendor, an OpenAI-compatible
runtime, one the configuration declares) is refused with 501 naming it and its provider. Every
route here changes what a backend holds: it needs the admin key (the pipeline's stage, for
routes marked ``admin``) and ``LOCAL_LLM_ENABLE_PULL=true``; no request names an upstream URL.

Progress (pull, create, push) is NDJSON as Ollama streams it unless ``stream: false`` (then one
``{"status": "success"}``); the first object is awaited before answering, so a refusal still gets
its status, and a failure after it is a last line ``{"error": "..."}``. Errors are Ollama's
``{"error": "..."}`` (`OLLAMA_ERRORS`, the routes' dialect).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from ...errors import GatewayError, InvalidRequestError, NotFoundError
from ...gateway import Gateway
from ...models.directory import copy_model
from ...providers.base import JSON, LocalModels, ModelStore, Provider
from ...wire import ollama as wire
from ...wire.screen import check_pull, pull_registry
from ..models import require_pull
from ..responses import json_response
from ..stream import read_json

__all__ = ["copy", "create", "delete", "ollama_backend", "pull", "push"]

#: what a create may set on the new model besides where it comes from (docs/api.md, "Create a
#: Model"): the models directory keeps files only, so it refuses each of these
_CREATE_SETS = (
    "files", "adapters", "quantize", "template", "license", "system", "parameters", "messages",
)  # fmt: skip
#: the registry a push name without a host goes to (Ollama's default)
_DEFAULT_REGISTRY = "registry.ollama.ai"
Done = Callable[[], Awaitable[None]]


def ollama_backend(gateway: Gateway, model: str | None) -> tuple[ModelStore, str | None]:
    """The Ollama backend a model-management request means: the one ``provider/...`` names,
    else the first configured; and the model name as that backend knows it."""
    found = {n: p for n, p in gateway.providers.items() if isinstance(p, ModelStore)}
    if not found:
        raise NotFoundError("No Ollama backend is configured on this gateway.")
    if model is not None:
        name, _, rest = model.partition("/")
        if rest and name in found:
            return found[name], rest
    return next(iter(found.values())), model


async def _begin(request: Request) -> tuple[Gateway, dict[str, Any]]:
    """The gateway and the request's JSON object, once LOCAL_LLM_ENABLE_PULL allows it (the
    admin key was checked before: the routes are marked admin)."""
    require_pull()
    gateway: Gateway = request.app.state.gateway
    raw = await read_json(request, gateway.config.server.max_body_bytes)
    if not isinstance(raw, dict):
        raise InvalidRequestError("The body must be a JSON object.", code="invalid_json")
    if not isinstance(raw.get("stream", True), bool):
        raise InvalidRequestError("stream must be true or false", param="stream")
    await gateway.start()
    return gateway, raw


def _name(raw: dict[str, Any], *keys: str) -> str:
    """The model name under the first of ``keys`` present (Ollama also takes ``name``)."""
    value = next((raw[k] for k in keys if raw.get(k) is not None), None)
    if not isinstance(value, str) or not value:
        raise InvalidRequestError(f"{keys[0]} is required: a model name", param=keys[0])
    return value


async def _managed(request: Request) -> tuple[ModelStore, str, dict[str, Any]]:
    gateway, raw = await _begin(request)
    provider, model = ollama_backend(gateway, _name(raw, "model", "name"))
    assert model is not None
    return provider, model, raw


async def pull(request: Request) -> Response:
    provider, model, raw = await _managed(request)
    registries = request.app.state.gateway.config.security.pull_registries
    check_pull(model, bool(raw.get("insecure")), registries)
    return await _relay(provider.pull(model), raw.get("stream", True), "pull")


async def delete(request: Request) -> Response:
    provider, model, _ = await _managed(request)
    await provider.delete(model)
    return Response(status_code=200)  # Ollama answers a delete with an empty 200


async def _place(gateway: Gateway, name: str) -> tuple[Provider, str]:
    """The provider holding ``name`` and the name it knows it by: an Ollama backend that a
    ``provider/`` prefix names (the backend itself says whether it has the model), else the
    catalog's first target that manages its models (an unknown name is a 404)."""
    prefix, slash, rest = name.partition("/")
    named = gateway.providers.get(prefix) if slash else None
    if isinstance(named, ModelStore):
        return named, rest
    targets = await gateway.catalog.resolve(name)
    chosen = next((t for t in targets if _manages(t.provider, t.model)), targets[0])
    return chosen.provider, chosen.model


def _manages(provider: Provider, model: str) -> bool:
    return isinstance(provider, ModelStore) or _folder(provider, model) is not None


def _folder(provider: Provider, model: str) -> str | None:
    """The models directory ``model`` is a file of, if ``provider`` serves it from there."""
    if not isinstance(provider, LocalModels):
        return None
    folder = provider.models_folder()
    if folder and any(f.model == model for f in provider.local_files()):
        return folder
    return None


def _same_backend(gateway: Gateway, provider: Provider, name: str, param: str) -> str:
    """A new name on ``provider``: without its ``provider/`` prefix; another provider's is a
    400 (a model is copied or made on the backend that holds its source)."""
    prefix, slash, rest = name.partition("/")
    if slash and prefix == provider.name:
        return rest
    if slash and prefix in gateway.providers:
        raise InvalidRequestError(
            f"{param} '{name}' names provider '{prefix}', but the model it comes from is on "
            f"'{provider.name}': a model is copied or created on the backend that holds it",
            param=param,
        )
    return name


def _cannot(provider: Provider, model: str, what: str) -> GatewayError:
    """A 501: the model's backend cannot do ``what`` through turnout, and what can."""
    why = (
        "serves it from turnout's configuration, not from the models directory"
        if isinstance(provider, LocalModels)
        else f"({provider.dialect}) has no model management turnout can reach"
    )
    return GatewayError(
        f"cannot {what} '{model}': its provider '{provider.name}' {why}; {what} works for "
        "models on an Ollama backend and in turnout's models directory",
        status=501,
        code="unsupported_provider",
    )


async def copy(request: Request) -> Response:
    gateway, raw = await _begin(request)
    source, destination = _name(raw, "source"), _name(raw, "destination")
    provider, model = await _place(gateway, source)
    target = _same_backend(gateway, provider, destination, "destination")
    if isinstance(provider, ModelStore):
        await provider.copy(model, target)
    elif (folder := _folder(provider, model)) is not None:
        await _copy_file(folder, model, target, "destination")
    else:
        raise _cannot(provider, source, "copy")
    await gateway.catalog.refresh()  # /api/tags lists the new name at once
    return Response(status_code=200)  # Ollama answers a copy with an empty 200


async def _copy_file(folder: str, model: str, name: str, param: str) -> None:
    try:
        await asyncio.to_thread(copy_model, folder, model, name)
    except FileNotFoundError:
        raise NotFoundError(f"model '{model}' not found in the models directory") from None
    except FileExistsError as exc:
        raise InvalidRequestError(
            f"{exc}: turnout's models directory does not replace a model; delete it first or "
            "choose another name",
            param=param,
            code="model_exists",
        ) from None
    except ValueError as exc:
        raise InvalidRequestError(str(exc), param=param) from None
    except OSError as exc:
        raise GatewayError(f"could not copy '{model}': {exc.strerror or exc}") from None


async def create(request: Request) -> Response:
    gateway, raw = await _begin(request)
    name = _name(raw, "model", "name")
    source = raw.get("from")
    if source is not None and (not isinstance(source, str) or not source):
        raise InvalidRequestError("from must be the name of an existing model", param="from")
    provider, model = await _place(gateway, source) if source else (_blobs_at(gateway, name), "")
    new = _same_backend(gateway, provider, name, "model")
    if isinstance(provider, ModelStore):
        if model:  # Ollama pulls a `from` it lacks: the registry must be one allowed
            check_pull(model, False, gateway.config.security.pull_registries)
        fields = {**{k: raw[k] for k in _CREATE_SETS if k in raw}, "from": model or None}
        progress = provider.create(new, fields)
        return await _relay(progress, raw.get("stream", True), "create", gateway.catalog.refresh)
    folder = _folder(provider, model)
    if folder is None:
        raise _cannot(provider, str(source), "create from")
    _directory_fields(raw, str(source))
    await _copy_file(folder, model, new, "model")
    await gateway.catalog.refresh()
    lines = [{"status": f"creating {new} from {model} in the models directory"},
             {"status": "success"}]  # fmt: skip
    return await _relay(_each(lines), raw.get("stream", True), "create")


def _blobs_at(gateway: Gateway, name: str) -> Provider:
    """Where a create without ``from`` builds (from blobs already on a backend): the Ollama
    backend ``name``'s prefix names, else the first."""
    stores: list[Provider] = [p for p in gateway.providers.values() if isinstance(p, ModelStore)]
    prefix, slash, _ = name.partition("/")
    named = gateway.providers.get(prefix) if slash else None
    if isinstance(named, ModelStore):
        return named
    if not stores:
        raise InvalidRequestError(
            "from is required: without it a model is built from blobs uploaded to an Ollama "
            "backend, and none is configured; turnout's models directory creates a model from "
            "an existing one ('from')",
            param="from",
        )
    return stores[0]


def _directory_fields(raw: dict[str, Any], source: str) -> None:
    """Refuse, naming it, a field a create in the models directory cannot keep."""
    for key in _CREATE_SETS:
        if raw.get(key) in (None, "", [], {}):
            continue
        hint = {
            "quantize": "quantize a GGUF with `turnout models quantize`",
            "files": "blobs are not uploaded through turnout",
            "adapters": "blobs are not uploaded through turnout",
        }.get(key, "send it with each request instead")
        raise InvalidRequestError(
            f"'{key}' cannot be set: '{source}' is a file of turnout's models directory, which "
            f"keeps model files only (no Modelfile); {hint}, or create the model on an Ollama "
            "backend",
            param=key,
            code="unsupported_field",
        )


async def _each(objects: list[JSON]) -> AsyncIterator[JSON]:
    for obj in objects:
        yield obj


async def push(request: Request) -> Response:
    gateway, raw = await _begin(request)
    name = _name(raw, "model", "name")
    provider, model = await _place(gateway, name)
    if isinstance(provider, ModelStore):
        _check_push(model, bool(raw.get("insecure")), gateway.config.security.pull_registries)
        return await _relay(provider.push(model), raw.get("stream", True), "push")
    if _folder(provider, model) is not None:
        raise GatewayError(
            f"cannot push '{name}': turnout's models directory cannot push to a registry "
            "(push works for models on an Ollama backend)",
            status=501,
            code="unsupported_provider",
        )
    raise _cannot(provider, name, "push")


def _check_push(model: str, insecure: bool, registries: list[str]) -> None:
    """A push uploads the weights to the registry its name names: one that
    ``security.pull_registries`` lists, over TLS."""
    if insecure:
        raise InvalidRequestError(
            "insecure pushes are not accepted: they skip the registry's TLS check",
            param="insecure",
        )
    registry = pull_registry(model) or _DEFAULT_REGISTRY
    if registry.lower() not in {r.lower() for r in registries}:
        raise InvalidRequestError(
            f"pushes to registry '{registry}' are not allowed (allowed: "
            f"{', '.join(registries) or 'none'}); set security.pull_registries to allow it",
            param="model",
        )


async def _relay(
    progress: AsyncIterator[JSON], stream: bool, verb: str, done: Done | None = None
) -> Response:
    """Progress as Ollama answers it: NDJSON as it comes, or the last ``status`` alone.
    ``done`` runs before ``success`` is told (the catalog refreshed, so the new model is
    listed by the time the client reads it)."""
    try:
        first = await anext(aiter(progress))
    except StopAsyncIteration:
        raise GatewayError(f"The backend sent no {verb} progress.", status=502) from None
    if stream is False:
        last = first
        async for obj in progress:
            last = obj
        if done is not None:
            await done()
        return json_response({"status": last.get("status", "success")})
    return StreamingResponse(_lines(first, progress, done), media_type="application/x-ndjson")


async def _lines(first: JSON, rest: AsyncIterator[JSON], done: Done | None) -> AsyncIterator[bytes]:
    obj = first
    try:
        while True:
            if obj.get("status") == "success" and done is not None:
                await done()
            yield orjson.dumps(obj) + b"\n"
            obj = await anext(aiter(rest))
    except StopAsyncIteration:
        return
    except GatewayError as exc:
        yield wire.error_line(exc)
    finally:  # a client gone mid-stream: the backend's request closed now, not when collected
        close = getattr(rest, "aclose", None)
        if close is not None:
            await close()
