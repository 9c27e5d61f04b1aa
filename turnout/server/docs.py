"""``GET /openapi.json`` (the document of every route, turnout/server/openapi/) and ``GET /docs``,
Swagger UI rendering it from files vendored in the package (swagger-ui-dist 5.35.0, Apache-2.0,
its licence and notices beside it): nothing is fetched from elsewhere at run time.

The document is built once per app, from the app's own route table, when first asked for. The
renderer's files are stored gzipped and sent as they are to clients that accept gzip.
"""

from __future__ import annotations

import gzip
from pathlib import Path
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response

from .. import __version__
from ..errors import NotFoundError
from . import openapi
from .pipeline import Route

__all__ = ["openapi_document", "routes", "routes_of"]

_ASSETS = Path(openapi.__file__).resolve().parent / "swagger-ui"
_TYPES = {"swagger-ui-bundle.js": "application/javascript", "swagger-ui.css": "text/css"}

_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>turnout API</title>
<link rel="stylesheet" href="/docs/assets/swagger-ui.css">
</head>
<body>
<div id="docs"></div>
<script src="/docs/assets/swagger-ui-bundle.js"></script>
<script>
window.ui = SwaggerUIBundle({url: "/openapi.json", dom_id: "#docs", deepLinking: true});
</script>
</body>
</html>
"""


def routes_of(app: Any) -> list[Route]:
    """The route table of a turnout app (`Pipeline.routes`)."""
    return list(app.routes)


def openapi_document(app: Any) -> bytes:
    cached: bytes | None = getattr(app.state, "openapi", None)
    if cached is None:
        cached = orjson.dumps(openapi.document(routes_of(app), version=__version__))
        app.state.openapi = cached
    return cached


async def openapi_json(request: Request) -> Response:
    return Response(openapi_document(request.app), media_type="application/json")


async def docs(request: Request) -> Response:
    return HTMLResponse(_PAGE)


async def asset(request: Request) -> Response:
    name = request.path_params["name"]
    media = _TYPES.get(name)
    if media is None:
        raise NotFoundError(f"No such file: /docs/assets/{name}.")
    data = (_ASSETS / f"{name}.gz").read_bytes()
    headers = {"Cache-Control": "public, max-age=86400"}
    if "gzip" in request.headers.get("accept-encoding", ""):
        headers["Content-Encoding"] = "gzip"
        headers["Vary"] = "Accept-Encoding"
        return Response(data, media_type=media, headers=headers)
    return Response(gzip.decompress(data), media_type=media, headers=headers)


routes = [
    Route("/openapi.json", openapi_json),
    Route("/docs", docs),
    Route("/docs/assets/{name}", asset),
]
