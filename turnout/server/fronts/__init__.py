"""The client dialects besides OpenAI's Chat Completions, each a small module: Anthropic
Messages (`anthropic`), the Ollama API at the root (`ollama`), OpenAI Responses (`responses`),
and the source web app's ``/api/local-llm/*`` (`webapp`). Their inference endpoints join the hot
path (`INFERENCE`); `routes` mounts everything."""

from __future__ import annotations

from typing import Any

from . import anthropic, ollama, responses, webapp

__all__ = ["INFERENCE", "routes"]

INFERENCE: dict[str, Any] = {**anthropic.INFERENCE, **ollama.INFERENCE, **responses.INFERENCE}
routes = [*anthropic.routes, *ollama.routes, *responses.routes, *webapp.routes]
