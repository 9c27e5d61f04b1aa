"""The runtimes the contract suite runs against, as a registry: one `register`ed factory per
runtime (or per OpenAI-dialect profile), each saying which presets and dialects it stands for,
what capabilities turnout declares for it and how to make it fail in its own way.

- Real: llama-cpp-python's server and llama.cpp's ``llama-server`` (the OpenAI dialect), and the
  embedded engine in-process; all three on the Gemma 3 270M GGUF, their cases marked slow.
- Fakes that follow the documented wire format, for every runtime that cannot run here: the
  OpenAI-dialect profiles of tests/fakes/openai_runtimes.py, GPT4All, KoboldCpp's native API,
  Ollama, Anthropic and Gemini. (OpenAI's own API, the ``openai-cloud`` preset, is tested in
  tests/integration/test_cloud_gateway.py: its fake serves no legacy ``/v1/completions``.)

Adding a dialect to the contract is one `register`ed factory here; test_contract.py holds the
cases, one per capability: a case for a capability the runtime lacks asserts the clear
refusal (400, the field named) instead of being skipped.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any

import pytest

from tests.fakes.anthropic import run_fake_anthropic
from tests.fakes.gemini import run_fake_gemini
from tests.fakes.gpt4all import run_fake_gpt4all
from tests.fakes.kobold import run_fake_kobold
from tests.fakes.ollama import run_fake_ollama
from tests.fakes.openai_runtimes import PROFILES, run_fake_runtime
from turnout.gateway import Gateway
from turnout.wire.types import Capabilities

__all__ = ["EMBEDDED", "REGISTRY", "Entry", "Failure", "Runtime", "gateway_config", "register"]

JSON = dict[str, Any]
GEMMA = "gemma-3-270m"
#: a prompt longer than the 2048-token context both real servers run with
TOO_LONG = [{"role": "user", "content": "hello " * 2500}]


@dataclass
class Failure:
    """How to make a runtime fail, and the error (OpenAI type and code) the client must get."""

    type: str
    code: str
    text: str  # in the message
    arm: Callable[[], None] = lambda: None  # make the fake fail
    messages: list[JSON] | None = None  # or send this (real servers)
    param: str | None = None


@dataclass
class Runtime:
    name: str
    provider: JSON  # the provider's configuration
    model: str  # as the provider serves it
    caps: Capabilities  # what turnout must declare for `model`
    failure: Failure
    real: bool = False  # a real model (its text is noise), not a fake
    embedder: str | None = None  # the model for embeddings, where it is another one
    #: a gateway kept up across the cases (the embedded engine: loading the model is most of a
    #: case's time); None: each case starts its own on `config`
    gateway: Gateway | None = None
    extra: JSON = field(default_factory=dict)

    @property
    def address(self) -> str:
        return f"up/{self.model}"

    @property
    def embed_address(self) -> str:
        return f"up/{self.embedder or self.model}"

    def config(self) -> JSON:
        return gateway_config(self.provider)


def gateway_config(provider: JSON) -> JSON:
    """The gateway's configuration: the runtime as provider ``up``, never retried, without the
    embedded default beside it."""
    return {"providers": {"up": {"max_retries": 0, **provider}}, "embedded": False}


#: a factory: given the test's request (for session fixtures such as a real server), a context
#: in which the runtime is up
Factory = Callable[[pytest.FixtureRequest], AbstractContextManager[Runtime]]


@dataclass(frozen=True)
class Entry:
    name: str
    start: Factory
    covers: frozenset[str]  # the presets and dialects (provider types) it stands for
    slow: bool  # a real server or engine: its cases are marked slow

    def param(self) -> Any:
        return pytest.param(self.name, marks=pytest.mark.slow) if self.slow else self.name


REGISTRY: dict[str, Entry] = {}


def register(
    name: str, *, covers: tuple[str, ...] = (), slow: bool = False
) -> Callable[[Factory], Factory]:
    """Put a runtime in the contract: ``covers`` names the provider types it stands for (its
    own name by default)."""

    def add(factory: Factory) -> Factory:
        assert name not in REGISTRY, f"runtime {name!r} registered twice"
        REGISTRY[name] = Entry(name, factory, frozenset(covers or (name,)), slow)
        return factory

    return add


def _rejected(fake: Any) -> Failure:
    message = "Invalid value for 'temperature'"
    return Failure(
        "invalid_request_error", "backend_rejected", message, lambda: fake.fail(400, message)
    )


# The OpenAI dialect: one fake per profile (tests/fakes/openai_runtimes.py), two real servers.


def _openai_profile(name: str) -> Factory:
    @contextlib.contextmanager
    def start(_: pytest.FixtureRequest) -> Iterator[Runtime]:
        profile = PROFILES[name]
        with run_fake_runtime(name) as fake:
            provider: JSON = {"type": name, "endpoint": fake.url}
            if profile.api_key:
                provider["api_key"] = profile.api_key
            caps = Capabilities(
                embeddings=profile.embeddings,
                tools=profile.tools,
                json_schema=name not in ("fastchat", "koboldcpp-openai"),
            )
            yield Runtime(name, provider, "fake-model", caps, _rejected(fake))

    return start


for _name in PROFILES:
    register(_name)(_openai_profile(_name))


@register("llama-cpp-python", slow=True)
@contextlib.contextmanager
def _llama_cpp_python(request: pytest.FixtureRequest) -> Iterator[Runtime]:
    url = request.getfixturevalue("llama_cpp_python_server")
    failure = Failure(
        "invalid_request_error",
        "context_length_exceeded",
        "maximum context length is 2048 tokens",
        messages=TOO_LONG,
        param="messages",
    )
    provider: JSON = {"type": "llama-cpp-python", "endpoint": url}
    caps = Capabilities()  # tools held to a JSON schema by turnout
    yield Runtime("llama-cpp-python", provider, GEMMA, caps, failure, real=True)


@register("llama-server", covers=("llamacpp",), slow=True)
@contextlib.contextmanager
def _llama_server(request: pytest.FixtureRequest) -> Iterator[Runtime]:
    url = request.getfixturevalue("llamacpp_server")
    # llama-server rejects it with its own type, exceed_context_size_error (code: an int)
    failure = Failure("invalid_request_error", "backend_rejected", "context", messages=TOO_LONG)
    # --no-jinja (needed for this GGUF) leaves its own tool calling off: turnout learns that
    # from its refusal and holds tools to a JSON schema itself
    provider = {"type": "llamacpp", "endpoint": url}
    yield Runtime("llama-server", provider, GEMMA, Capabilities(), failure, real=True)


# Dialects of their own.


@register("gpt4all")
@contextlib.contextmanager
def _gpt4all(_: pytest.FixtureRequest) -> Iterator[Runtime]:
    with run_fake_gpt4all() as g4a:

        def unavailable() -> None:
            g4a.available = False

        failure = Failure(
            "backend_error", "backend_unavailable", "Enable Local API Server", unavailable
        )
        yield Runtime(
            "gpt4all",
            {"type": "gpt4all", "endpoint": g4a.url},
            "Llama 3.2 3B Instruct",
            Capabilities(embeddings=False, tools=False, json_schema=False),
            failure,
        )


@register("kobold", covers=("kobold", "koboldai"))
@contextlib.contextmanager
def _kobold(_: pytest.FixtureRequest) -> Iterator[Runtime]:
    with run_fake_kobold() as kobold:

        def busy() -> None:
            kobold.busy = True

        model = f"koboldcpp/{kobold.model}"
        yield Runtime(
            "kobold",
            {
                "type": "koboldai",
                "endpoint": kobold.url,
                "models": [{"name": model, "supports_vision": True}],
            },
            model,
            Capabilities(embeddings=False, tools=False, json_schema=False, vision=True),
            Failure("backend_error", "backend_unavailable", "Server is busy", busy),
        )


@register("ollama")
@contextlib.contextmanager
def _ollama(_: pytest.FixtureRequest) -> Iterator[Runtime]:
    with run_fake_ollama() as ollama:
        yield Runtime(
            "ollama",
            {"type": "ollama", "endpoint": ollama.url},
            "llama3.2:latest",
            Capabilities(json_schema=True),
            _rejected(ollama),
        )


@register("anthropic")
@contextlib.contextmanager
def _anthropic(_: pytest.FixtureRequest) -> Iterator[Runtime]:
    with run_fake_anthropic(tool_input={"query": "sea"}) as claude:
        message = "messages.0.content: temperature is out of range"
        failure = Failure(
            "invalid_request_error",
            "backend_rejected",
            message,
            lambda: claude.fail(400, message, "invalid_request_error"),
        )
        yield Runtime(
            "anthropic",
            {"type": "anthropic", "endpoint": claude.url, "api_key": claude.api_key},
            "claude-haiku-4-5-20251001",
            # no text completion, no embeddings, no json_schema: refused, never sent
            Capabilities(completion=False, embeddings=False, vision=True, json_schema=False),
            failure,
        )


@register("gemini")
@contextlib.contextmanager
def _gemini(_: pytest.FixtureRequest) -> Iterator[Runtime]:
    with run_fake_gemini() as gem:
        message = "Invalid value at 'generation_config.temperature'"
        failure = Failure(
            "invalid_request_error",
            "backend_rejected",
            message,
            lambda: gem.fail(400, message, "INVALID_ARGUMENT"),
        )
        yield Runtime(
            "gemini",
            {"type": "gemini", "endpoint": gem.url, "api_key": gem.api_key},
            "gemini-2.0-flash",
            Capabilities(completion=False, vision=True),  # no text completion: refused
            failure,
            embedder="text-embedding-004",  # Gemini embeds with its own models
        )


# The embedded engine: in-process, on the Gemma 3 270M GGUF (the default model).


EMBEDDED: JSON = {"type": "embedded"}  # its default model: the Gemma GGUF


@register("embedded", slow=True)
@contextlib.contextmanager
def _embedded(request: pytest.FixtureRequest) -> Iterator[Runtime]:
    failure = Failure(
        "invalid_request_error",
        "context_length_exceeded",
        "context window",
        messages=TOO_LONG,
        param="messages",
    )
    yield Runtime(
        "embedded",
        EMBEDDED,
        GEMMA,
        Capabilities(vision=False),  # a GGUF alone has no vision; tools by grammar
        failure,
        real=True,
        gateway=request.getfixturevalue("contract_embedded_gateway"),
    )
