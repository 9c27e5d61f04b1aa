"""Failover mid-stream over real sockets: a stream whose backend dies after it started is finished
by the route's next target when the route says ``stream_failover: continue``, and ends with an
error event, as before, when it does not.

Both backends are the real llama-cpp-python server, reached through `FaultProxy`
(tests/support/faults.py): the first through a fault that forwards the server's first events and
then closes the connection (``cut4``), sends an error event (``error4``) or goes silent
(``stall4``, noticed by the provider's ``idle_timeout``); the second through ``ok``, which
forwards everything and keeps the continuation request the gateway sent. The client is the
official ``openai`` SDK.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import openai
import pytest

from tests.support import client
from tests.support.faults import FaultProxy, faulty_provider, run_fault_proxy
from tests.support.servers import run_gateway
from turnout.routing.failover import CONTINUE

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

ASK = [{"role": "user", "content": "Count from one to twenty, in words."}]
NEVER_OPENS = {"failures": 1000, "window": 1000}


def _provider(endpoint: str, **extra: Any) -> dict[str, Any]:
    return faulty_provider(
        endpoint, **{"timeout": 30, "max_concurrency": 1, "breaker": NEVER_OPENS, **extra}
    )


@pytest.fixture(scope="module")
def setup(llama_server: str) -> Iterator[tuple[str, FaultProxy]]:
    with run_fault_proxy(llama_server) as proxy:
        providers = {
            "cut": _provider(proxy.endpoint("cut4")),
            "error": _provider(proxy.endpoint("error4")),
            "stall": _provider(proxy.endpoint("stall4"), idle_timeout=1),
            "next": _provider(proxy.endpoint("ok")),
        }
        routes: dict[str, Any] = {}
        for fault in ("cut", "error", "stall"):
            first = {"provider": fault, "model": "gemma-3-270m"}
            then = {"provider": "next", "model": "gemma-3-270m"}
            routes[f"on-{fault}"] = {"targets": [first, then], "stream_failover": "continue"}
        routes["off-cut"] = {"targets": routes["on-cut"]["targets"]}  # the default: an error
        routes["alone-cut"] = {"targets": routes["on-cut"]["targets"][:1]}
        routes["alone-cut"]["stream_failover"] = "continue"
        config = {"providers": providers, "routes": routes, "health": {"enabled": False}}
        with run_gateway(config) as url:
            yield url, proxy


async def _sdk_stream(url: str, model: str) -> tuple[str, list[str | None]]:
    """The text and the finish reasons the official SDK reads off a stream."""
    sdk = openai.AsyncOpenAI(base_url=url + "/v1", api_key="none", max_retries=0)
    text, finishes = "", []
    async with sdk:
        stream = await sdk.chat.completions.create(
            model=model,
            messages=ASK,
            max_tokens=16,
            stream=True,  # type: ignore[arg-type]
        )
        async for chunk in stream:
            for choice in chunk.choices:
                text += choice.delta.content or ""
                finishes.append(choice.finish_reason)
    return text, [f for f in finishes if f]


async def _backend_stats(url: str) -> dict[str, Any]:
    stats: dict[str, Any] = (await client.get(url + "/stats")).json()
    return stats


@pytest.mark.parametrize(
    ("fault", "code"),
    [("cut", "backend_unavailable"), ("error", "backend_error"), ("stall", "backend_timeout")],
)
async def test_a_stream_cut_mid_way_is_finished_by_the_next_target(
    setup: tuple[str, FaultProxy], fault: str, code: str
) -> None:
    url, proxy = setup
    before = await _backend_stats(url)
    asked = len(proxy.bodies.get("ok", []))
    text, finishes = await _sdk_stream(url, f"on-{fault}")
    assert len(finishes) == 1  # one answer, one end
    continued = json.loads(proxy.bodies["ok"][asked])
    sent_first = continued["messages"][-2]
    assert continued["messages"][:-2] == ASK
    assert continued["messages"][-1] == {"role": "user", "content": CONTINUE}
    assert sent_first["role"] == "assistant" and sent_first["content"].strip()
    assert text.startswith(sent_first["content"])  # the first backend's text, once
    assert continued["max_tokens"] < 16  # what the first backend used is not asked again
    after = await _backend_stats(url)
    first, then = (after["backends"][n] for n in (fault, "next"))
    assert first["failures"] == before["backends"][fault]["failures"] + 1
    assert first["models"]["gemma-3-270m"]["errors"][code] >= 1
    assert then["successes"] == before["backends"]["next"]["successes"] + 1
    assert after["requests"]["ok"] == before["requests"]["ok"] + 1  # the request: one, ok


async def test_the_raw_stream_has_one_id_one_role_and_one_done(
    setup: tuple[str, FaultProxy],
) -> None:
    url, _ = setup
    body = {"model": "on-cut", "messages": ASK, "max_tokens": 16, "stream": True}
    reply = await client.stream(url + "/v1/chat/completions", body)
    assert reply.status == 200 and reply.done
    assert reply.headers["X-Turnout-Backend"] == "cut"  # committed to it when the stream began
    assert not any("error" in e for e in reply.events)
    assert len({e["id"] for e in reply.events}) == 1
    roles = [e["choices"][0]["delta"].get("role") for e in reply.events if e["choices"]]
    assert roles.count("assistant") == 1


async def test_without_the_option_the_client_gets_the_error_event(
    setup: tuple[str, FaultProxy],
) -> None:
    url, proxy = setup
    before = await _backend_stats(url)
    asked = len(proxy.bodies.get("ok", []))
    with pytest.raises(openai.APIError, match="'cut'"):
        await _sdk_stream(url, "off-cut")
    with pytest.raises(openai.APIError, match="'cut'"):
        await _sdk_stream(url, "alone-cut")  # on, but no target left to ask
    assert len(proxy.bodies.get("ok", [])) == asked  # nobody was asked to continue
    after = await _backend_stats(url)
    assert after["backends"]["cut"]["failures"] == before["backends"]["cut"]["failures"] + 2
    assert after["requests"]["ok"] == before["requests"]["ok"]  # a cut stream is no success
    assert after["requests"]["error"] == before["requests"]["error"] + 2
