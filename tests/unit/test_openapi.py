"""``GET /openapi.json`` and ``GET /docs``: the document validates as OpenAPI 3.1, every route of
the app's route table is in it (enumerated from the table, not listed here), and what the
gateway really answers validates against what the document says it answers."""

from __future__ import annotations

import gzip
import re
from pathlib import Path
from typing import Any

import orjson
import pytest
from openapi_spec_validator import validate as validate_spec
from openapi_spec_validator.validation.validators import OpenAPIV31SpecValidator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012
from starlette.testclient import TestClient

from tests.support.openapi import SpecValidator
from tests.unit.test_server import MemoryProvider
from turnout import __version__
from turnout.errors import NotFoundError
from turnout.gateway import Gateway
from turnout.routing import Catalog, Router
from turnout.server import create_app, docs, openapi

_URI = "urn:turnout:openapi"


def gateway() -> Gateway:
    gw = Gateway({"default_embedded": False}, environ={})
    local = MemoryProvider("local", ["m", "n"])
    gw.providers = {"local": local}
    gw.catalog = Catalog(gw.providers, {"fast": "local/m"})
    gw.router = Router(gw.catalog)
    return gw


@pytest.fixture(scope="module")
def client() -> Any:
    with TestClient(create_app(gateway()), base_url="http://127.0.0.1") as http:
        yield http


@pytest.fixture(scope="module")
def document(client: Any) -> dict[str, Any]:
    response = client.get("/openapi.json")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    doc: dict[str, Any] = response.json()
    return doc


def table() -> list[Any]:
    return docs.routes_of(create_app(gateway()))


def test_validates_as_openapi_3_1(document: dict[str, Any]) -> None:
    assert document["openapi"] == "3.1.0"
    assert document["info"]["version"] == __version__
    validate_spec(document, cls=OpenAPIV31SpecValidator)


def test_every_mounted_route_is_documented(document: dict[str, Any]) -> None:
    routes = table()
    assert len(routes) > 10
    served = {
        (method, re.sub(r"{(\w+)(:\w+)?}", r"{\1}", path))
        for method, path, _ in openapi.operations(routes)
    }
    documented = {(m, p) for p, ops in document["paths"].items() for m in ops}
    assert openapi.missing(routes) == []
    assert served == documented  # nothing left out, nothing described that is not served
    for path in document["paths"]:
        for name in re.findall(r"{(\w+)}", path):
            for op in document["paths"][path].values():
                params = [(p["name"], p["in"], p["required"]) for p in op["parameters"]]
                assert (name, "path", True) in params


def test_a_route_left_undocumented_is_missing() -> None:
    class Extra:
        path = "/v1/not-described/{thing:path}"
        methods = frozenset({"GET", "HEAD", "PUT"})

    routes = [*table(), Extra()]
    assert openapi.missing(routes) == [
        "GET /v1/not-described/{thing:path}",
        "PUT /v1/not-described/{thing:path}",
    ]
    doc = openapi.document(routes, version="0")
    assert "/v1/not-described/{thing}" not in doc["paths"]


def _validator(document: dict[str, Any], schema: dict[str, Any]) -> Any:
    resource = Resource.from_contents(document, default_specification=DRAFT202012)
    registry: Registry[Any] = Registry().with_resource(_URI, resource)
    ref = schema["$ref"].replace("#/", f"{_URI}#/", 1) if "$ref" in schema else None
    return SpecValidator({"$ref": ref} if ref else schema, registry=registry)


def check(document: dict[str, Any], method: str, path: str, status: int, response: Any) -> None:
    """The reply validates against the schema the document gives for it (its status, or the
    4XX/5XX range), in the content type it was sent as."""
    op = document["paths"][path][method]
    described = op["responses"].get(str(status)) or op["responses"][f"{str(status)[0]}XX"]
    if "$ref" in described:
        described = document["components"]["responses"][described["$ref"].rsplit("/", 1)[1]]
    media = response.headers["content-type"].split(";")[0]
    schema = described["content"][media]["schema"]
    errors = list(_validator(document, schema).iter_errors(response.json()))
    assert not errors, f"{method} {path} {status}: {errors[0].message}"


def test_answers_validate_against_the_document(client: Any, document: dict[str, Any]) -> None:
    cases: list[tuple[str, str, str, Any]] = [
        ("get", "/health", "/health", None),
        ("get", "/stats", "/stats", None),
        ("get", "/v1/models", "/v1/models", None),
        ("get", "/v1/models/local/m", "/v1/models/{model}", None),
        ("get", "/v1/models/nothing-here", "/v1/models/{model}", None),
        ("get", "/v1/providers", "/v1/providers", None),
        ("post", "/v1/chat/completions", "/v1/chat/completions",
         {"model": "fast", "messages": [{"role": "user", "content": "hi"}]}),
        ("post", "/v1/chat/completions", "/v1/chat/completions", {"model": "fast"}),
        ("post", "/v1/chat/completions", "/v1/chat/completions",
         {"model": "nope", "messages": [{"role": "user", "content": "hi"}]}),
        ("post", "/v1/embeddings", "/v1/embeddings", {"model": "fast", "input": 3.5}),
        ("post", "/v1/models/local/m/load", "/v1/models/{model}/load", {}),
        ("post", "/v1/messages", "/v1/messages",
         {"model": "fast", "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]}),
        ("post", "/v1/messages", "/v1/messages", {"model": "fast", "messages": []}),
        ("post", "/v1/messages/count_tokens", "/v1/messages/count_tokens",
         {"model": "fast", "messages": [{"role": "user", "content": "hi"}]}),
        ("get", "/api/version", "/api/version", None),
        ("get", "/api/tags", "/api/tags", None),
        ("get", "/api/ps", "/api/ps", None),
        ("post", "/api/chat", "/api/chat",
         {"model": "fast", "stream": False, "messages": [{"role": "user", "content": "hi"}]}),
        ("post", "/api/chat", "/api/chat", {"model": "nope", "stream": False, "messages": []}),
        ("post", "/api/generate", "/api/generate",
         {"model": "fast", "stream": False, "prompt": "hi"}),
        ("post", "/v1/responses", "/v1/responses", {"model": "fast", "input": "hi"}),
        ("post", "/v1/responses", "/v1/responses", {"model": "fast"}),
        ("get", "/v1/responses/resp_nothing", "/v1/responses/{response_id}", None),
        ("get", "/api/local-llm/providers", "/api/local-llm/providers", None),
        ("post", "/api/local-llm/proxy", "/api/local-llm/proxy",
         {"model": "fast", "messages": [{"role": "user", "content": "hi"}]}),
        ("post", "/api/local-llm/proxy", "/api/local-llm/proxy", {"messages": []}),
    ]  # fmt: skip
    statuses = set()
    failures = []
    for method, url, path, body in cases:
        response = client.request(method.upper(), url, json=body)
        statuses.add(response.status_code)
        try:
            check(document, method, path, response.status_code, response)
        except (AssertionError, KeyError) as exc:
            failures.append(f"{method} {url} {response.status_code}: {exc!r} {response.text[:200]}")
    assert not failures, "\n".join(failures)
    assert {200, 400, 404} <= statuses


def test_requests_the_document_describes_are_accepted(document: dict[str, Any]) -> None:
    """The examples a client would build from the document validate against it."""
    chat = document["paths"]["/v1/chat/completions"]["post"]["requestBody"]
    schema = chat["content"]["application/json"]["schema"]
    good = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    assert not list(_validator(document, schema).iter_errors(good))
    assert list(_validator(document, schema).iter_errors({"model": "m"}))


def test_docs_page_renders_from_vendored_files(client: Any) -> None:
    page = client.get("/docs")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    sources = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert sources and all(s.startswith("/docs/assets/") for s in sources)  # no CDN
    for source in sources:
        zipped = client.get(source, headers={"Accept-Encoding": "gzip"})
        assert zipped.status_code == 200
        plain = client.get(source, headers={"Accept-Encoding": "identity"})
        assert plain.status_code == 200
        assert "content-encoding" not in plain.headers
        assert zipped.content == plain.content  # httpx decodes the gzipped one
        assert len(plain.content) > 20_000
    bundle = client.get("/docs/assets/swagger-ui-bundle.js").text
    assert "SwaggerUIBundle" in bundle
    missing = client.get("/docs/assets/..%2Fopenai.json")
    assert missing.status_code == 404
    assert set(orjson.loads(missing.content)) == {"error"}
    raw = (docs._ASSETS / "swagger-ui.css.gz").read_bytes()
    assert gzip.decompress(raw)[:2]


def test_each_route_errors_in_the_dialect_documented(document: dict[str, Any]) -> None:
    """A route's error body (its front's `Errors`) validates against the error schema the
    document gives it, and does not against another dialect's."""
    schemas = openapi.dialects()
    checked = 0
    for method, path, route in openapi.operations(table()):
        template = re.sub(r"{(\w+)(:\w+)?}", r"{\1}", path)
        op = document["paths"][template][method]
        dialect = op["responses"]["4XX"]["$ref"].rsplit("/", 1)[1].removesuffix("_error")
        body = orjson.loads(orjson.dumps(route.errors.body(NotFoundError("gone"))))
        schema = {"$ref": f"#/components/schemas/{schemas[dialect]}"}
        errors = list(_validator(document, schema).iter_errors(body))
        assert not errors, f"{method.upper()} {path}: {body} is not {dialect}: {errors[0].message}"
        others = [d for d in schemas if d != dialect]
        for other in others:
            schema = {"$ref": f"#/components/schemas/{schemas[other]}"}
            assert list(_validator(document, schema).iter_errors(body)), (path, other)
        checked += 1
    assert checked == len(openapi.operations(table()))


def test_admin_routes_say_they_need_the_admin_key(document: dict[str, Any]) -> None:
    admin = [(m, p) for m, p, r in openapi.operations(table()) if r.admin]
    assert admin  # downloads, load, unload, pulls and deletes
    for method, path in admin:
        op = document["paths"][re.sub(r"{(\w+)(:\w+)?}", r"{\1}", path)][method]
        assert op["security"] == [{"bearer": []}]
        assert "admin key" in op["description"]


def test_every_described_operation_makes_a_valid_document() -> None:
    """paths.yaml may describe routes another branch mounts (keys, usage): every entry, mounted
    here or not, must make a valid document, so they are right the day they are mounted."""
    import yaml

    described = yaml.safe_load((Path(openapi.__file__).parent / "paths.yaml").read_text())

    class Described:
        def __init__(self, path: str, methods: list[str]) -> None:
            self.path, self.methods = path, frozenset(m.upper() for m in methods)

    routes = [Described(path, list(ops)) for path, ops in described.items()]
    doc = openapi.document(routes, version="0")
    assert sum(len(ops) for ops in doc["paths"].values()) == sum(len(o) for o in described.values())
    validate_spec(doc, cls=OpenAPIV31SpecValidator)
