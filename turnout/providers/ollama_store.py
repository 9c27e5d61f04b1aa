"""Ollama's model management API, as the gateway relays it (`ModelStore`, providers/base.py):
the models installed (``/api/tags``), one model's details (``/api/show``), those loaded
(``/api/ps``), the version, and what changes what the server holds: ``/api/pull``,
``/api/delete``, ``/api/copy``, ``/api/create`` and ``/api/push``.

The shapes are Ollama's own (ollama/ollama docs/api.md): a copy or a delete answers an empty 200
(404 for an unknown model); a pull, a create and a push stream NDJSON progress objects
(``status``, and per layer ``digest``, ``total``, ``completed``) ending with
``{"status": "success"}``, and a failure after the 200 is a line ``{"error": "..."}``. These
requests ask for the stream always (``"stream": true``), so progress is relayed as it comes;
the gateway's front gives a client that asked for one object only the last.

`OllamaStore` also holds what the inference side (`OllamaProvider`, turnout/providers/ollama.py)
shares with it: reading NDJSON lines and checking that a reply is an object.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator
from typing import Any

import aiohttp
import orjson

from ..errors import (
    BackendError,
    BackendProtocolError,
    BackendUnavailableError,
    clean_upstream_message,
)
from ..wire.ndjson import NDJSONDecoder
from .base import JSON
from .http import HttpProvider

__all__ = ["CREATE_FIELDS", "OllamaStore"]

#: the fields of ``POST /api/create`` besides ``model`` and ``stream`` (docs/api.md, "Create a
#: Model"): what to build from, and what to set on the new model
CREATE_FIELDS = (
    "from", "files", "adapters", "quantize", "template", "license", "system", "parameters",
    "messages",
)  # fmt: skip


class OllamaStore(HttpProvider):
    """The model endpoints of a server speaking Ollama's native API."""

    @staticmethod
    async def _lines(resp: aiohttp.ClientResponse) -> AsyncGenerator[bytes, None]:
        decoder = NDJSONDecoder()
        async for block in resp.content.iter_any():
            for line in decoder.feed(block):
                yield line
        for line in decoder.close():
            yield line

    def _object(self, obj: Any, path: str) -> JSON:
        if not isinstance(obj, dict):
            raise BackendProtocolError(
                f"backend '{self.name}' answered {path} with something other than a JSON "
                f"object: {str(obj)[:120]!r}",
                backend=self.name,
            )
        return obj

    def _field(self, obj: Any, key: str, kind: type, path: str) -> Any:
        value = obj.get(key) if isinstance(obj, dict) else None
        if not isinstance(value, kind):
            raise BackendProtocolError(
                f"backend '{self.name}' answered {path} without a '{key}' {kind.__name__}",
                backend=self.name,
            )
        return value

    # ModelStore (turnout/providers/base.py): the model management the gateway relays.

    async def tags(self) -> JSON:
        """``GET /api/tags``: the models installed, with size, digest and details."""
        return self._object(await self.call_json("GET", "/api/tags"), "/api/tags")

    async def show(self, model: str, *, verbose: bool = False) -> JSON:
        """``POST /api/show``: modelfile, parameters, template, details, model_info and
        capabilities of one model."""
        payload: JSON = {"model": model, **({"verbose": True} if verbose else {})}
        return self._object(await self.call_json("POST", "/api/show", payload), "/api/show")

    async def ps(self) -> list[JSON]:
        """``GET /api/ps``: the models loaded now, with ``expires_at`` and ``size_vram``."""
        result = await self.call_json("GET", "/api/ps", timeout=self.config.timeout)
        return [m for m in self._field(result, "models", list, "/api/ps") if isinstance(m, dict)]

    async def version(self) -> str:
        """``GET /api/version``: the server's version, such as ``"0.12.6"``."""
        result = await self.call_json("GET", "/api/version", timeout=self.config.connect_timeout)
        return str(self._field(result, "version", str, "/api/version"))

    def pull(self, model: str, *, insecure: bool = False) -> AsyncGenerator[JSON, None]:
        """``POST /api/pull``, streamed: Ollama's progress objects as they arrive (``status``,
        and per layer ``digest``, ``total``, ``completed``), ending with ``success``. An error
        line (``{"error": ...}``, sent under the 200 already given) raises `BackendError`."""
        payload: JSON = {"model": model, "insecure": insecure, "stream": True}
        return self._progress("/api/pull", payload, "pull", model)

    async def delete(self, model: str) -> None:
        """``DELETE /api/delete``: remove a model (a 404 becomes `ModelNotFoundError`)."""
        await self._empty("DELETE", "/api/delete", {"model": model})

    async def copy(self, source: str, destination: str) -> None:
        """``POST /api/copy``: ``source`` under a second name (Ollama replaces a model already
        called ``destination``); an unknown source is `ModelNotFoundError` (Ollama's 404)."""
        await self._empty("POST", "/api/copy", {"source": source, "destination": destination})

    def create(self, model: str, fields: JSON) -> AsyncGenerator[JSON, None]:
        """``POST /api/create``, streamed: ``model`` made from ``fields`` (`CREATE_FIELDS`:
        ``from`` an existing model, or ``files`` already uploaded as blobs; ``system``,
        ``template``, ``parameters``... set on it). Progress as `pull` gives it (``reading model
        metadata``, ``creating system layer``, ``writing manifest``, ``success``)."""
        payload: JSON = {k: fields[k] for k in CREATE_FIELDS if fields.get(k) is not None}
        payload.update(model=model, stream=True)
        return self._progress("/api/create", payload, "create", model)

    def push(self, model: str, *, insecure: bool = False) -> AsyncGenerator[JSON, None]:
        """``POST /api/push``, streamed: ``model`` (``namespace/model:tag``, or with a registry
        host first) uploaded to the registry its name names (``retrieving manifest``, ``starting
        upload`` with ``digest`` and ``total``, ``pushing manifest``, ``success``)."""
        payload: JSON = {"model": model, "insecure": insecure, "stream": True}
        return self._progress("/api/push", payload, "push", model)

    async def _empty(self, method: str, path: str, payload: JSON) -> None:
        """A request Ollama answers with an empty 200, or an error status."""
        async with self.request(method, path, payload) as resp:
            with self.transport_errors():
                await resp.read()

    async def _progress(
        self, path: str, payload: JSON, verb: str, model: str
    ) -> AsyncGenerator[JSON, None]:
        """The NDJSON progress of a pull, create or push, up to ``{"status": "success"}``."""
        async with (
            self.request("POST", path, payload) as resp,
            contextlib.aclosing(self._lines(resp)) as lines,
        ):
            async for line in lines:
                try:
                    obj = self._object(orjson.loads(line), path)
                except orjson.JSONDecodeError:
                    obj = self._object(line.decode("utf-8", "replace")[:120], path)
                if "error" in obj:
                    message = clean_upstream_message(str(obj["error"]))
                    raise BackendError(
                        f"backend '{self.name}' could not {verb} {model!r}: {message}",
                        backend=self.name,
                    )
                yield obj
                if obj.get("status") == "success":
                    return
        raise BackendUnavailableError(
            f"backend '{self.name}' ended the {verb} of {model!r} before 'success'",
            backend=self.name,
        )
