"""``/v1/keys`` (admin keys only) and ``/v1/usage`` (an admin key sees every key's usage, any
other key its own). A new or rotated key is in the answer once, as ``key``; every other answer
names keys by their prefix."""

from __future__ import annotations

import time
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from ..access.auth import missing, not_admin
from ..access.keys import KeyRecord, parse_duration
from ..errors import GatewayError, InvalidRequestError, NotFoundError
from ..store.keyring import KeyError_, announce, create_key, key_json, revoke_key, rotate_key
from ..store.service import Access
from ..telemetry import CURRENT
from .pipeline import Route
from .responses import json_response

__all__ = [
    "access_of",
    "create",
    "json_object",
    "list_json",
    "report",
    "revoke",
    "rotate_secret",
    "routes",
]


class _NoAccess(GatewayError):
    status = 503
    code = "keys_unavailable"


def access_of(request: Request) -> Access:
    """The gateway's keys and ledger; 503 when it runs without them."""
    access: Access | None = request.app.state.gateway.access
    if access is None:
        raise _NoAccess("This gateway runs without keys and a ledger (Gateway.use_access).")
    return access


def _principal() -> KeyRecord | None:
    trace = CURRENT.get()
    return trace.principal if trace is not None else None


def _admin(request: Request) -> Access:
    """The gateway's access, for an admin key; 403 for another key. Without any key in use and
    without ``server.admin_key``, on loopback, it is open like every other route."""
    access = access_of(request)
    principal = _principal()
    if principal is not None and not principal.admin:
        raise not_admin(principal, f"{request.method} {request.url.path}")
    if principal is None and (access.required or access.config.server.admin_key is not None):
        raise missing(f"{request.method} {request.url.path}")
    return access


async def json_object(request: Request) -> dict[str, Any]:
    raw = await request.body()
    try:
        body = orjson.loads(raw) if raw.strip() else {}
    except orjson.JSONDecodeError as exc:
        raise InvalidRequestError(f"The body is not JSON: {exc}.", code="invalid_json") from None
    if not isinstance(body, dict):
        raise InvalidRequestError("The body must be a JSON object.", code="invalid_json")
    return body


# The operations, shared by ``/v1/keys`` (behind an admin key) and the dashboard's
# ``/ui/api/keys`` (behind its session, turnout/server/ui/keys.py): each takes the gateway's
# `Access`, changes the store through turnout/store/keyring.py, reloads this instance's keys and
# tells the others (Redis), and answers with what may be shown.


async def list_json(access: Access) -> list[dict[str, Any]]:
    """Every key, live or not, by its prefix (never the key), with its spend when budgeted."""
    data = []
    for record, last_used in await access.store.list_keys():
        spent: float | None = None
        if record.budget is not None:
            spent = access.quotas.spent(record.name, record.budget_period)
        data.append(key_json(record, last_used, spent))
    return data


async def create(access: Access, body: dict[str, Any]) -> dict[str, Any]:
    """A new key from a request body; the raw key is in the answer, once, as ``key``."""
    name = body.get("name")
    if not isinstance(name, str):
        raise InvalidRequestError("'name' is required: the key's name.", param="name")
    models = body.get("models") or []
    if not isinstance(models, list) or not all(isinstance(m, str) for m in models):
        raise InvalidRequestError("'models' must be a list of patterns.", param="models")
    try:
        raw, record = await create_key(
            access.store,
            name,
            models=models,
            rpm=_int(body, "rpm"),
            tpm=_int(body, "tpm"),
            budget=_num(body, "budget"),
            budget_period=str(body.get("budget_period") or "30d"),
            expires=_text(body, "expires"),
            priority=_int(body, "priority") or 1,
            admin=bool(body.get("admin", False)),
        )
    except KeyError_ as exc:  # a bad name or limit, a name in use
        raise InvalidRequestError(str(exc), code="invalid_key_request") from None
    await _changed(access)
    return {**key_json(record, None, None), "key": raw}


async def revoke(access: Access, name: str) -> dict[str, Any]:
    try:
        await revoke_key(access.store, name)
    except KeyError_ as exc:
        raise NotFoundError(str(exc), code="key_not_found") from None
    await _changed(access)
    return {"name": name, "revoked": True}


async def rotate_secret(access: Access, name: str, body: dict[str, Any]) -> dict[str, Any]:
    """A new secret for ``name`` (in the answer, once, as ``key``); the old one works for
    ``grace`` (default 1h)."""
    grace = _text(body, "grace") or "1h"
    try:
        raw, until = await rotate_key(access.store, name, grace)
    except KeyError_ as exc:
        raise NotFoundError(str(exc), code="key_not_found") from None
    await _changed(access)
    return {"name": name, "key": raw, "previous_valid_until": until}


async def _changed(access: Access) -> None:
    await access.cache.refresh()
    await announce(access.config.storage.redis_url)


async def list_keys(request: Request) -> Response:
    access = _admin(request)
    return json_response({"object": "list", "data": await list_json(access)})


async def new_key(request: Request) -> Response:
    access = _admin(request)
    return json_response(await create(access, await json_object(request)), 201)


async def delete_key(request: Request) -> Response:
    access = _admin(request)
    return json_response(await revoke(access, request.path_params["name"]))


async def rotate(request: Request) -> Response:
    access = _admin(request)
    body = await json_object(request)
    return json_response(await rotate_secret(access, request.path_params["name"], body))


async def usage(request: Request) -> Response:
    access = access_of(request)
    params = request.query_params
    principal = _principal()
    key = params.get("key")
    if principal is not None and not principal.admin:
        key = principal.name  # a key sees its own usage
    elif principal is None and (access.required or access.config.server.admin_key is not None):
        raise missing(f"{request.method} {request.url.path}")
    data = await report(request, access, params.get("by", "key"), params.get("since"), key)
    return json_response({"object": "list", "by": params.get("by", "key"), "data": data})


async def report(
    request: Request, access: Access, by: str, since: str | None, key: str | None
) -> list[dict[str, Any]]:
    """Usage grouped ``by`` key, model, backend or day, since a duration ago (``7d``), of one
    key or all; what has been served so far is written to the ledger first."""
    start = None
    if since:
        try:
            start = time.time() - parse_duration(since)
        except ValueError as exc:
            raise InvalidRequestError(str(exc), param="since") from None
    request.app.state.gateway.telemetry.flush()
    await access.ledger.flush()
    try:
        rows: list[dict[str, Any]] = await access.store.usage_report(by=by, since=start, key=key)
    except ValueError as exc:
        raise InvalidRequestError(str(exc), param="by") from None
    return rows


def _int(body: dict[str, Any], name: str) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidRequestError(f"'{name}' must be an integer, got {value!r}.", param=name)
    return value


def _num(body: dict[str, Any], name: str) -> float | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidRequestError(f"'{name}' must be a number, got {value!r}.", param=name)
    return float(value)


def _text(body: dict[str, Any], name: str) -> str | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidRequestError(f"'{name}' must be a string like '30d'.", param=name)
    return value


routes = [
    Route("/v1/keys", list_keys, ("GET",), admin=True),
    Route("/v1/keys", new_key, ("POST",), admin=True),
    Route("/v1/keys/{name}", delete_key, ("DELETE",), admin=True),
    Route("/v1/keys/{name}/rotate", rotate, ("POST",), admin=True),
    Route("/v1/usage", usage),
]
