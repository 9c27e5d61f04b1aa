"""Validate turnout's answers against OpenAI's official OpenAPI 3.1 description.

The schemas come from ``tests/fixtures/openai/schemas.json``: the response schemas turnout is held
to, with every schema they reference, copied out of OpenAI's official description
(openai/openai-openapi @f85dbe2, MIT) by ``scripts/extract_openai_schemas.py``, so the suite needs
nothing outside the repository. The document is read once per process and registered as one
resource, so every ``$ref: "#/components/schemas/..."`` resolves against it.

The document declares OpenAPI 3.1 but still marks 109 schemas with the 3.0 keyword
``nullable: true`` (among them a stream chunk's ``finish_reason``, ``logprobs`` and ``usage``,
which OpenAI itself sends as ``null``). A plain ``OAS31Validator`` ignores that keyword, so it
would reject OpenAI's own chunks; the validator here is ``OAS31Validator`` extended to honour it:
``null`` is accepted wherever the schema says ``nullable: true``, and nowhere else.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import pytest
from jsonschema.exceptions import ValidationError
from jsonschema.validators import extend
from openapi_schema_validator import OAS31Validator, validate
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

__all__ = ["SPEC_PATH", "SpecValidator", "assert_valid", "schema_names", "spec"]

SPEC_PATH = Path(__file__).resolve().parents[1] / "fixtures/openai/schemas.json"
_URI = "urn:turnout:openai-openapi"


def _honour_nullable(keyword: Any) -> Any:
    def check(validator: Any, value: Any, instance: Any, schema: dict[str, Any]) -> Any:
        if instance is None and schema.get("nullable") is True:
            return
        errors = keyword(validator, value, instance, schema)
        if errors:
            yield from errors

    return check


SpecValidator: Any = extend(
    OAS31Validator, {name: _honour_nullable(fn) for name, fn in OAS31Validator.VALIDATORS.items()}
)


@functools.cache
def spec() -> dict[str, Any]:
    if not SPEC_PATH.is_file():
        pytest.fail(
            f"OpenAI's schemas are missing: expected them at {SPEC_PATH} "
            "(regenerate with scripts/extract_openai_schemas.py)",
            pytrace=False,
        )
    document: dict[str, Any] = json.loads(SPEC_PATH.read_text())
    return document


@functools.cache
def _registry() -> Registry[Any]:
    resource = Resource.from_contents(spec(), default_specification=DRAFT202012)
    registry: Registry[Any] = Registry().with_resource(_URI, resource)
    return registry


def schema_names() -> set[str]:
    return set(spec()["components"]["schemas"])


def assert_valid(instance: Any, schema: str) -> None:
    """Fail the test unless ``instance`` is a valid ``#/components/schemas/<schema>``."""
    if schema not in schema_names():
        pytest.fail(f"the OpenAPI spec has no component schema {schema!r}", pytrace=False)
    try:
        validate(
            instance,
            {"$ref": f"{_URI}#/components/schemas/{schema}"},
            cls=SpecValidator,
            registry=_registry(),
            check_schema=False,
        )
    except ValidationError as exc:
        error = exc
    else:
        return
    path = "/".join(str(p) for p in error.absolute_path)
    message = error.message if len(error.message) < 300 else error.message[:300] + "..."
    pytest.fail(
        f"not a valid {schema} at '/{path}': {message}\ninstance: {json.dumps(instance)[:2000]}",
        pytrace=False,
    )
