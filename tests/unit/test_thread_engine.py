"""The shared machinery of token-by-token engines (turnout/providers/embedded/thread_engine.py),
driven by a scripted subclass: prompts from chat templates, stop strings, limits, chunks and
usage, capability refusals, cancellation between tokens, loading and one generation at a time.
The subclass is a stand-in for a runtime on purpose: these tests check the base, not a runtime
(tests/integration/test_transformers_engine.py runs the real one)."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from turnout.config import ProviderConfig
from turnout.errors import CapabilityError, ConfigError, InvalidRequestError
from turnout.providers.embedded import EmbeddedProvider
from turnout.providers.embedded.llama_engine import LoadCancelled
from turnout.providers.embedded.settings import EmbeddedModel
from turnout.providers.embedded.thread_engine import (
    Sampling,
    StopScanner,
    ThreadEngine,
    chat_turns,
    template_for,
)
from turnout.routing import Catalog, Router
from turnout.wire.types import JSON, Call, Kind


class Scripted(ThreadEngine):
    """Generates the given pieces, one per token, recording what the base asked of it."""

    kind = "scripted"

    def __init__(self, pieces: list[str], delay: float = 0.0, **entry: Any) -> None:
        super().__init__(EmbeddedModel(name="m", **entry), lambda: Path("/nonexistent/m"))
        self.pieces, self.delay = pieces, delay
        self.architecture = "Gemma3ForCausalLM"
        self.prompts: list[str] = []
        self.samplings: list[Sampling] = []
        self.pulled = 0
        self.closed = False
        self.running = 0
        self.most_running = 0
        self.unloaded = 0
        self.own: list[int] | None = None

    def _load_blocking(
        self, path: Path, progress: Callable[[float], None], cancel: threading.Event
    ) -> None:
        progress(0.5)
        if cancel.is_set():
            raise LoadCancelled

    def _unload_blocking(self) -> None:
        self.unloaded += 1

    def _encode(self, text: str) -> list[int]:
        self.prompts.append(text)
        return [7] * len(text.split())

    def _own_prompt(self, messages: list[JSON]) -> list[int] | None:
        return self.own

    def _tokens(self, prompt_ids: list[int], sampling: Sampling) -> Iterator[str]:
        self.samplings.append(sampling)
        self.running += 1
        self.most_running = max(self.most_running, self.running)
        try:
            for piece in self.pieces:
                time.sleep(self.delay)
                self.pulled += 1
                yield piece
        finally:
            self.closed = True
            self.running -= 1


def wait_until(condition: Callable[[], bool], within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.005)


def chat(**body: Any) -> Call:
    body.setdefault("messages", [{"role": "user", "content": "Hi there"}])
    return Call("chat", body, "m", stream=True)


async def collect(engine: ThreadEngine, call: Call) -> list[JSON]:
    return [chunk.data async for chunk in engine.stream(call)]


def text_of(chunks: list[JSON]) -> str:
    out = []
    for chunk in chunks:
        for choice in chunk["choices"]:
            out.append(choice.get("delta", {}).get("content") or choice.get("text") or "")
    return "".join(out)


# Templates and turns.


def test_template_by_architecture() -> None:
    assert template_for("Gemma3ForCausalLM") == "gemma"
    assert template_for("gemma3") == "gemma"
    assert template_for("LlamaForCausalLM") == "llama-3"
    assert template_for("Qwen2ForCausalLM") == "chatml"
    assert template_for(None) == "chatml"


def test_chat_turns_join_text_parts_and_read_developer_as_system() -> None:
    turns = chat_turns(
        [
            {"role": "developer", "content": "Be brief."},
            {
                "role": "user",
                "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}],
            },
            {"role": "assistant", "content": None},
        ]
    )
    assert turns == [("system", "Be brief."), ("user", "ab"), ("assistant", "")]


async def test_chat_rendered_with_the_gemma_template_system_merged() -> None:
    engine = Scripted(["x"])
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    await collect(engine, chat(messages=messages))
    assert engine.prompts == [
        "<start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n<start_of_turn>model\n"
    ]


async def test_configured_chat_format_wins_over_the_models_own_template() -> None:
    engine = Scripted(["x"], chat_format="chatml")
    engine.own = [1, 2, 3]
    await collect(engine, chat())
    assert engine.prompts == ["<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n"]


async def test_the_models_own_template_is_used_when_none_is_configured() -> None:
    engine = Scripted(["<end_of_turn>", "more"])  # no template stop strings with its own
    engine.own = [1, 2, 3]
    chunks = await collect(engine, chat(max_tokens=5))
    assert engine.prompts == []  # ids came from _own_prompt
    assert chunks[-1]["usage"]["prompt_tokens"] == 3
    assert text_of(chunks) == "<end_of_turn>more"


def test_unknown_chat_format_is_a_configuration_error() -> None:
    with pytest.raises(ConfigError, match=r"chat_format 'nope'.*allowed: alpaca"):
        Scripted([], chat_format="nope")


# Stop strings.


def test_stop_scanner_holds_back_a_possible_start_and_cuts_at_the_stop() -> None:
    scanner = StopScanner(["<end_of_turn>"])
    assert scanner.feed("Hello <end") == "Hello "
    assert scanner.held == "<end"
    assert scanner.feed("_of") == ""
    assert scanner.feed("_turn> tail") == ""
    assert scanner.stopped


def test_stop_scanner_releases_text_that_was_not_a_stop() -> None:
    scanner = StopScanner(["END"])
    assert scanner.feed("go E") == "go "
    assert scanner.feed("ast") == "East"
    assert scanner.feed("E") == ""
    assert scanner.flush() == "E"
    assert not scanner.stopped


def test_stop_scanner_earliest_of_several_stops() -> None:
    scanner = StopScanner(["bb", "a"])
    assert scanner.feed("xxbbya") == "xx"


async def test_request_stop_string_ends_with_stop_and_never_shows() -> None:
    engine = Scripted(["Pa", "ris", " is", " fi", "ne"])
    chunks = await collect(engine, chat(stop=["is f"], max_tokens=10))
    assert text_of(chunks) == "Paris "
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["usage"]["completion_tokens"] == 4  # the token completing the stop counts
    assert engine.closed and engine.pulled == 4


async def test_template_stop_string_split_over_tokens() -> None:
    engine = Scripted(["Hi", "<end", "_of_turn>", "never"])
    chunks = await collect(engine, chat(max_tokens=10))
    assert text_of(chunks) == "Hi"
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"


# Chunks, limits and usage.


async def test_chat_chunks_role_first_then_content_then_length_then_usage() -> None:
    engine = Scripted(["a", "", "b", "c", "d"])
    chunks = await collect(engine, chat(max_tokens=3, temperature=0.2, top_p=0.9, seed=4))
    assert {c["id"] for c in chunks} == {chunks[0]["id"]} and chunks[0]["id"].startswith(
        "chatcmpl-"
    )
    assert all(c["object"] == "chat.completion.chunk" and c["model"] == "m" for c in chunks)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert [c["choices"][0]["delta"] for c in chunks[1:3]] == [{"content": "a"}, {"content": "b"}]
    assert chunks[3]["choices"][0] == {
        "index": 0, "delta": {}, "logprobs": None, "finish_reason": "length"
    }  # fmt: skip
    assert chunks[4]["choices"] == []
    assert chunks[4]["usage"] == {"prompt_tokens": 4, "completion_tokens": 3, "total_tokens": 7}
    assert engine.samplings == [Sampling(3, 0.2, 0.9, None, 4)]


async def test_max_completion_tokens_and_end_of_sequence() -> None:
    engine = Scripted(["a", "b"])
    chunks = await collect(engine, chat(max_completion_tokens=1))
    assert text_of(chunks) == "a" and chunks[-2]["choices"][0]["finish_reason"] == "length"
    chunks = await collect(Scripted(["a", "b"]), chat(max_tokens=9))  # the runtime ended: EOS
    assert text_of(chunks) == "ab" and chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["usage"]["completion_tokens"] == 2


async def test_no_limit_means_the_rest_of_the_context() -> None:
    engine = Scripted(["a"], n_ctx=64)
    await collect(engine, chat())
    prompt = len(engine.prompts[0].split())
    assert engine.samplings[0].max_tokens == 64 - prompt


async def test_text_completion_chunks_and_whole_reply() -> None:
    engine = Scripted([" upon", " a", " time"])
    call = Call("completion", {"prompt": "Once", "max_tokens": 2}, "m")
    chunks = await collect(engine, call)
    assert engine.prompts == ["Once"]
    assert all(c["object"] == "text_completion" for c in chunks)
    assert [c["choices"][0]["text"] for c in chunks[:-1]] == [" upon", " a", ""]
    reply = await Scripted([" upon", " a", " time"]).complete(call)
    assert reply["object"] == "text_completion"
    assert reply["choices"][0]["text"] == " upon a"
    assert reply["choices"][0]["finish_reason"] == "length"
    assert reply["usage"] == {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}


async def test_whole_chat_reply() -> None:
    reply = await Scripted(["Hel", "lo"]).complete(chat(max_tokens=4))
    assert reply["object"] == "chat.completion"
    assert reply["choices"][0]["message"] == {"role": "assistant", "content": "Hello"}
    assert reply["choices"][0]["finish_reason"] == "stop"
    assert reply["usage"]["completion_tokens"] == 2


async def test_prompt_longer_than_the_context_is_refused() -> None:
    engine = Scripted(["a"], n_ctx=64)
    with pytest.raises(InvalidRequestError) as err:
        await collect(engine, chat(messages=[{"role": "user", "content": "w " * 80}]))
    assert err.value.code == "context_length_exceeded" and err.value.param == "messages"
    assert engine.samplings == []


# What the engine cannot do.


@pytest.mark.parametrize(
    ("call", "param", "words"),
    [
        (chat(n=2), "n", "one choice"),
        (chat(logprobs=True), "logprobs", "log probabilities"),
        (chat(response_format={"type": "json_object"}), "response_format", "JSON"),
    ],
)
async def test_refusals_name_the_field(call: Call, param: str, words: str) -> None:
    engine = Scripted(["a"])
    with pytest.raises(CapabilityError) as err:
        await engine.complete(call)
    assert err.value.param == param and words in err.value.message
    assert engine.samplings == []  # refused before any generation


IMAGE = {"type": "image_url", "image_url": {"url": "data:x"}}


def served_by(engine: ThreadEngine, folder: Path, **entry: Any) -> Router:
    """A router in front of an embedded provider whose model ``m`` runs on ``engine``."""
    (folder / "config.json").write_text('{"architectures": ["Gemma3ForCausalLM"]}')
    (folder / "model.safetensors").write_bytes(b"\x02\x00\x00\x00\x00\x00\x00\x00{}")
    models = [{"name": "m", "path": str(folder), "engine": "transformers", **entry}]
    provider = EmbeddedProvider("local", ProviderConfig(type="embedded", models=models))
    provider.engines["m"] = engine
    return Router(Catalog({"local": provider}, {}))


@pytest.mark.parametrize(
    ("kind", "body", "entry", "param", "words"),
    [
        (
            "chat",
            {"tools": [{"type": "function", "function": {"name": "f"}}]},
            {},
            "tools",
            "tools",
        ),
        (
            "chat",
            {"messages": [{"role": "user", "content": [{"type": "text", "text": "see"}, IMAGE]}]},
            {},
            "messages[0].content[1]",
            "vision",
        ),
        (  # the configuration cannot give an engine what it lacks
            "chat",
            {"messages": [{"role": "user", "content": [IMAGE]}]},
            {"supports_vision": True},
            "messages[0].content[0]",
            "vision",
        ),
        ("embedding", {"input": "x"}, {}, "model", "embeddings"),
    ],
)
async def test_what_the_engine_lacks_is_refused_before_it_is_asked(
    tmp_path: Path, kind: Kind, body: JSON, entry: JSON, param: str, words: str
) -> None:
    engine = Scripted(["a"])
    router = served_by(engine, tmp_path, **entry)
    body = {"model": "m", "messages": [{"role": "user", "content": "Hi"}], **body}
    with pytest.raises(CapabilityError) as err:
        await router.complete(kind, body)
    assert err.value.param == param
    assert err.value.message == (
        f"The scripted engine of model 'm' cannot serve this request: it lacks {words}."
    )
    assert engine.samplings == [] and engine.prompts == []  # never reached the engine


# Cancellation, loading, one generation at a time.


async def test_consumer_leaving_stops_generation_between_tokens() -> None:
    engine = Scripted([f"t{i} " for i in range(1000)], delay=0.005)
    async with contextlib.aclosing(engine.stream(chat(max_tokens=1000))) as chunks:
        seen = 0
        async for _ in chunks:
            seen += 1
            if seen == 3:
                break
    await engine.unload()  # waits for the worker to see the flag and end
    assert engine.closed and engine.pulled < 20
    assert engine.unloaded == 1 and engine.running == 0


async def test_cancelled_consumer_task_stops_generation() -> None:
    engine = Scripted([f"t{i} " for i in range(1000)], delay=0.005)

    async def consume() -> None:
        async for _ in engine.stream(chat(max_tokens=1000)):
            pass

    task = asyncio.create_task(consume())
    await asyncio.to_thread(lambda: wait_until(lambda: engine.pulled >= 3))
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await engine.unload()
    assert engine.closed and engine.pulled < 30


async def test_generations_run_one_at_a_time_in_arrival_order() -> None:
    engine = Scripted(["a", "b", "c"], delay=0.01)
    first, second = await asyncio.gather(
        engine.complete(chat(max_tokens=3)), engine.complete(chat(max_tokens=3))
    )
    assert engine.most_running == 1
    assert first["choices"][0]["message"]["content"] == "abc"
    assert second["choices"][0]["message"]["content"] == "abc"


async def test_load_reports_progress_and_a_cancelled_load_frees_what_it_built() -> None:
    engine = Scripted([])
    seen: list[float] = []
    await engine.load(seen.append, threading.Event())
    assert seen == [0.5, 1.0] and engine.path == Path("/nonexistent/m")
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(LoadCancelled):
        await engine.load(seen.append, cancel)
    assert engine.unloaded == 0  # cancelled before the runtime was asked
    engine._resolve = lambda: Path("/nonexistent/m")

    class Late(Scripted):
        def _load_blocking(self, path: Path, progress: Any, cancel: threading.Event) -> None:
            cancel.set()
            raise LoadCancelled

    late = Late([])
    with pytest.raises(LoadCancelled):
        await late.load(seen.append, threading.Event())
    assert late.unloaded == 1


# Sampling fields beyond temperature, top_p, top_k and seed.


async def test_logit_bias_and_penalties_reach_an_engine_that_applies_them() -> None:
    class Biased(Scripted):
        sampling_fields = frozenset({"logit_bias", "presence_penalty", "frequency_penalty"})

    engine = Biased(["a"])
    body = {"logit_bias": {"1": -100, "106": 5.5}, "presence_penalty": 0.5, "frequency_penalty": 1}
    await collect(engine, chat(max_tokens=1, **body))
    (sampling,) = engine.samplings
    assert sampling.logit_bias == {1: -100.0, 106: 5.5}
    assert (sampling.presence_penalty, sampling.frequency_penalty) == (0.5, 1.0)


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"logit_bias": {"1": -100}}, "logit_bias"),
        ({"presence_penalty": 0.3}, "presence_penalty"),
        ({"frequency_penalty": -1}, "frequency_penalty"),
    ],
)
async def test_sampling_fields_an_engine_cannot_apply_are_refused(body: JSON, param: str) -> None:
    engine = Scripted(["a"])
    with pytest.raises(CapabilityError) as err:
        await collect(engine, chat(**body))
    assert err.value.param == param and "does not apply" in err.value.message
    neutral = {"logit_bias": {}, "presence_penalty": 0, "frequency_penalty": 0.0}
    await collect(engine, chat(max_tokens=1, **neutral))  # neutral values are no request


@pytest.mark.parametrize(
    "bias", [["1"], {"x": 1}, {"1": 101}, {"1": "high"}, {"1": True}], ids=repr
)
async def test_malformed_logit_bias_names_the_field(bias: Any) -> None:
    with pytest.raises(InvalidRequestError) as err:
        await collect(Scripted(["a"]), chat(logit_bias=bias))
    assert err.value.param == "logit_bias"
