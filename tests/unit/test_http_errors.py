"""HTTP error replies of every runtime become the right turnout error, naming the backend."""

from __future__ import annotations

import email.utils
import time

import orjson
import pytest

from turnout.config import ProviderConfig
from turnout.errors import (
    BackendError,
    BackendRateLimitedError,
    BackendRejectedError,
    BackendTimeoutError,
    BackendUnavailableError,
    GatewayError,
    ModelNotFoundError,
)
from turnout.providers.http import error_message, parse_retry_after
from turnout.providers.openai_compat import OpenAICompatProvider


@pytest.fixture
def provider() -> OpenAICompatProvider:
    return OpenAICompatProvider("local", ProviderConfig(type="llamacpp"))


def reply(
    provider: OpenAICompatProvider, status: int, body: object, **headers: str
) -> GatewayError:
    raw = body if isinstance(body, bytes) else orjson.dumps(body)
    err = provider.error_from_reply(status, raw, headers)
    assert err.backend == "local"
    assert "backend 'local'" in err.message
    return err


def openai_body(message: str, code: object = None) -> dict[str, object]:
    return {"error": {"message": message, "type": "x", "param": None, "code": code}}


def test_400_is_rejected_and_not_retryable(provider: OpenAICompatProvider) -> None:
    err = reply(provider, 400, openai_body("'messages' is too long", 400))
    assert type(err) is BackendRejectedError
    assert (err.status, err.retryable, err.code) == (400, False, "backend_rejected")
    assert err.message == "backend 'local' rejected the request: 'messages' is too long"


@pytest.mark.parametrize("status", [401, 403])
def test_auth_failures_name_the_api_key_setting(
    provider: OpenAICompatProvider, status: int
) -> None:
    err = reply(provider, status, b"Invalid or missing authorization token")
    assert type(err) is BackendError
    assert (err.status, err.code) == (502, "backend_auth_failed")
    assert (err.retryable, err.fallback) == (False, True)
    assert err.message == (
        f"backend 'local' refused turnout's credentials (HTTP {status}): "
        "check providers.local.api_key"
    )


@pytest.mark.parametrize(
    "body",
    [
        {"error": 'model "llama3" not found, try pulling it first'},
        b"No running session found for model 'qwen'",
        openai_body("The model `gpt-9` does not exist", "model_not_found"),
    ],
)
def test_404_naming_a_model_is_model_not_found(
    provider: OpenAICompatProvider, body: object
) -> None:
    err = reply(provider, 404, body)
    assert type(err) is ModelNotFoundError
    assert (err.status, err.code, err.retryable) == (404, "model_not_found", False)
    assert err.message.startswith("backend 'local': ")


def test_404_of_a_path_is_a_backend_failure(provider: OpenAICompatProvider) -> None:
    err = reply(provider, 404, {"error": {"code": 404, "message": "File Not Found"}})
    assert type(err) is BackendError
    assert (err.status, err.retryable) == (502, False)
    assert err.message == "backend 'local' failed (HTTP 404): File Not Found"


def test_404_without_body(provider: OpenAICompatProvider) -> None:
    err = reply(provider, 404, b"")
    assert type(err) is BackendError
    assert err.message == "backend 'local' failed (HTTP 404): HTTP 404"


def test_413_keeps_its_status(provider: OpenAICompatProvider) -> None:
    err = reply(provider, 413, b"Payload Too Large")
    assert type(err) is BackendRejectedError
    assert (err.status, err.retryable) == (413, False)


def test_422_is_a_400(provider: OpenAICompatProvider) -> None:
    body = {"detail": [{"loc": ["body", "messages"], "msg": "field required", "type": "missing"}]}
    err = reply(provider, 422, body)
    assert type(err) is BackendRejectedError
    assert err.status == 400
    assert err.message == "backend 'local' rejected the request: field required"


def test_429_with_retry_after_seconds(provider: OpenAICompatProvider) -> None:
    err = reply(provider, 429, openai_body("slow down"), **{"Retry-After": "7"})
    assert type(err) is BackendRateLimitedError
    assert (err.status, err.retryable, err.retry_after) == (429, True, 7.0)
    assert err.headers() == {"Retry-After": "7"}
    assert err.message == "backend 'local' is rate limited: slow down"


def test_429_with_retry_after_http_date(provider: OpenAICompatProvider) -> None:
    when = email.utils.formatdate(time.time() + 30, usegmt=True)
    err = reply(provider, 429, b"busy", **{"Retry-After": when})
    assert err.retry_after is not None
    assert 28.0 <= err.retry_after <= 30.0


def test_429_without_retry_after(provider: OpenAICompatProvider) -> None:
    err = reply(provider, 429, b"")
    assert err.retry_after is None
    assert err.headers() == {}
    assert err.message == "backend 'local' is rate limited: HTTP 429"


def test_500_is_retryable_and_cleaned(provider: OpenAICompatProvider) -> None:
    message = 'boom\n\n  File "/srv/app.py", line 376, in create_chat_completion\n    raise'
    err = reply(provider, 500, openai_body(message))
    assert type(err) is BackendError
    assert (err.status, err.retryable, err.code) == (502, True, "backend_error")
    assert err.message == "backend 'local' failed (HTTP 500): boom"


def test_502_is_retryable(provider: OpenAICompatProvider) -> None:
    err = reply(provider, 502, b"Proxy request to model failed: connection reset")
    assert type(err) is BackendError
    assert err.retryable is True
    assert err.message == (
        "backend 'local' failed (HTTP 502): Proxy request to model failed: connection reset"
    )


def test_503_is_unavailable_with_retry_after(provider: OpenAICompatProvider) -> None:
    body = {"error": {"code": 503, "message": "Loading model", "type": "unavailable_error"}}
    err = reply(provider, 503, body, **{"Retry-After": "2"})
    assert type(err) is BackendUnavailableError
    assert (err.status, err.retryable, err.retry_after) == (502, True, 2.0)
    assert err.message == "backend 'local' is unavailable (HTTP 503): Loading model"


def test_504_is_a_timeout(provider: OpenAICompatProvider) -> None:
    err = reply(provider, 504, b"<html>Gateway Timeout</html>")
    assert type(err) is BackendTimeoutError
    assert (err.status, err.retryable) == (504, True)
    assert err.message == "backend 'local' timed out (HTTP 504)"


def test_501_is_retryable_elsewhere(provider: OpenAICompatProvider) -> None:
    err = reply(provider, 501, {"error": {"code": 501, "message": "not supported"}})
    assert type(err) is BackendError
    assert err.retryable is True  # >= 500 is worth another try elsewhere


def test_long_bodies_are_cut(provider: OpenAICompatProvider) -> None:
    err = reply(provider, 500, b"e" * 5000)
    assert len(err.message) < 500
    assert err.message.endswith("…")


# --- error_message: every runtime's error body --------------------------------------------------


@pytest.mark.parametrize(
    ("body", "message"),
    [
        # OpenAI, vLLM, LocalAI, webui: nested error object
        (
            {"error": {"message": "bad temp", "type": "invalid_request_error", "param": None}},
            "bad temp",
        ),
        # llama.cpp: integer code
        (
            {"error": {"code": 400, "message": "context too long", "type": "exceed_context"}},
            "context too long",
        ),
        # mistral.rs: top-level message (model errors add partial_response)
        ({"message": "model error", "partial_response": {}}, "model error"),
        # FastChat: object error
        (
            {"object": "error", "message": "Only vicuna allowed", "code": 40301},
            "Only vicuna allowed",
        ),
        # Kobold: detail object
        ({"detail": {"msg": "Server is busy", "type": "service_unavailable"}}, "Server is busy"),
        (
            {"detail": {"error": "Unauthorized", "msg": "Wrong password", "type": "unauthorized"}},
            "Wrong password",
        ),
        # FastAPI validation: detail list
        (
            {
                "detail": [
                    {"loc": ["body", "model"], "msg": "field required", "type": "missing"},
                    {"loc": ["body", "x"], "msg": "bad x", "type": "value_error"},
                ]
            },
            "field required; bad x",
        ),
        # llama-cpp-python auth, FastAPI HTTPException
        ({"detail": "Invalid API key"}, "Invalid API key"),
        # MLX and Ollama native
        ({"error": "model 'x' not found"}, "model 'x' not found"),
        # TabbyAPI
        ({"error": {"message": "no model loaded", "trace": ["..."]}}, "no model loaded"),
    ],
)
def test_error_message_json_shapes(body: object, message: str) -> None:
    assert error_message(orjson.dumps(body)) == message


@pytest.mark.parametrize(
    "text",
    [
        "Missing authorization header",  # Jan: plain text
        "Internal Server Error",
        "<html><body>502 Bad Gateway</body></html>",
    ],
)
def test_error_message_plain_text(text: str) -> None:
    assert error_message(text.encode()) == text


def test_error_message_unknown_json_is_returned_whole() -> None:
    assert error_message(b'{"status": "bad"}') == '{"status": "bad"}'
    assert error_message(b"[1, 2]") == "[1, 2]"


def test_error_message_invalid_utf8() -> None:
    assert error_message(b"bad \xff byte") == "bad \ufffd byte"


# --- parse_retry_after --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("0", 0.0),
        ("5", 5.0),
        ("1.5", 1.5),
        ("-3", 0.0),
        ("Wed, 21 Oct 2015 07:28:00 GMT", 0.0),  # in the past
        ("soon", None),
        ("", None),
        (None, None),
        ("inf", None),
        ("nan", None),
    ],
)
def test_parse_retry_after(value: str | None, seconds: float | None) -> None:
    assert parse_retry_after(value) == seconds


def test_parse_retry_after_future_date() -> None:
    when = email.utils.formatdate(time.time() + 120, usegmt=True)
    parsed = parse_retry_after(when)
    assert parsed is not None
    assert 118.0 <= parsed <= 120.0


def test_absurd_retry_after_does_not_break_the_error_headers(
    provider: OpenAICompatProvider,
) -> None:
    err = reply(provider, 429, b"", **{"Retry-After": "inf"})
    assert err.retry_after is None
    assert err.headers() == {}
