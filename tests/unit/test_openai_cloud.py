"""OpenAI's own API as the ``openai-cloud`` preset of the OpenAI-compatible dialect: its endpoint,
its output-limit field, its key, and how its error bodies and rate-limit headers become turnout
errors (OpenAI's "Error codes" and "Rate limits" guides; the SDK's ``retry-after-ms`` reading)."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from multidict import CIMultiDict

from tests.support.openapi import assert_valid
from turnout.config import ProviderConfig, load_config
from turnout.errors import BackendRateLimitedError, ConfigError, ModelNotFoundError
from turnout.providers import build_provider
from turnout.providers.openai_compat import OpenAICompatProvider, duration_seconds, rate_limit_wait
from turnout.wire.types import Call


def cloud(**settings: Any) -> OpenAICompatProvider:
    made = build_provider("oai", ProviderConfig(type="openai-cloud", api_key="sk-test", **settings))
    assert isinstance(made, OpenAICompatProvider)
    return made


def error_body(message: str, kind: str, code: str | None, param: str | None = None) -> bytes:
    return orjson.dumps({"error": {"message": message, "type": kind, "param": param, "code": code}})


def test_defaults_to_api_openai_com_with_a_bearer_key() -> None:
    oai = cloud()
    assert oai.base_url == "https://api.openai.com"
    assert oai.paths["chat"] == "/v1/chat/completions"
    assert oai.request_headers()["Authorization"] == "Bearer sk-test"
    assert cloud(endpoint="https://proxy.example/v1").base_url == "https://proxy.example"
    generic = build_provider("local", ProviderConfig(type="openai"))
    assert isinstance(generic, OpenAICompatProvider)
    assert generic.base_url == "http://127.0.0.1:8000", "type openai stays the local dialect"


@pytest.mark.parametrize(
    ("fields", "sent"),
    [
        ({"max_tokens": 50}, {"max_completion_tokens": 50}),
        ({"max_completion_tokens": 70}, {"max_completion_tokens": 70}),
        ({"max_tokens": 10, "max_completion_tokens": 70}, {"max_completion_tokens": 70}),
    ],
)
def test_the_limit_goes_out_as_max_completion_tokens(
    fields: dict[str, Any], sent: dict[str, Any]
) -> None:
    body = {"model": "x", "messages": [{"role": "user", "content": "Hi"}], **fields}
    payload = cloud().payload(Call("chat", body, "o3-mini"))
    assert {k: v for k, v in payload.items() if "tokens" in k} == sent
    assert "max_tokens" not in payload


def test_vision_is_declared_unless_the_configuration_says_otherwise() -> None:
    assert cloud().capabilities("gpt-4o-mini").vision
    config = cloud(models=[{"name": "gpt-3.5-turbo", "supports_vision": False}])
    assert not config.capabilities("gpt-3.5-turbo").vision
    assert config.capabilities("gpt-4o").vision


def test_api_key_is_required_at_start_up() -> None:
    with pytest.raises(
        ConfigError, match=r"providers\.oai\.api_key: required for type 'openai-cloud'"
    ):
        load_config({"providers": {"oai": {"type": "openai-cloud"}}}, environ={})
    load_config({"providers": {"local": {"type": "openai"}}}, environ={})  # no key needed


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("1s", 1.0),
        ("6m0s", 360.0),
        ("20ms", 0.02),
        ("1h2m3.5s", 3723.5),
        ("", None),
        ("soon", None),
    ],
)
def test_duration_seconds(text: str, seconds: float | None) -> None:
    assert duration_seconds(text) == seconds


@pytest.mark.parametrize(
    ("headers", "wait"),
    [
        ({"retry-after-ms": "1500", "retry-after": "9"}, 1.5),
        ({"retry-after": "9"}, 9.0),
        ({"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "1m30s"}, 90.0),
        (
            {
                "x-ratelimit-remaining-requests": "0",
                "x-ratelimit-reset-requests": "2s",
                "x-ratelimit-remaining-tokens": "0",
                "x-ratelimit-reset-tokens": "7s",
            },
            7.0,
        ),
        ({"x-ratelimit-remaining-requests": "3", "x-ratelimit-reset-requests": "2s"}, None),
        ({}, None),
    ],
)
def test_rate_limit_wait(headers: dict[str, str], wait: float | None) -> None:
    assert rate_limit_wait(CIMultiDict(headers)) == wait


def test_429_rate_limit_is_retryable_with_the_wait() -> None:
    body = error_body("Rate limit reached for gpt-4o-mini ...", "requests", "rate_limit_exceeded")
    error = cloud().error_from_reply(429, body, CIMultiDict({"retry-after-ms": "2500"}))
    assert isinstance(error, BackendRateLimitedError)
    assert (error.status, error.retryable, error.retry_after) == (429, True, 2.5)
    assert error.headers() == {"Retry-After": "3"}
    assert_valid(error.to_openai(), "ErrorResponse")


def test_429_insufficient_quota_is_not_retried_but_falls_back() -> None:
    body = error_body("You exceeded your current quota", "insufficient_quota", "insufficient_quota")
    error = cloud().error_from_reply(429, body, CIMultiDict({"retry-after": "1"}))
    assert (error.status, error.code, error.retryable, error.fallback) == (
        429,
        "insufficient_quota",
        False,
        True,
    )
    assert error.retry_after is None and "exceeded your current quota" in error.message


def test_unsupported_parameter_and_unknown_model() -> None:
    body = error_body(
        "Unsupported parameter: 'max_tokens' is not supported with this model.",
        "invalid_request_error",
        "unsupported_parameter",
        "max_tokens",
    )
    error = cloud().error_from_reply(400, body, CIMultiDict())
    assert (error.status, error.param, error.code, error.retryable) == (
        400,
        "max_tokens",
        "unsupported_parameter",
        False,
    )
    missing = error_body(
        "The model `gpt-9` does not exist or you do not have access to it.",
        "invalid_request_error",
        "model_not_found",
    )
    assert isinstance(cloud().error_from_reply(404, missing, CIMultiDict()), ModelNotFoundError)


def test_503_with_retry_after_ms() -> None:
    body = error_body(
        "The engine is currently overloaded, please try again later", "server_error", None
    )
    error = cloud().error_from_reply(503, body, CIMultiDict({"retry-after-ms": "800"}))
    assert (error.retryable, error.retry_after) == (True, 0.8)
