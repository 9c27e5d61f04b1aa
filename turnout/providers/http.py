"""Plumbing shared by providers that speak HTTP: one pooled aiohttp session per backend,
timeouts, and the one place where transport failures and error replies become turnout errors."""

from __future__ import annotations

import asyncio
import email.utils
import math
import time
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import orjson

from ..config import ProviderConfig
from ..errors import (
    BackendError,
    BackendProtocolError,
    BackendRateLimitedError,
    BackendRejectedError,
    BackendTimeoutError,
    BackendUnavailableError,
    GatewayError,
    ModelNotFoundError,
    clean_upstream_message,
    redact,
)
from ..wire.sse import SSEDecoder, SSEEvent
from ..wire.types import Native
from ..wire.validate import encode_body
from .base import JSON, Call, Health, Provider

__all__ = ["HttpProvider", "error_fields", "error_message", "parse_retry_after"]


class HttpProvider(Provider):
    """A provider reached over HTTP. Subclasses set ``default_port`` and speak their dialect."""

    default_port: int = 80

    def __init__(self, name: str, config: ProviderConfig) -> None:
        super().__init__(name, config)
        endpoint = config.endpoint or f"http://127.0.0.1:{self.default_port}"
        self.base_url = self.normalise_endpoint(endpoint)
        self._session: aiohttp.ClientSession | None = None
        #: client dialect -> the backend's own route for it (turnout/providers/relay.py), as
        #: its preset declares (`set_native`); empty with ``passthrough: false``
        self.native_paths: dict[str, str] = {}

    def set_native(self, paths: Mapping[str, str]) -> None:
        """Serve the client dialects ``paths`` maps to their routes by passthrough, unless the
        configuration says ``passthrough: false``."""
        self.native_paths = dict(paths) if self.config.passthrough else {}

    def relays(self, call: Call, native: Native) -> bool:
        return native.dialect in self.native_paths

    def relay_body(self, call: Call) -> bytes:
        """The client's own request for this backend: its body with the backend's model name,
        and streamed as the gateway decided."""
        assert call.native is not None
        return encode_body({**call.native.body, "model": call.model, "stream": call.stream})

    @staticmethod
    def normalise_endpoint(endpoint: str) -> str:
        return endpoint.rstrip("/")

    def request_headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json", **self.config.headers}
        if self.config.api_key:
            headers.setdefault("Authorization", f"Bearer {self.config.api_key}")
        return headers

    async def start(self) -> None:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0, ttl_dns_cache=300),
                timeout=aiohttp.ClientTimeout(
                    total=None,
                    connect=self.config.connect_timeout,
                    sock_read=self.config.timeout,
                ),
                headers=self.request_headers(),
                skip_auto_headers=("User-Agent",),
                auto_decompress=True,
            )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError(f"provider {self.name!r} used before start()")
        return self._session

    def _request_options(self, payload: Any, timeout: float | None) -> dict[str, Any]:
        """The body (JSON) and, when the call sets one, its own timeout."""
        kwargs: dict[str, Any] = {"data": None if payload is None else encode_body(payload)}
        if timeout is not None:
            kwargs["timeout"] = aiohttp.ClientTimeout(
                total=timeout, connect=min(timeout, self.config.connect_timeout)
            )
        return kwargs

    @asynccontextmanager
    async def request(
        self, method: str, path: str, payload: Any = None, *, timeout: float | None = None
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """Open a request; yield the response only if it succeeded (2xx), else raise."""
        url = self.base_url + path
        kwargs = self._request_options(payload, timeout)
        with self.transport_errors():
            async with self.session.request(method, url, **kwargs) as resp:
                if resp.status >= 400:
                    body = await resp.read()
                    raise self.error_from_reply(resp.status, body, resp.headers)
                yield resp

    async def sse_events(self, path: str, payload: Any) -> AsyncGenerator[SSEEvent, None]:
        """POST a stream request and yield its server-sent events as they arrive (the last one
        even without its blank line); a reply that is not an event stream is an error. What
        `request` does, written out: this runs before every stream's first token."""
        with self.transport_errors():
            async with self.session.request(
                "POST", self.base_url + path, data=encode_body(payload)
            ) as resp:
                if resp.status >= 400:
                    raise self.error_from_reply(resp.status, await resp.read(), resp.headers)
                kind = resp.headers.get("Content-Type", "")
                if "text/event-stream" not in kind:
                    body = await resp.read()
                    raise BackendProtocolError(
                        f"backend '{self.name}' answered a stream request with "
                        f"{kind or 'no content type'} instead of text/event-stream: "
                        f"{clean_upstream_message(error_message(body))[:200]}",
                        backend=self.name,
                    )
                decoder = SSEDecoder()
                async for block in resp.content.iter_any():
                    for event in decoder.feed(block):
                        yield event
                for event in decoder.close():
                    yield event

    async def call_json(
        self, method: str, path: str, payload: Any = None, *, timeout: float | None = None
    ) -> Any:
        """A request whose 2xx reply is JSON, parsed. What `request` does, written out without
        its generator-based context manager: every non-streamed call passes here."""
        kwargs = self._request_options(payload, timeout)
        with self.transport_errors():
            async with self.session.request(method, self.base_url + path, **kwargs) as resp:
                body = await resp.read()
                if resp.status >= 400:
                    raise self.error_from_reply(resp.status, body, resp.headers)
        try:
            return orjson.loads(body)
        except orjson.JSONDecodeError:
            kind = resp.headers.get("Content-Type", "no content type")
            raise BackendProtocolError(
                f"backend '{self.name}' answered {path} with malformed JSON ({kind})",
                backend=self.name,
            ) from None

    def transport_errors(self) -> _TransportErrors:
        return _TransportErrors(self)

    def error_from_reply(
        self, status: int, body: bytes, headers: Mapping[str, str]
    ) -> GatewayError:
        """Turn an error reply of the backend into the error the client sees: the backend's own
        words, cleaned (`clean_upstream_message`: no traceback, bounded, configured secrets and
        credentials redacted) and with the backend's address replaced by its name; the address
        stays in ``detail``, for the operator (logs, /stats)."""
        text = clean_upstream_message(error_message(body)) or f"HTTP {status}"
        text = text.replace(self.base_url.split("://", 1)[-1], f"<{self.name}>")
        error = self._error_for(status, text, body, headers)
        if error.detail == error.message:
            error.detail = f"{error.message} (at {self.base_url})"
        return error

    def _error_for(
        self, status: int, text: str, body: bytes, headers: Mapping[str, str]
    ) -> GatewayError:
        who = f"backend '{self.name}'"
        if status == 429:
            return BackendRateLimitedError(
                f"{who} is rate limited: {text}",
                retry_after=parse_retry_after(headers.get("Retry-After")),
                backend=self.name,
            )
        if status == 404 and "model" in text.lower():
            return ModelNotFoundError(f"{who}: {text}", param="model", backend=self.name)
        if status in (401, 403):
            denied = BackendError(
                f"{who} refused turnout's credentials (HTTP {status}): check "
                f"providers.{self.name}.api_key",
                backend=self.name,
                code="backend_auth_failed",
            )
            denied.retryable = False  # asking again will not help; another backend may
            return denied
        if status in (400, 413, 422):
            param, code = error_fields(body)  # e.g. messages / context_length_exceeded
            return BackendRejectedError(
                f"{who} rejected the request: {text}",
                status=413 if status == 413 else 400,
                param=param,
                code=code,
                backend=self.name,
            )
        if status == 503:
            return BackendUnavailableError(
                f"{who} is unavailable (HTTP 503): {text}",
                retry_after=parse_retry_after(headers.get("Retry-After")),
                backend=self.name,
            )
        if status == 504:
            return BackendTimeoutError(f"{who} timed out (HTTP 504)", backend=self.name)
        err = BackendError(f"{who} failed (HTTP {status}): {text}", backend=self.name)
        err.retryable = status >= 500
        return err

    async def probe_path(self, path: str) -> Health:
        start = time.perf_counter()
        try:
            async with self.request("GET", path, timeout=self.config.connect_timeout):
                pass
        except GatewayError as exc:
            return Health(False, None, exc.detail)
        return Health(True, (time.perf_counter() - start) * 1000.0)


class _TransportErrors:
    """Context manager mapping aiohttp and timeout exceptions to turnout errors."""

    __slots__ = ("_p",)

    def __init__(self, provider: HttpProvider) -> None:
        self._p = provider

    def __enter__(self) -> None:
        return None

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: Any
    ) -> None:
        if exc is None or isinstance(exc, GatewayError | asyncio.CancelledError):
            return
        name = self._p.name
        who = f"backend '{name}'"  # clients learn the backend's name, operators its address too
        mapped: GatewayError
        if isinstance(exc, TimeoutError | aiohttp.ServerTimeoutError):
            why = f"did not answer within {self._p.config.timeout:g}s"
            mapped = BackendTimeoutError(f"{who} {why}", backend=name)
        elif isinstance(exc, aiohttp.ClientConnectorError):
            reason = exc.os_error.strerror or str(exc.os_error) if exc.os_error else str(exc)
            why = f"is unreachable: {reason}"
            mapped = BackendUnavailableError(f"{who} is unreachable", backend=name)
        elif isinstance(exc, aiohttp.ClientPayloadError | aiohttp.ServerDisconnectedError):
            why = "closed the connection mid-reply"
            mapped = BackendUnavailableError(f"{who} {why}", backend=name)
        elif isinstance(exc, aiohttp.ClientError | OSError):
            why = f"failed: {exc}"
            mapped = BackendUnavailableError(f"{who} failed ({type(exc).__name__})", backend=name)
        else:
            return
        mapped.detail = redact(f"backend '{name}' at {self._p.base_url} {why}")
        raise mapped from exc


def error_message(body: bytes) -> str:
    """The message in any runtime's error body (OpenAI, Ollama, FastAPI, Kobold, plain text)."""
    try:
        obj = orjson.loads(body)
    except orjson.JSONDecodeError:
        return body.decode("utf-8", "replace")
    if isinstance(obj, dict):
        for key in ("error", "detail", "message", "msg"):
            value = obj.get(key)
            if isinstance(value, str):
                return value
            if isinstance(value, dict):
                inner = value.get("message") or value.get("msg") or value.get("error")
                if isinstance(inner, str):
                    return inner
            if isinstance(value, list) and value and isinstance(value[0], dict):
                return "; ".join(str(v.get("msg", v)) for v in value[:3])
    return body.decode("utf-8", "replace")


def error_fields(body: bytes) -> tuple[str | None, str | None]:
    """The ``param`` and ``code`` of an OpenAI-shaped error body, where the backend gave them as
    strings (llama.cpp and vLLM send an integer code: that is an HTTP status, not OpenAI's)."""
    obj = json_or_none(body)
    error = obj.get("error") if obj is not None else None
    if not isinstance(error, dict):
        return None, None
    param, code = error.get("param"), error.get("code")
    return (
        param if isinstance(param, str) and param else None,
        code if isinstance(code, str) and code else None,
    )


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header: delta-seconds or an HTTP date."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:  # "inf" or "nan" would overflow the Retry-After turnout sends on
        return max(0.0, seconds) if math.isfinite(seconds) else None
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def json_or_none(body: bytes) -> JSON | None:
    try:
        obj = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    return obj if isinstance(obj, dict) else None
