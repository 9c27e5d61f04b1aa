"""turnout: a local-first LLM gateway. One OpenAI-compatible door in front of every runtime."""

from __future__ import annotations

__version__ = "0.1.0"

from .config import Config, load_config
from .errors import ConfigError, GatewayError
from .gateway import Gateway

__all__ = ["Config", "ConfigError", "Gateway", "GatewayError", "__version__", "load_config"]
