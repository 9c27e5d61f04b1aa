"""The error tree: OpenAI rendering, statuses, Retry-After, and cleaning backend messages."""

from __future__ import annotations

import pytest

from turnout.errors import (
    BackendError,
    BackendProtocolError,
    BackendRateLimitedError,
    BackendRejectedError,
    BackendTimeoutError,
    BackendUnavailableError,
    CapabilityError,
    GatewayError,
    InvalidRequestError,
    MethodNotAllowedError,
    ModelNotFoundError,
    NoBackendAvailableError,
    NotFoundError,
    RequestTooLargeError,
    clean_upstream_message,
)

TABLE = [
    # class, status, type, code, retryable
    (GatewayError, 500, "server_error", None, False),
    (InvalidRequestError, 400, "invalid_request_error", None, False),
    (RequestTooLargeError, 413, "invalid_request_error", "request_too_large", False),
    (ModelNotFoundError, 404, "not_found_error", "model_not_found", False),
    (NotFoundError, 404, "not_found_error", "not_found", False),
    (MethodNotAllowedError, 405, "invalid_request_error", "method_not_allowed", False),
    (CapabilityError, 400, "invalid_request_error", "unsupported_capability", False),
    (NoBackendAvailableError, 503, "service_unavailable", "no_backend_available", False),
    (BackendError, 502, "backend_error", "backend_error", True),
    (BackendUnavailableError, 502, "backend_error", "backend_unavailable", True),
    (BackendTimeoutError, 504, "timeout", "backend_timeout", True),
    (BackendRateLimitedError, 429, "rate_limit_error", "rate_limited", True),
    (BackendProtocolError, 502, "backend_error", "backend_protocol_error", True),
    (BackendRejectedError, 400, "invalid_request_error", "backend_rejected", False),
]


@pytest.mark.parametrize(("cls", "status", "kind", "code", "retryable"), TABLE)
def test_class_defaults(
    cls: type[GatewayError], status: int, kind: str, code: str | None, retryable: bool
) -> None:
    err = cls("it broke")
    assert (err.status, err.type, err.code, err.retryable) == (status, kind, code, retryable)
    assert err.to_openai() == {
        "error": {"message": "it broke", "type": kind, "param": None, "code": code}
    }
    assert list(err.to_openai()["error"]) == ["message", "type", "param", "code"]
    assert str(err) == err.message == "it broke"
    assert err.headers() == {}
    assert isinstance(err, GatewayError)


def test_subclass_tree() -> None:
    assert issubclass(RequestTooLargeError, InvalidRequestError)
    assert issubclass(CapabilityError, InvalidRequestError)
    for cls in (
        BackendUnavailableError,
        BackendTimeoutError,
        BackendRateLimitedError,
        BackendProtocolError,
        BackendRejectedError,
    ):
        assert issubclass(cls, BackendError)


def test_instance_overrides_do_not_leak_into_the_class() -> None:
    err = BackendRejectedError("too big", status=413, code="ctx", param="messages", backend="b")
    assert (err.status, err.code, err.param, err.backend) == (413, "ctx", "messages", "b")
    assert err.to_openai()["error"] == {
        "message": "too big",
        "type": "invalid_request_error",
        "param": "messages",
        "code": "ctx",
    }
    fresh = BackendRejectedError("x")
    assert (fresh.status, fresh.code, fresh.backend) == (400, "backend_rejected", None)


@pytest.mark.parametrize(
    ("seconds", "header"),
    [(0, "1"), (0.2, "1"), (1, "1"), (1.2, "2"), (2.5, "3"), (2.9, "3"), (30, "30"), (59.01, "60")],
)
def test_retry_after_header_rounds_up(seconds: float, header: str) -> None:
    err = BackendRateLimitedError("slow down", retry_after=seconds)
    assert err.headers() == {"Retry-After": header}
    assert err.retry_after == seconds


def test_retry_after_on_any_error() -> None:
    assert NoBackendAvailableError("busy", retry_after=4).headers() == {"Retry-After": "4"}


# --- cleaning backend messages -----------------------------------------------------------------

LLAMA_CPP_PYTHON_500 = (
    "Requested tokens (4200) exceed context window of 2048\n\n"
    '  File "/usr/lib/python3.11/site-packages/llama_cpp/server/errors.py", line 171, in '
    "custom_route_handler\n"
    "    response = await original_route_handler(request)\n"
    '  File "/usr/lib/python3.11/site-packages/llama_cpp/server/app.py", line 376, in '
    "create_chat_completion\n"
    "    completion_or_chunks = await run_in_threadpool(llama.create_chat_completion, **kwargs)\n"
    '  File "/usr/lib/python3.11/site-packages/llama_cpp/llama.py", line 1208, in '
    "_create_completion\n"
    '    raise ValueError(f"Requested tokens ({len(prompt_tokens)}) exceed context window")\n'
)

PYTHON_TRACEBACK = (
    "Internal error while generating\n"
    "Traceback (most recent call last):\n"
    '  File "/app/server.py", line 12, in handler\n'
    "    run()\n"
    "RuntimeError: CUDA out of memory\n"
)


def test_strips_a_llama_cpp_python_traceback() -> None:
    assert (
        clean_upstream_message(LLAMA_CPP_PYTHON_500)
        == "Requested tokens (4200) exceed context window of 2048"
    )


def test_strips_a_python_traceback() -> None:
    assert clean_upstream_message(PYTHON_TRACEBACK) == "Internal error while generating"


def test_bare_traceback_keeps_the_exception_line() -> None:
    text = PYTHON_TRACEBACK.split("\n", 1)[1]
    assert text.startswith("Traceback")
    assert clean_upstream_message(text) == "RuntimeError: CUDA out of memory"


def test_strips_a_stack_trace() -> None:
    text = "model failed to load\nStack trace:\n  at load (loader.js:10)\n  at main"
    assert clean_upstream_message(text) == "model failed to load"


def test_collapses_whitespace() -> None:
    assert clean_upstream_message("  a\n\tb   c \r\n") == "a b c"
    assert clean_upstream_message("") == ""


def test_truncates_long_text() -> None:
    cleaned = clean_upstream_message("x" * 1000)
    assert len(cleaned) == 400
    assert cleaned == "x" * 399 + "…"
    exact = "y" * 400
    assert clean_upstream_message(exact) == exact
