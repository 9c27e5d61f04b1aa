"""Capabilities: what a request needs, what a model can do, and configuration overrides."""

from __future__ import annotations

import pytest

from turnout.config import ProviderConfig
from turnout.providers import build_provider
from turnout.wire.types import Capabilities, needs

IMAGE = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}


@pytest.mark.parametrize(
    ("kind", "body", "expected"),
    [
        ("chat", {"messages": [{"role": "user", "content": "hi"}]}, {"chat"}),
        ("chat", {"stream": True, "messages": []}, {"chat", "streaming"}),
        ("chat", {"tools": [{"type": "function"}], "messages": []}, {"chat", "tools"}),
        ("chat", {"tools": [{"type": "function"}], "tool_choice": "none"}, {"chat"}),
        (
            "chat",
            {"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}},
            {"chat", "json_schema"},
        ),
        ("chat", {"response_format": {"type": "json_object"}}, {"chat"}),
        (
            "chat",
            {"messages": [{"role": "user", "content": [{"type": "text", "text": "a"}, IMAGE]}]},
            {"chat", "vision"},
        ),
        ("completion", {"prompt": "x", "stream": True}, {"completion", "streaming"}),
        ("embedding", {"input": "x"}, {"embeddings"}),
    ],
)
def test_needs(kind: str, body: dict[str, object], expected: set[str]) -> None:
    assert needs(kind, body) == frozenset(expected)


def test_lacks_lists_missing_capabilities_sorted() -> None:
    caps = Capabilities(tools=False, vision=False)
    assert caps.lacks(frozenset({"vision", "chat", "tools"})) == ["tools", "vision"]
    assert caps.lacks(frozenset({"chat", "streaming"})) == []


def test_configuration_overrides_dialect_defaults() -> None:
    config = ProviderConfig.model_validate(
        {
            "type": "vllm",
            "streaming": False,
            "models": [
                {"apiName": "a", "supportsTools": False, "supports_vision": True},
                {"name": "b", "context_length": 8192},
            ],
        }
    )
    provider = build_provider("p", config)
    a, b = provider.capabilities("a"), provider.capabilities("b")
    assert (a.tools, a.vision, a.streaming) == (False, True, False)
    assert (b.tools, b.vision, b.context_length, b.streaming) == (True, False, 8192, False)
    assert provider.capabilities("unlisted") == Capabilities(streaming=False)


def test_embedded_engine_declares_tools_but_no_vision() -> None:
    provider = build_provider("e", ProviderConfig.model_validate({"type": "embedded"}))
    caps = provider.capabilities("gemma-3-270m")  # tools: held to a schema by its grammar
    assert (caps.chat, caps.streaming, caps.tools, caps.vision) == (True, True, True, False)
