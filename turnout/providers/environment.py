"""Providers added by the environment, as source document 003's web app does; turnout/config.py
reads them after the file and before ``TURNOUT_*`` overrides (registered by __init__.py).

``OPENAI_COMPATIBLE_DATA``: a JSON array of ``{"provider", "baseUrl", "apiKey", "models"}``, each
an OpenAI-compatible provider named after its ``provider`` (slugged). The variables presets declare
(`presets.DIALECT_ENV`, e.g. ``OLLAMA_BASE_URL``): a URL that adds a provider of that type, named
after it, or gives the one configured under that name its endpoint.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from ..errors import ConfigError
from .presets import DIALECT_ENV

__all__ = ["declared_endpoints", "openai_compatible_data"]


def openai_compatible_data(env: Mapping[str, str], _: Mapping[str, Any]) -> dict[str, Any]:
    raw = env.get("OPENAI_COMPATIBLE_DATA")
    if not raw:
        return {}
    try:
        entries = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"OPENAI_COMPATIBLE_DATA: not valid JSON ({exc.msg})") from None
    if not isinstance(entries, list):
        raise ConfigError("OPENAI_COMPATIBLE_DATA: must be a JSON array of providers")
    return dict(_entry(i, entry) for i, entry in enumerate(entries))


def _entry(i: int, entry: Any) -> tuple[str, dict[str, Any]]:
    where = f"OPENAI_COMPATIBLE_DATA[{i}]"
    if not isinstance(entry, dict):
        raise ConfigError(f"{where}: must be an object with provider, baseUrl and models")
    for key in ("provider", "baseUrl"):
        if not isinstance(entry.get(key), str) or not entry[key]:
            raise ConfigError(f"{where}.{key}: required, a non-empty string")
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", entry["provider"]).strip("-") or f"provider{i}"
    provider: dict[str, Any] = {"type": "openai", "endpoint": entry["baseUrl"]}
    if entry.get("apiKey"):
        provider["api_key"] = entry["apiKey"]
    if "models" in entry:
        provider["models"] = entry["models"]
    return name, provider


def declared_endpoints(env: Mapping[str, str], providers: Mapping[str, Any]) -> dict[str, Any]:
    added = {}
    for name, declared in DIALECT_ENV.items():
        url = env.get(declared.variable)
        if url:
            entry = providers.get(name) or {"type": name}  # keeps the file's other settings
            added[name] = {**entry, "endpoint": url.rstrip("/").removesuffix(declared.suffix)}
    return added
