"""The dashboard's Keys page: list, create, revoke and rotate gateway keys, and compare their
usage, for a logged-in person (`session.require`: the admin key's session, or loopback while no
keys are in use).

Each route calls the same operations as ``/v1/keys`` and ``/v1/usage`` (turnout/server/keys.py),
which go through turnout/store/keyring.py like ``turnout keys``. A created or rotated key is in
that one answer (``key``, sent with ``Cache-Control: no-store``) for the page to show once;
every list names keys by their prefix. The changing routes take JSON only (POST) or no body
(DELETE), so the guard stage refuses them from another origin and as a browser form, and the
session cookie is ``SameSite=Strict``: no other site's page can act through it.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from .. import keys
from ..pipeline import Route
from ..responses import json_response
from .session import require

__all__ = ["routes"]

#: an answer holding a raw key is kept by no cache
_ONCE = {"Cache-Control": "no-store"}


async def list_keys(request: Request) -> Response:
    require(request)
    access = keys.access_of(request)
    return json_response({"object": "list", "data": await keys.list_json(access)})


async def new_key(request: Request) -> Response:
    require(request)
    access = keys.access_of(request)
    body = await keys.json_object(request)
    return json_response(await keys.create(access, body), 201, _ONCE)


async def revoke_key(request: Request) -> Response:
    require(request)
    access = keys.access_of(request)
    return json_response(await keys.revoke(access, request.path_params["name"]))


async def rotate_key(request: Request) -> Response:
    require(request)
    access = keys.access_of(request)
    body = await keys.json_object(request)
    answer = await keys.rotate_secret(access, request.path_params["name"], body)
    return json_response(answer, 200, _ONCE)


async def usage(request: Request) -> Response:
    """Every key's usage side by side (``?by=key``), or by model or day (``?since=7d``)."""
    require(request)
    access = keys.access_of(request)
    params = request.query_params
    by = params.get("by", "key")
    data = await keys.report(request, access, by, params.get("since"), params.get("key"))
    return json_response({"object": "list", "by": by, "data": data})


routes = [
    Route("/ui/api/keys", list_keys),
    Route("/ui/api/keys", new_key, ("POST",)),
    Route("/ui/api/keys/{name}", revoke_key, ("DELETE",)),
    Route("/ui/api/keys/{name}/rotate", rotate_key, ("POST",)),
    Route("/ui/api/usage", usage),
]
