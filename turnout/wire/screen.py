"""What a request may make a backend do, checked once for every front before it is routed.

Validation (`wire.validate`) checks that a request is well formed; screening checks that it asks
for nothing a client should not control, whatever dialect it came in:

- **Images a backend would fetch.** A vision backend downloads an ``image_url`` it is given, so a
  client could make it fetch ``http://169.254.169.254/...`` (cloud metadata), a service on the
  backend's own network, or read ``file:///etc/shadow``. By default only ``data:`` URIs, raw
  base64 and ``https:`` URLs to public hosts pass; ``http:``, ``file:`` and hosts that are IP
  literals in private, loopback, link-local or reserved ranges (or ``localhost``-like names)
  only when configured. Host names are not resolved here (that would put DNS on the request
  path); a backend that must not reach internal names needs its own egress rules.
- **Fields that redirect a backend.** Unknown fields pass to backends untouched, and some
  backends (LiteLLM-style proxies) honour ``api_base``, ``base_url``, ``extra_headers`` and the
  like from the body. turnout chooses the upstream; such fields are refused.
- **Model residency.** ``keep_alive`` (Ollama's field) lets a request set how long its model stays
  loaded. ``0`` would unload it at once and ``-1`` pin it forever: a request's value is kept
  within ``[min, max]`` of the configuration instead; unloading and pinning are admin acts
  (``POST /v1/models/{id}/unload``, the configuration).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, model_validator

from ..errors import InvalidRequestError
from .durations import parse_keep_alive
from .types import JSON, Kind

__all__ = ["REDIRECTING_FIELDS", "Screen", "SecurityConfig", "check_pull", "pull_registry"]

#: body fields that would let a client choose a backend's address, credentials or headers
REDIRECTING_FIELDS = frozenset(
    {
        "api_base",
        "api_key",
        "api_version",
        "base_url",
        "custom_llm_provider",
        "extra_headers",
        "extra_query",
        "headers",
        "proxy",
        "proxies",
    }
)
#: how raw base64 image data begins (PNG, JPEG, GIF, WebP), which OpenAI's schema accepts
_RAW_BASE64 = ("iVBORw0KGgo", "/9j/", "R0lGOD", "UklGR")
_LOCAL_NAMES = ("localhost", ".localhost", ".local", ".internal", ".localdomain")


ImageScheme = Literal["https", "http", "data", "file"]


class SecurityConfig(BaseModel):
    """The configuration's ``security`` section: what a request may make a backend do
    (docs/security.md)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    image_url_schemes: list[ImageScheme] = Field(
        default_factory=lambda: list[ImageScheme](["https", "data"]),
        description="schemes of image URLs passed to vision backends (which fetch them)",
    )
    image_private_hosts: bool = Field(
        False, description="allow image URLs whose host is a private, loopback or link-local IP"
    )
    request_keep_alive_min: float | str = Field(
        "1m", description="the least keep_alive a request may set (0 would unload the model)"
    )
    request_keep_alive_max: float | str = Field(
        "1h", description="the most keep_alive a request may set (-1 would pin the model)"
    )
    pull_registries: list[str] = Field(
        default_factory=lambda: ["registry.ollama.ai"],
        description="registries model pulls may name; a name without a registry uses the first",
    )

    @model_validator(mode="after")
    def _keep_alive_range(self) -> SecurityConfig:
        low = parse_keep_alive(self.request_keep_alive_min)  # raises saying what is allowed
        high = parse_keep_alive(self.request_keep_alive_max)
        if low <= 0 or high == float("inf") or low > high:
            raise ValueError(
                "request_keep_alive_min must be positive and at most request_keep_alive_max, "
                "which must be finite (requests may neither unload nor pin a model)"
            )
        return self


def _refuse(param: str, message: str, code: str = "invalid_value") -> InvalidRequestError:
    return InvalidRequestError(message, param=param, code=code)


@dataclass(frozen=True, slots=True)
class Screen:
    """The screening policy (configuration ``security``); `check` raises naming the field."""

    image_schemes: frozenset[str] = frozenset({"https", "data"})
    image_private_hosts: bool = False
    keep_alive_min: float = 60.0
    keep_alive_max: float = 3600.0

    def check(self, kind: Kind, body: JSON) -> None:
        """Refuse what the request may not ask for; clamp its ``keep_alive`` in place."""
        if not REDIRECTING_FIELDS.isdisjoint(body):
            field = min(REDIRECTING_FIELDS.intersection(body))
            raise _refuse(
                field,
                f"'{field}' is not accepted: turnout chooses the backend, its address and "
                "credentials; remove the field",
                "forbidden_parameter",
            )
        if "keep_alive" in body:
            body["keep_alive"] = self._keep_alive(body["keep_alive"])
        if kind == "chat":
            messages = body.get("messages")
            if isinstance(messages, list):
                self._images(messages)

    def _keep_alive(self, value: Any) -> float:
        try:
            seconds = parse_keep_alive(value)
        except ValueError as exc:
            raise _refuse("keep_alive", str(exc)) from None
        return min(max(seconds, self.keep_alive_min), self.keep_alive_max)

    def _images(self, messages: list[Any]) -> None:
        for i, message in enumerate(messages):
            content = message.get("content") if isinstance(message, dict) else None
            if not isinstance(content, list):
                continue
            for j, part in enumerate(content):
                if isinstance(part, dict) and part.get("type") == "image_url":
                    image = part.get("image_url")
                    url = image.get("url") if isinstance(image, dict) else image
                    if isinstance(url, str):
                        self._image_url(f"messages[{i}].content[{j}].image_url.url", url)

    def _image_url(self, param: str, url: str) -> None:
        if url.startswith(_RAW_BASE64):
            return  # image data itself: nothing to fetch
        head = url[:16].lower()
        scheme = head.split(":", 1)[0] if ":" in head else ""
        if scheme not in self.image_schemes:
            allowed = ", ".join(f"{s}:" for s in sorted(self.image_schemes))
            raise _refuse(
                param,
                f"image URLs with scheme '{scheme}:' are not accepted (allowed: {allowed}, or "
                "base64 image data); set security.image_url_schemes to allow it",
            )
        if scheme in ("data", "file") or self.image_private_hosts:
            return
        host = (urlsplit(url).hostname or "").rstrip(".").lower()
        if not host or _internal(host):
            raise _refuse(
                param,
                f"image URL host '{host}' is a local or private address, which a backend must not "
                "be made to fetch; set security.image_private_hosts to allow it",
            )


def _internal(host: str) -> bool:
    if host == "localhost" or host.endswith(_LOCAL_NAMES):
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return not address.is_global


def check_pull(model: str, insecure: bool, registries: list[str]) -> None:
    """Refuse a model pull that names a registry outside ``registries`` (configuration
    ``security.pull_registries``) or asks to skip TLS verification: a pull makes the backend
    download from wherever the name points, and ``insecure`` lets anyone on the path swap the
    weights."""
    if insecure:
        raise _refuse(
            "insecure", "insecure pulls are not accepted: they skip the registry's TLS check"
        )
    registry = pull_registry(model)
    if registry is not None and registry.lower() not in {r.lower() for r in registries}:
        allowed = ", ".join(registries) or "none"
        raise _refuse(
            "model",
            f"pulls from registry '{registry}' are not allowed (allowed: {allowed}); set "
            "security.pull_registries to allow it",
        )


def pull_registry(model: str) -> str | None:
    """The registry host a model name names (``host[:port]/namespace/model:tag``), or None for a
    name that uses the default registry (``model``, ``namespace/model``)."""
    parts = model.split("/")
    if len(parts) >= 3 or (len(parts) == 2 and ("." in parts[0] or ":" in parts[0])):
        return parts[0]
    return None


def bound_keep_alive(value: Any, low: float | str | None, high: float | str | None) -> Any:
    """A request's ``keep_alive`` within one backend's own range (``request_keep_alive_min`` /
    ``_max`` of its provider), on top of the gateway's (`Screen`); ``value`` unchanged when it
    is not a duration (validation has already refused those) or no bound is set."""
    try:
        seconds = parse_keep_alive(value)
    except ValueError:
        return value
    if low is not None:
        seconds = max(seconds, parse_keep_alive(low))
    if high is not None:
        seconds = min(seconds, parse_keep_alive(high))
    return seconds
