"""Backend dialects, one module each; `build_provider` imports only the dialects configured."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from .presets import DIALECTS, PRESETS, Preset

if TYPE_CHECKING:
    from ..config import ProviderConfig
    from .base import Provider

__all__ = ["DIALECTS", "PRESETS", "Preset", "build_provider"]


def build_provider(name: str, config: ProviderConfig) -> Provider:
    module_name, _, class_name = DIALECTS[config.dialect].partition(":")
    cls = getattr(importlib.import_module(module_name), class_name)
    provider: Provider = cls(name, config)
    return provider
