"""Hypothesis strategies from JSON Schema (OpenAPI 3.1's dialect), for fuzzing the fronts with
the request schemas of turnout's own ``/openapi.json``.

hypothesis-jsonschema does not run on current Hypothesis, and the OpenAI schemas are recursive;
this covers what those schemas use (``$ref``, ``type`` and type lists, ``enum``, ``const``,
``anyOf`` / ``oneOf`` / ``allOf``, ``properties`` / ``required`` / ``additionalProperties``,
``items``, numeric and length bounds) with recursion cut at a depth. `broken` then breaks a valid
body in the ways a client gets wrong: a field of the wrong type, a required one missing, an
unknown one added, a null.
"""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

__all__ = ["broken", "from_schema", "json_values"]

Schema = dict[str, Any]
#: how many ``$ref`` deep a value may go (the OpenAI schemas refer to themselves)
MAX_DEPTH = 8

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**40), 2**40)
    | st.floats(allow_nan=False, allow_infinity=False, width=32)
    | st.text(max_size=12)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=6,
)


def from_schema(
    schema: Schema, schemas: dict[str, Schema], depth: int = 0
) -> st.SearchStrategy[Any]:
    """Values ``schema`` accepts (mostly: ``pattern`` and ``format`` are not followed)."""
    if depth > MAX_DEPTH:
        return json_scalars
    ref = schema.get("$ref")
    if ref is not None:
        name = ref.rsplit("/", 1)[-1]
        return st.deferred(lambda: from_schema(schemas[name], schemas, depth + 1))
    if "const" in schema:
        return st.just(schema["const"])
    if "enum" in schema:
        return st.sampled_from(schema["enum"])
    for key in ("anyOf", "oneOf"):
        if key in schema:
            return st.one_of([from_schema(o, schemas, depth) for o in schema[key]])
    if "allOf" in schema:
        parts = [from_schema(p, schemas, depth) for p in schema["allOf"]]
        return st.tuples(*parts).map(_merge)
    kind = schema.get("type")
    if isinstance(kind, list):
        return st.one_of([from_schema({**schema, "type": k}, schemas, depth) for k in kind])
    if schema.get("nullable"):
        return st.none() | from_schema({**schema, "nullable": False}, schemas, depth)
    if kind == "object" or (kind is None and "properties" in schema):
        return _object(schema, schemas, depth)
    if kind == "array":
        items = schema.get("items") or {}
        low = min(schema.get("minItems", 0), 3)
        return st.lists(from_schema(items, schemas, depth), min_size=low, max_size=max(low, 3))
    return _scalar(schema, kind)


def _scalar(schema: Schema, kind: Any) -> st.SearchStrategy[Any]:
    if kind == "string":
        low = min(schema.get("minLength", 0), 8)
        return st.text(min_size=low, max_size=max(low, 24))
    if kind == "integer":
        return st.integers(schema.get("minimum", -(2**31)), schema.get("maximum", 2**31))
    if kind == "number":
        low, high = schema.get("minimum"), schema.get("maximum")
        return st.floats(low, high, allow_nan=False, allow_infinity=False)
    if kind == "boolean":
        return st.booleans()
    if kind == "null":
        return st.none()
    return json_values


def _object(schema: Schema, schemas: dict[str, Schema], depth: int) -> st.SearchStrategy[Any]:
    properties: dict[str, Schema] = schema.get("properties") or {}
    required = set(schema.get("required") or ())
    fields = {k: from_schema(v, schemas, depth) for k, v in properties.items()}
    return st.fixed_dictionaries(
        {k: s for k, s in fields.items() if k in required},
        optional={k: s for k, s in fields.items() if k not in required},
    )


def _merge(parts: tuple[Any, ...]) -> Any:
    dicts = [p for p in parts if isinstance(p, dict)]
    if not dicts:
        return parts[0]
    out: dict[str, Any] = {}
    for part in dicts:
        out.update(part)
    return out


@st.composite
def broken(draw: st.DrawFn, valid: st.SearchStrategy[dict[str, Any]]) -> Any:
    """A body from ``valid``, often broken in one place (or a JSON value of the wrong kind)."""
    body = draw(valid)
    how = draw(
        st.sampled_from(["as is", "as is", "retype", "drop", "add", "null", "not an object"])
    )
    if how == "not an object":
        return draw(json_values)
    if not isinstance(body, dict) or not body or how == "as is":
        return body
    key = draw(st.sampled_from(sorted(body)))
    body = dict(body)
    if how == "retype":
        body[key] = draw(json_values)
    elif how == "drop":
        del body[key]
    elif how == "add":
        body[draw(st.text(min_size=1, max_size=10))] = draw(json_values)
    else:
        body[key] = None
    return body
