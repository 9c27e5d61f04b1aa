"""The HTTP fronts: each a dialect clients speak, in a module of its own (see `base.Front`).

A new front is a module here (its `Front` and its `routes`) and one line below; its routes then
pass the pipeline like every other (turnout/server/pipeline.py). Besides OpenAI's Chat
Completions (`openai`): Anthropic Messages (`anthropic`), the Ollama API at the root
(`ollama`), OpenAI Responses (`responses`) and the source web app's ``/api/local-llm/*``
(`webapp`); and the model management of Ollama backends relayed in Ollama's shapes
(`ollama_admin`, ``/v1/ollama/{provider}/...``; pull and delete marked admin).
"""

from __future__ import annotations

from ..pipeline import Route
from . import anthropic, ollama, ollama_admin, openai, responses, webapp

__all__ = ["routes"]

#: every front's routes, in the order they are matched
routes: list[Route] = [
    *openai.routes,
    *anthropic.routes,
    *ollama.routes,
    *responses.routes,
    *webapp.routes,
    *ollama_admin.routes,
]
