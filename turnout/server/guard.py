"""The pipeline's first stage: what a request must be before any route sees it.

- **A bounded body on every route.** A body declared larger than ``server.max_body_bytes`` is
  refused before a byte of it is read; a body without a declared length is counted as it arrives
  and refused once it passes the limit, whatever the endpoint reads it with.
- **A Host this gateway answers to.** A page on a foreign site can rebind its own DNS name to
  127.0.0.1 and then read the gateway's answers as if same-origin (the attack behind the
  exposed-Ollama incidents); the browser still sends that name as ``Host``. So a name must be a
  loopback name (``localhost``), the configured ``server.host``, or one of ``server.allowed_hosts``
  (``"*"`` allows any); an IP address is always accepted, since a rebinding page cannot make a
  browser send one.
- **No cross-origin change.** A browser adds ``Origin`` to a cross-origin POST, and a "simple"
  one (``text/plain``, a form) needs no preflight: any page the user opens could spend their
  keys or load and unload models. A request that changes something and carries an ``Origin``
  other than the gateway itself or one of ``server.cors_origins`` is refused.
- **JSON routes take no browser form.** A POST, PUT or PATCH body typed ``text/plain`` or
  ``multipart/form-data`` (what a page can send anywhere without a preflight) is refused, and so
  is a form type from a browser; a form type from a client without ``Origin`` (``curl -d`` sends
  one) is read as JSON, as Ollama does. Other types need a preflight, granted only to
  ``server.cors_origins``.

Refusals are told in the route's dialect (the pipeline renders the `GatewayError`).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from starlette.types import Message, Receive

from ..config import ServerConfig
from ..errors import ForbiddenError, GatewayError, RequestTooLargeError
from .pipeline import Exchange, Handler

__all__ = ["UnsupportedMediaTypeError", "guard"]

_CHANGING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
_WITH_BODY = frozenset({"POST", "PUT", "PATCH"})
#: body types a browser may send to another origin without a preflight (a form only with Origin)
_SIMPLE = frozenset({"text/plain", "multipart/form-data"})
_FORM = "application/x-www-form-urlencoded"
_LOOPBACK_NAMES = frozenset({"localhost", "localhost.", "ip6-localhost", "ip6-loopback"})


class UnsupportedMediaTypeError(GatewayError):
    status = 415
    type = "invalid_request_error"
    code = "unsupported_media_type"


class _Policy:
    """What the guard checks against, from ``server.*`` (read on the app's first request)."""

    __slots__ = ("any_host", "limit", "names", "origins")

    def __init__(self, server: ServerConfig) -> None:
        self.limit = server.max_body_bytes
        self.names = _host_names(server.host, server.allowed_hosts)
        self.any_host = "*" in server.allowed_hosts
        self.origins = frozenset(o.rstrip("/").lower() for o in server.cors_origins)


def guard(next: Handler) -> Handler:
    """The stage (turnout/server/app.py's ``STAGES``)."""
    policy: _Policy | None = None

    async def check(x: Exchange) -> None:
        nonlocal policy
        if policy is None:
            policy = _Policy(x.app.state.gateway.config.server)
        headers = _headers(x.scope["headers"])
        if not policy.any_host:
            _check_host(headers.get(b"host"), policy.names)
        method = x.scope["method"]
        origin = headers.get(b"origin")
        if method in _CHANGING and origin is not None:
            _check_origin(origin, headers.get(b"host"), policy.origins)
        if method in _WITH_BODY:
            _check_type(headers.get(b"content-type"), origin is not None)
            _bound(x, headers.get(b"content-length"), policy.limit)
        await next(x)

    return check


def _headers(raw: Iterable[tuple[bytes, bytes]]) -> dict[bytes, bytes]:
    wanted = {b"host", b"origin", b"content-type", b"content-length"}
    return {name: value for name, value in raw if name in wanted}


def _host_names(host: str, allowed: Iterable[str]) -> frozenset[str]:
    names = set(_LOOPBACK_NAMES) | {a.lower().rstrip(".") for a in allowed}
    if host not in ("0.0.0.0", "::", ""):
        names.add(host.strip("[]").lower())
    return frozenset(names)


def _hostname(value: str) -> str:
    """``value`` (a Host header or an origin's authority) without its port, lower case."""
    if value.startswith("["):  # [::1]:8400
        return value[1 : value.find("]")].lower() if "]" in value else value.lower()
    return value.rsplit(":", 1)[0].lower() if value.count(":") == 1 else value.lower()


def _is_address(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def _check_host(raw: bytes | None, names: frozenset[str]) -> None:
    if raw is None:
        return  # HTTP/1.0 without Host: no browser sends that
    host = raw.decode("latin-1")
    name = _hostname(host).rstrip(".")
    if name in names or _is_address(name):
        return
    raise ForbiddenError(
        f"Host '{host}' is not a name this gateway answers to (a page rebinding its DNS name to "
        "this machine sends it); add it to server.allowed_hosts if it is yours.",
        param="Host",
        code="host_not_allowed",
    )


def _check_origin(raw: bytes, host: bytes | None, allowed: frozenset[str]) -> None:
    origin = raw.decode("latin-1").rstrip("/").lower()
    if origin in allowed:
        return
    authority = origin.split("://", 1)[-1]
    if host is not None and authority == host.decode("latin-1").lower():
        return  # the gateway's own pages
    raise ForbiddenError(
        f"A cross-origin request from '{origin}' may not change anything here (a web page "
        "could otherwise act with this machine's access); add the origin to "
        "server.cors_origins if it is yours.",
        param="Origin",
        code="origin_not_allowed",
    )


def _check_type(raw: bytes | None, from_browser: bool) -> None:
    """Refuse the body types a browser sends cross-origin without asking first (CORS's
    "simple" requests: ``text/plain``, ``multipart/form-data``, and a form from a browser); any
    other type needs a preflight, which the gateway grants only to ``server.cors_origins``."""
    if raw is None:
        return
    media = raw.decode("latin-1").split(";", 1)[0].strip().lower()
    if media in _SIMPLE or (media == _FORM and from_browser):
        raise UnsupportedMediaTypeError(
            f"Content-Type '{media}' is not accepted: send the body as application/json.",
            param="Content-Type",
        )


def _bound(x: Exchange, declared: bytes | None, limit: int) -> None:
    if declared is not None:
        if declared.isdigit() and int(declared) > limit:
            raise RequestTooLargeError(
                f"Request body of {int(declared)} bytes exceeds the limit of {limit} bytes "
                "(server.max_body_bytes)."
            )
        return  # the server reads no more than declared
    x._receive = _counting(x._receive, limit)


def _counting(receive: Receive, limit: int) -> Receive:
    """``receive`` refusing a body (sent without a length) once it passes ``limit`` bytes."""
    seen = 0

    async def counted() -> Message:
        nonlocal seen
        message = await receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > limit:
                raise RequestTooLargeError(
                    f"Request body exceeds the limit of {limit} bytes (server.max_body_bytes)."
                )
        return message

    return counted
