"""Who is asking: the credential a request carries, and the errors for a wrong one.

Accepted as ``Authorization: Bearer <key>`` (OpenAI's and Ollama's clients), ``X-API-Key`` (source
document 004) and ``x-api-key`` (Anthropic's client); ASGI gives header names in lower case, so
the last two are one. Error messages show a key by its prefix only.
"""

from __future__ import annotations

from collections.abc import Iterable

from ..errors import GatewayError
from .keys import KEY_PREFIX, KeyRecord, key_prefix

__all__ = [
    "ADMIN",
    "AuthenticationError",
    "PermissionDeniedError",
    "credential",
    "shown",
]

#: the principal of a request that carries ``server.admin_key`` (the bootstrap credential)
ADMIN = KeyRecord(name="admin", prefix="(server.admin_key)", admin=True, priority=1)


class AuthenticationError(GatewayError):
    status = 401
    type = "authentication_error"
    code = "invalid_api_key"

    def headers(self) -> dict[str, str]:
        return {**super().headers(), "WWW-Authenticate": 'Bearer realm="turnout"'}


class PermissionDeniedError(GatewayError):
    status = 403
    type = "permission_error"
    code = "permission_denied"


def credential(headers: Iterable[tuple[bytes, bytes]]) -> str | None:
    """The key a request carries, or None."""
    for name, value in headers:
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").strip().partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
        elif name == b"x-api-key" and value.strip():
            return value.decode("latin-1").strip()
    return None


def shown(raw: str) -> str:
    """How an error may name a key it was given: a gateway key's prefix, nothing of another."""
    if raw.startswith(KEY_PREFIX):
        return f"'{key_prefix(raw)}…'"
    return "(not a gateway key: they start with 'gw_')"


def missing(path: str) -> AuthenticationError:
    return AuthenticationError(
        f"{path} needs a gateway key: send it as 'Authorization: Bearer gw_...' or "
        "'X-API-Key: gw_...' (turnout keys create NAME makes one).",
        code="missing_api_key",
    )


def invalid(raw: str) -> AuthenticationError:
    return AuthenticationError(
        f"The key {shown(raw)} is not a valid gateway key: unknown, revoked or expired."
    )


def out_of_scope(key: KeyRecord, model: str) -> PermissionDeniedError:
    return PermissionDeniedError(
        f"Key '{key.name}' may not use model '{model}'; it is limited to {key.scope()}.",
        param="model",
        code="model_not_allowed",
    )


def not_admin(key: KeyRecord, what: str) -> PermissionDeniedError:
    return PermissionDeniedError(
        f"{what} needs an admin key; key '{key.name}' is not one "
        "(turnout keys create NAME --admin, or server.admin_key).",
        code="admin_key_required",
    )
