"""Write the JSON Schemas of Anthropic's Messages API that turnout's Anthropic front is validated
against, from the official ``anthropic`` SDK's own types (its models are generated from
Anthropic's OpenAPI description by Stainless):

    python scripts/extract_anthropic_schemas.py

writes tests/fixtures/anthropic/schemas.json: ``Message`` (a reply), ``RawMessageStreamEvent``
(every stream event), ``ErrorResponse``, ``MessageTokensCount`` (count_tokens), with the SDK
version it came from, so the suite needs nothing but the repository.
"""

from __future__ import annotations

import json
from pathlib import Path

import anthropic
from anthropic.types import (
    ErrorResponse,
    Message,
    MessageTokensCount,
    RawMessageStreamEvent,
)
from pydantic import TypeAdapter

OUT = Path(__file__).resolve().parents[1] / "tests/fixtures/anthropic/schemas.json"
ROOTS = {
    "Message": Message,
    "RawMessageStreamEvent": RawMessageStreamEvent,
    "ErrorResponse": ErrorResponse,
    "MessageTokensCount": MessageTokensCount,
}


def main() -> None:
    schemas = {
        name: TypeAdapter(kind).json_schema(mode="serialization") for name, kind in ROOTS.items()
    }
    out = {
        "source": f"anthropic Python SDK {anthropic.__version__} (anthropic.types), "
        "pydantic TypeAdapter(...).json_schema(mode='serialization')",
        "schemas": schemas,
    }
    OUT.write_text(json.dumps(out, indent=1) + "\n")
    print(f"{len(schemas)} schemas -> {OUT} ({OUT.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
