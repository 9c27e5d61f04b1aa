"""Request screening (turnout/wire/screen.py) and validation under hostile input: pulls from
foreign registries, and 2,000 mutated bodies that must each be accepted or refused with a 400
naming a field, never an unhandled exception."""

from __future__ import annotations

import random
from typing import Any

import pytest

from turnout.errors import InvalidRequestError
from turnout.wire.screen import Screen, check_pull, pull_registry
from turnout.wire.validate import (
    encode_body,
    validate_chat,
    validate_completion,
    validate_embedding,
)

REGISTRIES = ["registry.ollama.ai"]


@pytest.mark.parametrize(
    ("name", "registry"),
    [
        ("llama3.2", None),
        ("llama3.2:1b", None),
        ("library/llama3.2", None),
        ("registry.ollama.ai/library/llama3.2:latest", "registry.ollama.ai"),
        ("evil.example/x/y", "evil.example"),
        ("evil.example:5000/y", "evil.example:5000"),
        ("localhost:5000/y", "localhost:5000"),
    ],
)
def test_pull_registry(name: str, registry: str | None) -> None:
    assert pull_registry(name) == registry


def test_pulls_only_from_configured_registries() -> None:
    check_pull("llama3.2", False, REGISTRIES)
    check_pull("registry.ollama.ai/library/llama3.2", False, REGISTRIES)
    with pytest.raises(InvalidRequestError) as info:
        check_pull("evil.example/x/y", False, REGISTRIES)
    assert info.value.param == "model" and "evil.example" in info.value.message
    assert "security.pull_registries" in info.value.message
    with pytest.raises(InvalidRequestError) as insecure:
        check_pull("llama3.2", True, REGISTRIES)
    assert insecure.value.param == "insecure"


def test_configured_schemes_and_private_hosts_open_what_they_say() -> None:
    body = {
        "messages": [
            {
                "role": "user",
                "content": [{"type": "image_url", "image_url": {"url": "http://10.0.0.5/a.png"}}],
            }
        ]
    }
    with pytest.raises(InvalidRequestError):
        Screen().check("chat", body)
    with pytest.raises(InvalidRequestError, match="local or private"):
        Screen(image_schemes=frozenset({"http"})).check("chat", body)
    Screen(image_schemes=frozenset({"http"}), image_private_hosts=True).check("chat", body)


def _mutations(rng: random.Random) -> Any:
    atoms: list[Any] = [None, True, 0, -1, 1.5, "", "x", "user", [], {}, ["user"], {"a": 1}, 2**70]
    return rng.choice(atoms)


def _mutate(node: Any, rng: random.Random) -> Any:
    if isinstance(node, dict) and node and rng.random() < 0.7:
        key = rng.choice(list(node))
        node[key] = _mutate(node[key], rng) if rng.random() < 0.6 else _mutations(rng)
        return node
    if isinstance(node, list) and node and rng.random() < 0.7:
        i = rng.randrange(len(node))
        node[i] = _mutate(node[i], rng) if rng.random() < 0.6 else _mutations(rng)
        return node
    return _mutations(rng)


CALL = {"id": "1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
TOOL = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}


def _seed_body() -> dict[str, Any]:
    return {
        "model": "m",
        "messages": [
            {"role": "system", "content": "s"},
            {"role": "user", "content": [{"type": "text", "text": "t"},
                                         {"type": "image_url", "image_url": {"url": "https://e.com/a.png"}}]},
            {"role": "assistant", "content": None,
             "tool_calls": [CALL]},
            {"role": "tool", "tool_call_id": "1", "content": "r"},
        ],
        "tools": [TOOL],
        "tool_choice": {"type": "function", "function": {"name": "f"}},
        "response_format": {"type": "json_schema", "json_schema": {"name": "n", "schema": {}}},
        "stream": True, "stream_options": {"include_usage": True}, "stop": ["a"],
        "temperature": 1, "keep_alive": "5m", "max_tokens": 3,
    }  # fmt: skip


def test_two_thousand_mutated_bodies_are_accepted_or_refused_naming_a_field() -> None:
    rng = random.Random(13)
    refused = 0
    for _ in range(2000):
        body = _seed_body()
        for _ in range(rng.randint(1, 4)):
            body = _mutate(body, rng)
        for validate, kind in ((validate_chat, "chat"), (validate_completion, "completion"),
                               (validate_embedding, "embedding")):  # fmt: skip
            try:
                checked = validate(body)
                Screen().check(kind, checked)  # type: ignore[arg-type]
                encode_body(checked)
            except InvalidRequestError as exc:
                refused += 1
                assert exc.status == 400 and exc.message
    assert refused > 1000  # the mutations do break most bodies


def test_a_provider_narrows_the_keep_alive_a_request_may_set() -> None:
    from turnout.config import ConfigError, load_config
    from turnout.providers import build_provider
    from turnout.wire.screen import bound_keep_alive
    from turnout.wire.types import Call

    assert bound_keep_alive(3600.0, "1m", "10m") == 600.0
    assert bound_keep_alive(5.0, "1m", None) == 60.0
    assert bound_keep_alive("5m", None, None) == 300.0
    config = load_config(
        {"providers": {"o": {"type": "ollama", "request_keep_alive_max": "10m"}}}, environ={}
    )
    provider = build_provider("o", config.providers["o"])
    call = Call("chat", {"model": "m", "messages": [{"role": "user", "content": "hi"}],
                         "keep_alive": 3600.0}, "m")  # fmt: skip
    _, payload = provider._plan(call, stream=False)  # type: ignore[attr-defined]
    assert payload["keep_alive"] == 600.0
    with pytest.raises(ConfigError, match=r"providers\.o\.request_keep_alive_max"):
        load_config(
            {"providers": {"o": {"type": "ollama", "request_keep_alive_max": 0}}}, environ={}
        )
