"""Ollama's error dialect: ``{"error": "<message>"}`` with the HTTP status of the failure (400 a
bad request, 401 a missing key, 404 an unknown model, 429, 500, 502...), as Ollama's API answers
and its clients read it (``ollama.ResponseError(error, status_code)``). In an NDJSON stream that
already began, the same object is the last line (``OLLAMA_ERRORS.body``).

Used by the Ollama front (fronts/ollama.py) and the Ollama-dialect admin routes
(fronts/ollama_admin.py).
"""

from __future__ import annotations

from ...errors import GatewayError
from ...wire.types import JSON
from ..responses import Errors

__all__ = ["OLLAMA_ERRORS"]


def _body(exc: GatewayError) -> JSON:
    return {"error": exc.message}


OLLAMA_ERRORS = Errors(_body)
