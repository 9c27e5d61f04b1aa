"""Copy the OpenAI response schemas turnout is validated against out of OpenAI's official OpenAPI
description (openai/openai-openapi, MIT licence), with every schema they reference.

    python scripts/extract_openai_schemas.py ../shared/reference/openai-openapi.json

writes tests/fixtures/openai/schemas.json, so the test suite needs nothing outside the repository.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

ROOTS = (
    "CreateChatCompletionResponse",
    "CreateChatCompletionStreamResponse",
    "CreateCompletionResponse",
    "CreateEmbeddingResponse",
    "ErrorResponse",
    "ListModelsResponse",
    "Model",
    # the Responses API (turnout/wire/responses.py): the response object and every stream event
    "Response",
    "ResponseStreamEvent",
)
PREFIX = "#/components/schemas/"
OUT = Path(__file__).resolve().parents[1] / "tests/fixtures/openai/schemas.json"


def refs(node: Any) -> set[str]:
    found: set[str] = set()
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith(PREFIX):
            found.add(ref.removeprefix(PREFIX))
        for value in node.values():
            found |= refs(value)
    elif isinstance(node, list):
        for value in node:
            found |= refs(value)
    return found


def main(spec_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    schemas = spec["components"]["schemas"]
    wanted: dict[str, Any] = {}
    todo = list(ROOTS)
    while todo:
        name = todo.pop()
        if name in wanted:
            continue
        wanted[name] = schemas[name]
        todo.extend(sorted(refs(schemas[name]) - wanted.keys()))
    out = {
        "openapi": spec["openapi"],
        "info": {
            "title": "Subset of OpenAI's OpenAPI description used by turnout's tests",
            "source": "openai/openai-openapi openapi.json @ f85dbe2 (2026-08-21), MIT licence",
            "version": spec["info"]["version"],
        },
        "components": {"schemas": dict(sorted(wanted.items()))},
    }
    OUT.write_text(json.dumps(out, indent=1, sort_keys=False) + "\n")
    print(f"{len(wanted)} schemas -> {OUT} ({OUT.stat().st_size} bytes)")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "../shared/reference/openai-openapi.json")
