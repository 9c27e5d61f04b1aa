"""turnout's OpenAPI 3.1 document, generated from the route table.

Every route the app mounts is looked up in ``paths.yaml`` (what it takes, answers and fails with,
in OpenAPI's syntax plus a few shorthands) by its path and method; the schemas are OpenAI's own
for the OpenAI and Responses fronts (``openai.json``, copied from OpenAI's description, MIT) and
turnout's for everything else (``components.yaml``). A route the table has and ``paths.yaml``
lacks is left out and named by `missing`; tests/unit/test_openapi.py fails on it, so a new route
cannot ship undocumented. The document is built once per app, when first asked for.
"""

from __future__ import annotations

import copy
import functools
import json
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Protocol

import yaml

__all__ = ["RouteLike", "dialects", "document", "missing", "operations"]

_HERE = Path(__file__).resolve().parent
_PARAM = re.compile(r"{([A-Za-z_][A-Za-z0-9_]*)(?::[a-z]+)?}")
_SHORTHANDS = ("x-request", "x-json", "x-sse", "x-ndjson", "x-errors")


class RouteLike(Protocol):
    """What the generator reads of a route: its path and methods (``admin``, when present,
    marks a route that needs the admin key)."""

    @property
    def path(self) -> str: ...

    @property
    def methods(self) -> Any: ...


@functools.cache
def _data() -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    paths = yaml.safe_load((_HERE / "paths.yaml").read_text())
    components = yaml.safe_load((_HERE / "components.yaml").read_text())
    openai = json.loads((_HERE / "openai.json").read_text())
    return paths, components, openai


def dialects() -> dict[str, str]:
    """Error dialect (a route's ``x-errors``) -> the schema of its error body."""
    found: dict[str, str] = _data()[1]["x-error-dialects"]
    return found


def operations(routes: Iterable[RouteLike]) -> list[tuple[str, str, Any]]:
    """(method, path, route) for every operation the routes serve; HEAD is left out (every GET
    answers it)."""
    out = []
    for route in routes:
        for method in sorted(route.methods or ()):
            if method != "HEAD":
                out.append((method.lower(), route.path, route))
    return out


def missing(routes: Iterable[RouteLike]) -> list[str]:
    """``METHOD path`` of each operation the routes serve that paths.yaml does not describe."""
    paths = _data()[0]
    return [
        f"{method.upper()} {path}"
        for method, path, _ in operations(routes)
        if method not in (paths.get(path) or {})
    ]


def document(routes: Iterable[RouteLike], *, version: str) -> dict[str, Any]:
    """The OpenAPI 3.1 document of ``routes``: one operation per route and method described."""
    paths, components, openai = _data()
    out_paths: dict[str, dict[str, Any]] = {}
    for method, path, route in operations(routes):
        described = (paths.get(path) or {}).get(method)
        if described is None:
            continue
        template = _PARAM.sub(r"{\1}", path)
        operation = _operation(described, method, template, bool(getattr(route, "admin", False)))
        out_paths.setdefault(template, {})[method] = operation
    schemas = {**openai["schemas"], **components["schemas"]}
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "turnout",
            "version": version,
            "summary": "A local-first LLM gateway, one door for every local runtime.",
            "description": (
                "Every route turnout serves. The OpenAI and Responses schemas are OpenAI's own "
                f"({openai['source']}). Errors are told in the dialect of the route's front; "
                "X-Request-Id is accepted from the client and returned on every response."
            ),
            "license": {"name": "Apache-2.0", "identifier": "Apache-2.0"},
        },
        "security": [{"bearer": []}, {}],
        "paths": dict(sorted(out_paths.items())),
        "components": {
            "schemas": schemas,
            "responses": _error_responses(),
            "headers": {
                "X-Request-Id": {
                    "description": "The request's id: the client's (sanitised) or a new one.",
                    "schema": {"type": "string"},
                }
            },
            "securitySchemes": components["securitySchemes"],
        },
    }


def _ref(name: str, kind: str = "schemas") -> dict[str, str]:
    return {"$ref": f"#/components/{kind}/{name}"}


def _error_responses() -> dict[str, Any]:
    out: dict[str, Any] = {}
    for dialect, schema in dialects().items():
        out[f"{dialect}_error"] = {
            "description": f"An error, in the {dialect} dialect",
            "headers": {"X-Request-Id": _ref("X-Request-Id", "headers")},
            "content": {"application/json": {"schema": _ref(schema)}},
        }
        out[f"{dialect}_404"] = {**out[f"{dialect}_error"], "description": "Not found"}
    return out


def _operation(described: dict[str, Any], method: str, path: str, admin: bool) -> dict[str, Any]:
    op = {k: copy.deepcopy(v) for k, v in described.items() if k not in _SHORTHANDS}
    op["operationId"] = method + re.sub(r"[^A-Za-z0-9]+", "_", path).rstrip("_")
    params = _PARAM.findall(path)
    if params:
        op["parameters"] = [
            {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
            for name in params
        ] + list(op.get("parameters") or ())
    if "x-request" in described:
        op["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": _ref(described["x-request"])}},
        }
    responses: dict[str, Any] = dict(op.get("responses") or {})
    content: dict[str, Any] = {}
    if "x-json" in described:
        content["application/json"] = {"schema": _ref(described["x-json"])}
    if "x-sse" in described:
        content["text/event-stream"] = {
            "schema": _ref(described["x-sse"]),
            "x-framing": "each data: event one such object (OpenAI's fronts end with [DONE])",
        }
    if "x-ndjson" in described:
        content["application/x-ndjson"] = {"schema": _ref(described["x-ndjson"])}
    if content:
        responses["200"] = {"description": "OK", "content": content}
    dialect = described.get("x-errors", "openai")
    for code in ("4XX", "5XX"):
        responses.setdefault(code, _ref(f"{dialect}_error", "responses"))
    for response in responses.values():
        if "$ref" not in response:
            response.setdefault("headers", {})["X-Request-Id"] = _ref("X-Request-Id", "headers")
    op["responses"] = responses
    if admin:
        op["security"] = [{"bearer": []}]
        op["description"] = (op.get("description", "") + " Needs the admin key.").strip()
    return op
