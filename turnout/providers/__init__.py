"""Backend dialects, one module each; `build_provider` imports only the dialects configured.

Importing this package registers every provider type (each dialect and each runtime preset) with
turnout/config.py: its dialect, its settings model (the dialect's provider class names it in
``settings``; its module is imported when a provider of the type is first validated), whether it
needs an ``api_key``; and the environment variables that add providers (environment.py).
``import turnout`` imports it.
"""

from __future__ import annotations

import functools
import importlib
from typing import TYPE_CHECKING

from ..config import ProviderConfig, ProviderType, register_env_source, register_provider_type
from .environment import declared_endpoints, openai_compatible_data
from .presets import API_KEY_REQUIRED, DIALECTS, KEY_HEADERS, PRESETS, Preset

if TYPE_CHECKING:
    from .base import Provider

__all__ = ["DIALECTS", "PRESETS", "PROVIDER_TYPES", "Preset", "build_provider", "provider_class"]

#: every provider type: the dialects and the runtime presets
PROVIDER_TYPES: tuple[str, ...] = tuple(sorted(set(DIALECTS) | set(PRESETS)))


def provider_class(dialect: str) -> type[Provider]:
    """The class that speaks ``dialect`` (its module is imported now)."""
    module_name, _, class_name = DIALECTS[dialect].partition(":")
    cls: type[Provider] = getattr(importlib.import_module(module_name), class_name)
    return cls


def build_provider(name: str, config: ProviderConfig) -> Provider:
    return provider_class(config.dialect)(name, config)


@functools.cache
def _settings(dialect: str) -> type[ProviderConfig]:
    return provider_class(dialect).settings


def _register() -> None:
    dialects = {name: name for name in DIALECTS}
    for name, dialect in {**dialects, **{n: p.dialect for n, p in PRESETS.items()}}.items():
        register_provider_type(
            ProviderType(
                name,
                dialect,
                settings=functools.partial(_settings, dialect),
                api_key_required=name in API_KEY_REQUIRED,
                key_headers=KEY_HEADERS,
            )
        )
    register_env_source(openai_compatible_data)  # source document 003's two variables,
    register_env_source(declared_endpoints)  # in this order


_register()
