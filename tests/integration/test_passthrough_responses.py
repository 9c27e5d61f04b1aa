"""Passthrough for the OpenAI Responses dialect: the official ``openai`` SDK, unchanged, against
turnout in front of a vLLM backend (the fake of tests/fakes/openai_responses.py, which follows
OpenAI's documented Responses wire format, as vLLM cannot run here) gets the backend's own
objects and events: its ids (``resp_fakevllm...``), its model name, its ``service_tier``, with
``X-Turnout-Passthrough: 1``; the request reaches the backend as it came, only ``model``
rewritten and ``stream`` explicit; usage is counted in ``/stats`` from the ``usage`` of the reply
or of ``response.completed``. Translated as before: a request turnout must keep
(``server.responses_store`` on, ``previous_response_id``), a provider with ``passthrough:
false``, and a runtime that does not declare the dialect. A backend's error reaches the SDK as its
own exception type, in OpenAI's shape, without the backend's address; one mid-stream ends the
relayed stream with a ``response.failed`` that continues it.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from tests.fakes.openai_runtimes import FakeRuntime, run_fake_runtime
from tests.support.dialects import check_responses_stream, sse_events
from tests.support.openapi import assert_valid
from tests.support.servers import run_gateway

ASK = "one two three four"
KEY = "sk-vllm-0123456789abcdef"  # the backend's key, configured: never shown to a client


@pytest.fixture(scope="module")
def fakes() -> Iterator[tuple[FakeRuntime, FakeRuntime]]:
    with run_fake_runtime("vllm") as vllm, run_fake_runtime("localai") as localai:
        yield vllm, localai


def _config(fakes: tuple[FakeRuntime, FakeRuntime], **server: Any) -> dict[str, Any]:
    vllm, localai = fakes
    return {
        "providers": {
            "vllm": {"type": "vllm", "endpoint": vllm.url, "max_retries": 0, "api_key": KEY},
            "quiet": {"type": "vllm", "endpoint": vllm.url, "max_retries": 0,
                      "passthrough": False},
            "local": {"type": "localai", "endpoint": localai.url, "max_retries": 0},
        },
        "health": {"enabled": False},
        **({"server": server} if server else {}),
    }  # fmt: skip


@pytest.fixture(scope="module")
def url(fakes: tuple[FakeRuntime, FakeRuntime]) -> Iterator[str]:
    with run_gateway(_config(fakes)) as base:
        yield base


@pytest.fixture(scope="module")
def stored(fakes: tuple[FakeRuntime, FakeRuntime]) -> Iterator[str]:
    """A gateway that keeps responses (``server.responses_store``)."""
    with run_gateway(_config(fakes, responses_store=16)) as base:
        yield base


@pytest.fixture(autouse=True)
def _reset(fakes: tuple[FakeRuntime, FakeRuntime]) -> Iterator[None]:
    for fake in fakes:
        fake.reset()
    yield


def _client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0, timeout=30)


def _tokens(url: str, backend: str) -> tuple[int, int]:
    stats = httpx.get(url + "/stats", timeout=10).json()["backends"].get(backend) or {}
    return stats.get("tokens_in", 0), stats.get("tokens_out", 0)


def test_create_is_relayed(url: str, fakes: Any) -> None:
    vllm = fakes[0]
    before = _tokens(url, "vllm")
    raw = _client(url).responses.with_raw_response.create(
        model="vllm/fake-model", input=ASK, max_output_tokens=16, instructions="Be brief."
    )
    assert raw.headers["x-turnout-passthrough"] == "1"
    assert raw.headers["x-turnout-backend"] == "vllm"
    body = raw.http_response.json()
    assert_valid(body, "Response")
    # the backend's own object: its id, its model name, its field
    assert body["id"].startswith("resp_fakevllm") and body["model"] == "fake-model"
    assert body["service_tier"] == "default"
    reply = raw.parse()
    assert reply.output_text == "You said: " + ASK
    # the request as it came: model rewritten, stream explicit, nothing translated
    received = vllm.bodies("/v1/responses")[-1]
    assert received == {"model": "fake-model", "input": ASK, "max_output_tokens": 16,
                        "instructions": "Be brief.", "stream": False}  # fmt: skip
    assert not vllm.bodies("/v1/chat/completions")
    assert reply.usage is not None
    assert (reply.usage.input_tokens, reply.usage.output_tokens) == (6, 6)
    assert _tokens(url, "vllm") == (before[0] + 6, before[1] + 6)


def test_stream_is_relayed_event_by_event(url: str, fakes: Any) -> None:
    before = _tokens(url, "vllm")
    body = {"model": "vllm/fake-model", "input": ASK, "stream": True}
    with httpx.stream("POST", url + "/v1/responses", json=body, timeout=30) as reply:
        assert reply.status_code == 200
        assert reply.headers["x-turnout-passthrough"] == "1"
        events = sse_events(reply.read())
    final = check_responses_stream(events)
    assert [e[0] for e in events] == [
        "response.created", "response.in_progress", "response.output_item.added",
        "response.content_part.added", *["response.output_text.delta"] * 6,
        "response.output_text.done", "response.content_part.done",
        "response.output_item.done", "response.completed",
    ]  # fmt: skip
    assert final["id"].startswith("resp_fakevllm") and final["model"] == "fake-model"
    assert fakes[0].bodies("/v1/responses")[-1]["stream"] is True
    client = _client(url)
    with client.responses.stream(model="vllm/fake-model", input=ASK) as stream:
        text = "".join(e.delta for e in stream if e.type == "response.output_text.delta")
        done = stream.get_final_response()
    assert text == "You said: " + ASK and done.id.startswith("resp_fakevllm")
    seen = [e.type for e in client.responses.create(model="vllm/fake-model", input=ASK,
                                                    stream=True)]  # fmt: skip
    assert seen[0] == "response.created" and seen[-1] == "response.completed"
    assert _tokens(url, "vllm") == (before[0] + 3 * 4, before[1] + 3 * 6)


def test_a_stream_cut_at_max_output_tokens_ends_and_is_counted(url: str) -> None:
    before = _tokens(url, "vllm")
    body = {"model": "vllm/fake-model", "input": ASK, "stream": True, "max_output_tokens": 2}
    reply = httpx.post(url + "/v1/responses", json=body, timeout=30)
    assert reply.headers["x-turnout-passthrough"] == "1"
    final = check_responses_stream(sse_events(reply.content))
    assert final["status"] == "incomplete"
    assert _tokens(url, "vllm") == (before[0] + 4, before[1] + 2)


@pytest.mark.parametrize("model", ["quiet/fake-model", "local/fake-model"])
def test_translated_where_passthrough_does_not_apply(url: str, model: str, fakes: Any) -> None:
    """``passthrough: false`` (``quiet``), and LocalAI, whose preset declares no Responses
    route: translated into a chat completion, turnout's own response object back."""
    client = _client(url)
    raw = client.responses.with_raw_response.create(model=model, input=ASK)
    assert "x-turnout-passthrough" not in raw.headers
    body = raw.http_response.json()
    assert_valid(body, "Response")
    assert not body["id"].startswith("resp_fakevllm") and body["model"] == model
    assert raw.parse().output_text == "You said: " + ASK
    with client.responses.stream(model=model, input=ASK) as stream:
        assert not stream.get_final_response().id.startswith("resp_fakevllm")
    assert not fakes[0].bodies("/v1/responses")


def test_a_response_turnout_keeps_is_translated(stored: str, fakes: Any) -> None:
    """With ``server.responses_store`` on, a response the client lets be stored (OpenAI's
    default) is turnout's to keep: translated, so that ``GET`` and ``previous_response_id``
    find it; ``store: false`` keeps nothing and is relayed."""
    client = _client(stored)
    first = client.responses.with_raw_response.create(model="vllm/fake-model", input=ASK)
    assert "x-turnout-passthrough" not in first.headers
    kept = first.parse()
    assert not kept.id.startswith("resp_fakevllm")
    assert client.responses.retrieve(kept.id).id == kept.id
    follow = client.responses.with_raw_response.create(
        model="vllm/fake-model", input="five six", previous_response_id=kept.id
    )
    assert "x-turnout-passthrough" not in follow.headers
    assert follow.parse().output_text == "You said: five six"
    assert not fakes[0].bodies("/v1/responses")
    sent = fakes[0].bodies("/v1/chat/completions")[-1]["messages"]
    assert [m["role"] for m in sent] == ["user", "assistant", "user"]  # the history, rebuilt
    loose = client.responses.with_raw_response.create(
        model="vllm/fake-model", input=ASK, store=False
    )
    assert loose.headers["x-turnout-passthrough"] == "1"
    assert loose.parse().id.startswith("resp_fakevllm")


def test_backend_errors_reach_the_sdk_as_its_own_types(url: str, fakes: Any) -> None:
    vllm = fakes[0]
    vllm.fail(400, f"prompt too long for {vllm.url}/v1/responses (sent with {KEY})")
    with pytest.raises(openai.BadRequestError) as bad:
        _client(url).responses.create(model="vllm/fake-model", input=ASK)
    text = bad.value.response.text
    assert "127.0.0.1" not in text and KEY not in text and "[redacted]" in text
    assert "vllm" in bad.value.message and "prompt too long" in bad.value.message
    assert bad.value.response.headers["x-turnout-backend"] == "vllm"
    vllm.fail(503, "the engine is sleeping")
    with (
        pytest.raises(openai.APIStatusError) as down,
        _client(url).responses.stream(model="vllm/fake-model", input=ASK) as stream,
    ):
        stream.get_final_response()
    assert down.value.status_code >= 500 and "127.0.0.1" not in down.value.response.text
    assert down.value.response.json()["error"]["message"]


def test_an_error_mid_stream_ends_it_with_response_failed(url: str, fakes: Any) -> None:
    fakes[0].fail_midstream(after=5, message=f"the engine died at {fakes[0].url}")
    body = {"model": "vllm/fake-model", "input": ASK, "stream": True}
    reply = httpx.post(url + "/v1/responses", json=body, timeout=30)
    assert reply.headers["x-turnout-passthrough"] == "1"
    events = sse_events(reply.content)
    names = [e[0] for e in events]
    assert names[:5] == ["response.created", "response.in_progress",
                         "response.output_item.added", "response.content_part.added",
                         "response.output_text.delta"]  # fmt: skip
    assert names[5:] == ["response.failed"]
    failed = events[-1][1]
    assert failed["sequence_number"] == 5
    assert_valid(failed, "ResponseFailedEvent")
    assert failed["response"]["id"] == events[0][1]["response"]["id"]
    assert failed["response"]["status"] == "failed"
    assert "the engine died" in failed["response"]["error"]["message"]
    assert "127.0.0.1" not in reply.text


def test_screening_still_applies_to_the_clients_body(url: str, fakes: Any) -> None:
    """What would be relayed as it came is screened first: a field that would redirect the
    backend, and an image it would fetch from a private address, are refused; nothing is sent."""
    client = _client(url)
    with pytest.raises(openai.BadRequestError) as redirect:
        client.responses.create(
            model="vllm/fake-model", input=ASK, extra_body={"api_base": "http://10.0.0.1"}
        )
    assert redirect.value.param == "api_base"
    image = {"type": "input_image", "image_url": "http://169.254.169.254/latest/meta-data"}
    ask = [{"role": "user", "content": [{"type": "input_text", "text": "what?"}, image]}]
    with pytest.raises(openai.BadRequestError):
        client.responses.create(model="vllm/fake-model", input=ask)  # type: ignore[arg-type]
    assert not fakes[0].bodies("/v1/responses")
