"""One exception tree for everything a client can be told, and its OpenAI rendering.

    GatewayError                      status  OpenAI type
    ├── InvalidRequestError             400   invalid_request_error  (param names the field)
    │   └── RequestTooLargeError        413   invalid_request_error
    ├── ModelNotFoundError              404   not_found_error        (code model_not_found)
    ├── NotFoundError                   404   not_found_error        (unknown route)
    ├── MethodNotAllowedError           405   invalid_request_error
    ├── CapabilityError                 400   invalid_request_error  (nobody can do it)
    ├── NoBackendAvailableError         503   service_unavailable    Retry-After
    └── BackendError                    502   backend_error          (the backend failed)
        ├── BackendUnavailableError     502   backend_unavailable    refused/reset, retryable
        ├── BackendTimeoutError         504   timeout                retryable
        ├── BackendRateLimitedError     429   rate_limit_error       retryable, Retry-After
        ├── BackendProtocolError        502   backend_error          (malformed reply) retryable
        └── BackendRejectedError        4xx   invalid_request_error  (backend said no)

Two flags tell the router what a failure allows: ``retryable`` (the same backend may succeed if
asked again: refused connections, timeouts, 429, 5xx) and ``fallback`` (another backend may
succeed: all of those, plus a backend lacking the model or refusing turnout's credentials). A
request the client got wrong (``BackendRejectedError``) allows neither.

Every error names the field or backend at fault. A backend's own message is passed on only after
`clean_upstream_message` has stripped tracebacks and cut it short.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Iterable
from typing import Any

__all__ = [
    "REDACTED",
    "BackendError",
    "BackendProtocolError",
    "BackendRateLimitedError",
    "BackendRejectedError",
    "BackendTimeoutError",
    "BackendUnavailableError",
    "CapabilityError",
    "ConfigError",
    "ForbiddenError",
    "GatewayError",
    "InvalidRequestError",
    "MethodNotAllowedError",
    "ModelNotFoundError",
    "NoBackendAvailableError",
    "NotFoundError",
    "RedactingFilter",
    "RequestTooLargeError",
    "ShuttingDownError",
    "clean_upstream_message",
    "redact",
    "register_secrets",
]

_MAX_UPSTREAM_MESSAGE = 400


class ConfigError(Exception):
    """An invalid setting; raised at start-up with the key at fault and what is allowed."""


class GatewayError(Exception):
    """Base of every error a client may see."""

    status: int = 500
    type: str = "server_error"
    code: str | None = None
    retryable: bool = False
    fallback: bool = False

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        status: int | None = None,
        retry_after: float | None = None,
        backend: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status
        self.retry_after = retry_after
        self.backend = backend
        #: what the operator sees (logs, /stats, /v1/providers): the message plus what a client
        #: must not, such as a backend's address; secrets redacted all the same
        self.detail = message

    def to_openai(self) -> dict[str, Any]:
        """The body OpenAI's API returns for an error: all four keys, always present."""
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }

    def headers(self) -> dict[str, str]:
        if self.retry_after is None:
            return {}
        # Round up: telling a client to come back before the backend is ready earns another 429.
        return {"Retry-After": str(max(1, math.ceil(self.retry_after)))}


class InvalidRequestError(GatewayError):
    status = 400
    type = "invalid_request_error"


class ForbiddenError(GatewayError):
    """The request is understood and authenticated but not allowed (HTTP 403)."""

    status = 403
    type = "permission_error"
    code = "forbidden"


class RequestTooLargeError(InvalidRequestError):
    status = 413
    code = "request_too_large"


class ModelNotFoundError(GatewayError):
    status = 404
    type = "not_found_error"
    code = "model_not_found"
    fallback = True  # raised by one backend, another may serve the model


class NotFoundError(GatewayError):
    status = 404
    type = "not_found_error"
    code = "not_found"


class MethodNotAllowedError(GatewayError):
    status = 405
    type = "invalid_request_error"
    code = "method_not_allowed"


class CapabilityError(InvalidRequestError):
    code = "unsupported_capability"


class NoBackendAvailableError(GatewayError):
    status = 503
    type = "service_unavailable"
    code = "no_backend_available"


class ShuttingDownError(GatewayError):
    """The gateway is stopping: a new request refused, or one cut at the end of the grace."""

    status = 503
    type = "service_unavailable"
    code = "shutting_down"


class BackendError(GatewayError):
    status = 502
    type = "backend_error"
    code = "backend_error"
    retryable = True
    fallback = True


class BackendUnavailableError(BackendError):
    code = "backend_unavailable"


class BackendTimeoutError(BackendError):
    status = 504
    type = "timeout"
    code = "backend_timeout"


class BackendRateLimitedError(BackendError):
    status = 429
    type = "rate_limit_error"
    code = "rate_limited"


class BackendProtocolError(BackendError):
    code = "backend_protocol_error"


class BackendRejectedError(BackendError):
    """The backend refused the request itself (4xx): retrying elsewhere will not help."""

    status = 400
    type = "invalid_request_error"
    code = "backend_rejected"
    retryable = False
    fallback = False


def clean_upstream_message(text: str) -> str:
    """Keep the human part of a backend's error text: no traceback, no stack, bounded length."""
    original = text
    markers = ("Traceback (most recent call last)", '\n  File "', "\nStack trace", "\ngoroutine ")
    for marker in markers:
        cut = text.find(marker)
        if cut != -1:
            text = text[:cut]
    if not text.strip() and original.strip():
        # Nothing before the traceback: its last line names the exception.
        text = original.strip().splitlines()[-1]
    text = redact(" ".join(text.split()))
    if len(text) > _MAX_UPSTREAM_MESSAGE:
        text = text[: _MAX_UPSTREAM_MESSAGE - 1] + "…"
    return text


# Secrets: every configured credential (backend API keys, header values, the admin key) is
# registered at start-up and replaced wherever text reaches a client or a log: a backend's error
# reply may echo the request's headers, an exception may carry a URL with credentials in it.

_REDACTED = "[redacted]"
_MIN_SECRET = 6  # shorter values would redact ordinary words
_secrets: set[str] = set()
_secret_pattern: re.Pattern[str] | None = None
#: credentials in text whether registered or not: bearer tokens, API-key headers and fields,
#: user:password in URLs
_CREDENTIALS = re.compile(
    r"(?i)(bearer\s+)[A-Za-z0-9._~+/=-]{8,}"
    r"|((?:x-api-key|api[-_]key|authorization|x-goog-api-key|password|secret|token)"
    r"[\"']?\s*[:=]\s*[\"']?)(?!\[redacted\]|bearer\s)[^\s\"',;}]{6,}"
    r"|(://[^/\s:@]+:)[^/\s@]+(@)"
)


def register_secrets(values: Iterable[str | None]) -> None:
    """Add credentials that `redact` must never let through."""
    global _secret_pattern
    _secrets.update(v for v in values if v and len(v) >= _MIN_SECRET)
    if _secrets:
        ordered = sorted(_secrets, key=len, reverse=True)  # the longest first
        _secret_pattern = re.compile("|".join(re.escape(v) for v in ordered))


def _credential(match: re.Match[str]) -> str:
    if match.group(1):
        return match.group(1) + _REDACTED
    if match.group(2):
        return match.group(2) + _REDACTED
    return f"{match.group(3)}{_REDACTED}{match.group(4)}"


def redact(text: str) -> str:
    """``text`` with every registered secret and every credential-looking value replaced."""
    if _secret_pattern is not None:
        text = _secret_pattern.sub(_REDACTED, text)
    return _CREDENTIALS.sub(_credential, text)


#: a record attribute: its message was redacted when it was built (the request log's lines)
REDACTED = "turnout_redacted"


class RedactingFilter(logging.Filter):
    """A logging filter (put on handlers) that redacts secrets from every record it passes,
    the formatted message and any exception text alike (a record marked `REDACTED` without
    exception text is passed as it is)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.__dict__.get(REDACTED) and not record.exc_info:
            return True
        message = record.getMessage()
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        record.msg, record.args = redact(message), None
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        return True
