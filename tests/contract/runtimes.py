"""The runtimes the contract suite runs against: two real servers for the OpenAI dialect
(llama-cpp-python's and llama.cpp's own ``llama-server``, on the Gemma 3 270M GGUF) and, for every
runtime that cannot run here, the fake that follows its documented wire format.

Each `Runtime` says what the contract expects of it: the capabilities turnout declares for it
(a test of a capability it lacks asserts the clear refusal instead of being skipped), and how to
make it fail in its own way.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from tests.fakes.gpt4all import run_fake_gpt4all
from tests.fakes.kobold import run_fake_kobold
from tests.fakes.ollama import run_fake_ollama
from tests.fakes.openai_runtimes import PROFILES, run_fake_runtime
from turnout.wire.types import Capabilities

__all__ = ["FAKES", "REAL", "Failure", "Runtime", "fake_runtime"]

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
    provider: JSON  # the provider's configuration (without the endpoint for fakes)
    model: str  # as the provider serves it
    caps: Capabilities
    failure: Failure
    real: bool = False
    extra: JSON = field(default_factory=dict)

    @property
    def address(self) -> str:
        return f"up/{self.model}"

    def config(self) -> JSON:
        return {"providers": {"up": {"max_retries": 0, **self.provider}}, "embedded": False}


NO_TOOLS = Capabilities(tools=False)
TEXT_ONLY = Capabilities(embeddings=False, tools=False, json_schema=False)


def _rejected(fake: Any) -> Failure:
    message = "Invalid value for 'temperature'"
    return Failure(
        "invalid_request_error", "backend_rejected", message, lambda: fake.fail(400, message)
    )


def _openai_fake(name: str, fake: Any) -> Runtime:
    profile = PROFILES[name]
    provider: JSON = {"type": name, "endpoint": fake.url}
    if profile.api_key:
        provider["api_key"] = profile.api_key
    caps = Capabilities(
        embeddings=profile.embeddings,
        tools=profile.tools,
        json_schema=name not in ("fastchat", "koboldcpp-openai"),
    )
    return Runtime(name, provider, "fake-model", caps, _rejected(fake))


@contextlib.contextmanager
def fake_runtime(name: str) -> Iterator[Runtime]:
    """A fake of runtime ``name`` served for the duration of the block, as a `Runtime`."""
    if name in PROFILES:
        with run_fake_runtime(name) as fake:
            yield _openai_fake(name, fake)
    elif name == "gpt4all":
        with run_fake_gpt4all() as g4a:

            def unavailable() -> None:
                g4a.available = False

            failure = Failure(
                "backend_error", "backend_unavailable", "Enable Local API Server", unavailable
            )
            yield Runtime(
                name,
                {"type": "gpt4all", "endpoint": g4a.url},
                "Llama 3.2 3B Instruct",
                Capabilities(embeddings=False, tools=False, json_schema=False),
                failure,
            )
    elif name == "kobold":
        with run_fake_kobold() as kobold:

            def busy() -> None:
                kobold.busy = True

            model = f"koboldcpp/{kobold.model}"
            yield Runtime(
                name,
                {
                    "type": "koboldai",
                    "endpoint": kobold.url,
                    "models": [{"name": model, "supports_vision": True}],
                },
                model,
                Capabilities(embeddings=False, tools=False, json_schema=False, vision=True),
                Failure("backend_error", "backend_unavailable", "Server is busy", busy),
            )
    elif name == "ollama":
        with run_fake_ollama() as ollama:
            yield Runtime(
                name,
                {"type": "ollama", "endpoint": ollama.url},
                "llama3.2:latest",
                Capabilities(json_schema=True),
                _rejected(ollama),
            )
    else:
        raise KeyError(name)


FAKES = [*PROFILES, "gpt4all", "kobold", "ollama"]
REAL = ["llama-cpp-python", "llama-server"]


def real_runtime(name: str, url: str) -> Runtime:
    """One of the real servers at ``url``, which runs Gemma 3 270M with a 2048-token context."""
    if name == "llama-cpp-python":
        failure = Failure(
            "invalid_request_error",
            "context_length_exceeded",
            "maximum context length is 2048 tokens",
            messages=TOO_LONG,
            param="messages",
        )
        provider: JSON = {"type": "llama-cpp-python", "endpoint": url}
        caps = Capabilities()  # tools held to a JSON schema by turnout
    else:
        # llama-server rejects it with its own type, exceed_context_size_error (code: an int)
        failure = Failure("invalid_request_error", "backend_rejected", "context", messages=TOO_LONG)
        # --no-jinja (needed for this GGUF) leaves its own tool calling off: turnout learns that
        # from its refusal and holds tools to a JSON schema itself
        provider = {"type": "llamacpp", "endpoint": url}
        caps = Capabilities()
    return Runtime(name, provider, GEMMA, caps, failure, real=True)
