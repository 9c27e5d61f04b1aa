"""Copy the OpenAI schemas turnout's OpenAPI document uses out of OpenAI's official OpenAPI
description (openai/openai-openapi, MIT licence), with every schema they reference.

    python scripts/vendor_openapi.py ../shared/reference/openai-openapi.json

writes turnout/server/openapi/openai.json, which ``GET /openapi.json`` (turnout/server/openapi/)
serves as its ``components.schemas`` for the OpenAI and Responses fronts. The licence notice is
turnout/server/openapi/LICENSE-openai-openapi.txt.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

ROOTS = (
    "CreateChatCompletionRequest",
    "CreateChatCompletionResponse",
    "CreateChatCompletionStreamResponse",
    "CreateCompletionRequest",
    "CreateCompletionResponse",
    "CreateEmbeddingRequest",
    "CreateEmbeddingResponse",
    "CreateResponse",
    "Response",
    "ResponseStreamEvent",
    "ErrorResponse",
    "ListModelsResponse",
    "Model",
)
PREFIX = "#/components/schemas/"
OUT = Path(__file__).resolve().parents[1] / "turnout/server/openapi/openai.json"


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


def nullable(node: dict[str, Any]) -> dict[str, Any]:
    """OpenAPI 3.0's ``nullable: true`` (which OpenAI's 3.1 document still uses on 100-odd
    schemas) in 3.1's words: ``null`` among the types, or ``anyOf`` the schema and ``null``."""
    node = {k: v for k, v in node.items() if k != "nullable"}
    kind = node.get("type")
    if isinstance(kind, str):
        node["type"] = [kind, "null"]
        if "enum" in node and None not in node["enum"]:
            node["enum"] = [*node["enum"], None]
        return node
    if isinstance(kind, list):
        node["type"] = [*kind, "null"] if "null" not in kind else kind
        return node
    keep = {k: node.pop(k) for k in ("description", "title") if k in node}
    return {"anyOf": [node, {"type": "null"}], **keep}


def recursive(node: Any, name: str) -> Any:
    """JSON Schema 2019-09's ``$recursiveAnchor``/``$recursiveRef`` (CompoundFilter uses them)
    as the plain reference to the schema itself that they mean here (3.1 is 2020-12)."""
    if isinstance(node, dict):
        if node.get("$recursiveRef") == "#":
            return {"$ref": PREFIX + name}
        return {k: recursive(v, name) for k, v in node.items() if k != "$recursiveAnchor"}
    if isinstance(node, list):
        return [recursive(v, name) for v in node]
    return node


def strip(node: Any) -> Any:
    """Drop OpenAI's documentation-site extensions (``x-oaiMeta``...): they are not schema;
    bring integers beyond 64 bits into int64's range."""
    if isinstance(node, dict):
        # A default of null on a schema that does not admit null (a dozen of them) says only
        # that the field may be left out: dropped, as a 3.1 validator rejects it.
        out = {
            k: strip(v)
            for k, v in node.items()
            if not k.startswith("x-oai") and not (k == "default" and v is None)
        }
        return nullable(out) if out.get("nullable") is True else out
    if isinstance(node, list):
        return [strip(v) for v in node]
    if isinstance(node, int) and not isinstance(node, bool) and abs(node) >= 2**63:
        # the seed's bounds, written as 9223372036854776000: int64's range, as JSON encoders
        # (orjson among them) can write it
        return 2**63 - 1 if node > 0 else -(2**63)
    return node


def main(spec_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    schemas = spec["components"]["schemas"]
    wanted: dict[str, Any] = {}
    todo = list(ROOTS)
    while todo:
        name = todo.pop()
        if name in wanted:
            continue
        wanted[name] = strip(recursive(schemas[name], name))
        todo.extend(sorted(refs(schemas[name]) - wanted.keys()))
    out = {
        "source": "openai/openai-openapi openapi.json @ f85dbe2 (2026-08-21), MIT licence",
        "version": spec["info"]["version"],
        "schemas": dict(sorted(wanted.items())),
    }
    OUT.write_text(json.dumps(out, separators=(",", ":"), sort_keys=False) + "\n")
    print(f"{len(wanted)} schemas -> {OUT} ({OUT.stat().st_size} bytes)")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "../shared/reference/openai-openapi.json")
