"""HTTP fronts: the OpenAI-compatible API (and later the Ollama and Anthropic ones)."""

from .app import create_app

__all__ = ["create_app"]
