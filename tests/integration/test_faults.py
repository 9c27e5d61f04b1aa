"""Backend faults over real sockets: each ends in success by retry or fallback, or in a clear
OpenAI-shaped error (an error event once bytes went out), and no request hangs.

The faults come from `tests.support.faults.FaultProxy` in front of the real llama-cpp-python
server (everything that is not a fault is the real runtime's answer); a connection refused is a
closed port. Each fault ``F`` has a provider ``f-F`` and two routes: ``via-F`` (``f-F``, then
the real server as fallback) and ``only-F`` (``f-F`` alone).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.support import client
from tests.support.checks import check_chat, check_chat_stream, check_error
from tests.support.faults import FaultProxy, faulty_provider, run_fault_proxy
from tests.support.servers import free_port, run_gateway

pytestmark = [pytest.mark.slow, pytest.mark.timeout(60)]

FAULTS = ["500x1", "500", "429x1", "429", "hang", "stall", "cut", "badjson", "badtype"]
FAULTS += ["badevent", "500x2"]
NEVER_OPENS = {"failures": 1000, "window": 1000}  # most tests look at one request at a time
ASK = [{"role": "user", "content": "Say hi"}]


def _provider(endpoint: str, **extra: Any) -> dict[str, Any]:
    return faulty_provider(endpoint, **{"timeout": 30, "breaker": NEVER_OPENS, **extra})


@pytest.fixture(scope="module")
def setup(llama_server: str) -> Iterator[tuple[str, FaultProxy]]:
    with run_fault_proxy(llama_server) as proxy:
        providers: dict[str, Any] = {
            "llama": {"type": "llama-cpp-python", "endpoint": llama_server},
            "f-refused": _provider(f"http://127.0.0.1:{free_port()}"),
            "f-gone": _provider(
                f"http://127.0.0.1:{free_port()}", breaker={"failures": 1, "cooldown": 30}
            ),
        }
        for fault in FAULTS:
            providers[f"f-{fault}"] = _provider(proxy.endpoint(fault))
        providers["f-500x1"]["max_retries"] = 1
        providers["f-429x1"]["max_retries"] = 1
        providers["f-hang"].update(timeout=1, first_token_timeout=1)
        providers["f-stall"]["timeout"] = 1  # seconds between chunks: the stall is noticed
        providers["f-500x2"]["breaker"] = {"failures": 2, "cooldown": 1}
        routes: dict[str, Any] = {}
        for name in providers:
            if name.startswith("f-"):
                fault = name[2:]
                target = {"provider": name, "model": "gemma-3-270m"}
                fallback = {"provider": "llama", "model": "gemma-3-270m"}
                routes[f"via-{fault}"] = {"targets": [target, fallback]}
                routes[f"only-{fault}"] = {"targets": [target]}
        routes["only-500x2"]["retry"] = {"recovery_wait": 3}
        routes["only-gone"]["retry"] = {"recovery_wait": 0.5}
        config = {"providers": providers, "routes": routes, "health": {"enabled": False}}
        with run_gateway(config) as url:
            yield url, proxy


async def chat(url: str, model: str, stream: bool = False, **headers: str) -> client.Reply:
    body = {"model": model, "messages": ASK, "max_tokens": 2, "stream": stream}
    return await client.post(url + "/v1/chat/completions", body, headers=headers)


def _error(reply: client.Reply, status: int, code: str) -> dict[str, Any]:
    assert reply.status == status, reply.body
    error: dict[str, Any] = reply.json()["error"]
    check_error(reply.json(), type=error["type"], code=code, param=error["param"])
    assert "Traceback" not in error["message"]
    return error


def _ok(reply: client.Reply, backend: str, stream: bool) -> None:
    assert reply.status == 200, reply.body
    assert reply.headers["X-Turnout-Backend"] == backend
    if stream:
        text = reply.body.decode()
        assert text.rstrip().endswith("data: [DONE]"), text
    else:
        check_chat(reply.json(), max_tokens=2)


# HTTP 500


async def test_500_is_retried_on_the_same_backend(setup: tuple[str, FaultProxy]) -> None:
    url, proxy = setup
    reply = await chat(url, "via-500x1")
    _ok(reply, "f-500x1", stream=False)
    assert proxy.counts["500x1"] == 2  # the 500, then the real answer


@pytest.mark.parametrize("stream", [False, True])
async def test_500_falls_back(setup: tuple[str, FaultProxy], stream: bool) -> None:
    url, proxy = setup
    before = proxy.counts["500"]
    _ok(await chat(url, "via-500", stream), "llama", stream)
    assert proxy.counts["500"] == before + 1  # max_retries 0: tried once


async def test_500_alone_is_a_502_naming_the_backend(setup: tuple[str, FaultProxy]) -> None:
    url, _ = setup
    error = _error(await chat(url, "only-500"), 502, "backend_error")
    assert "'f-500'" in error["message"] and "HTTP 500" in error["message"]
    assert "llama_decode returned -3" in error["message"]


# HTTP 429 with Retry-After


async def test_429_waits_out_retry_after_then_succeeds(setup: tuple[str, FaultProxy]) -> None:
    url, proxy = setup
    reply = await chat(url, "via-429x1")
    _ok(reply, "f-429x1", stream=False)
    assert proxy.counts["429x1"] == 2
    assert 1.0 <= reply.elapsed < 10  # Retry-After: 1 honoured, not the 0.1 s backoff


async def test_429_alone_is_a_429_with_retry_after(setup: tuple[str, FaultProxy]) -> None:
    url, _ = setup
    reply = await chat(url, "only-429")
    error = _error(reply, 429, "rate_limited")
    assert error["type"] == "rate_limit_error"
    assert reply.headers["Retry-After"] == "1"


# Connection refused


@pytest.mark.parametrize("stream", [False, True])
async def test_refused_falls_back(setup: tuple[str, FaultProxy], stream: bool) -> None:
    url, _ = setup
    _ok(await chat(url, "via-refused", stream), "llama", stream)


async def test_refused_alone_is_a_502(setup: tuple[str, FaultProxy]) -> None:
    url, _ = setup
    error = _error(await chat(url, "only-refused"), 502, "backend_unavailable")
    assert "'f-refused'" in error["message"] and "unreachable" in error["message"]


# Timeout before the first byte


@pytest.mark.parametrize("stream", [False, True])
async def test_silence_before_the_first_byte_falls_back(
    setup: tuple[str, FaultProxy], stream: bool
) -> None:
    url, _ = setup
    reply = await chat(url, "via-hang", stream)
    _ok(reply, "llama", stream)
    assert 0.9 < reply.elapsed < 15


@pytest.mark.parametrize("stream", [False, True])
async def test_silence_alone_is_a_504(setup: tuple[str, FaultProxy], stream: bool) -> None:
    url, _ = setup
    reply = await chat(url, "only-hang", stream)
    error = _error(reply, 504, "backend_timeout")
    assert "'f-hang'" in error["message"]
    assert 0.9 < reply.elapsed < 5


async def test_the_request_timeout_header_bounds_the_whole_request(
    setup: tuple[str, FaultProxy],
) -> None:
    url, _ = setup
    reply = await chat(url, "only-hang", **{"X-Turnout-Timeout": "0.3"})
    error = _error(reply, 504, "request_timeout")
    assert "0.3s" in error["message"]
    assert reply.elapsed < 0.9  # before the backend's own 1 s timeouts


async def test_an_invalid_override_is_a_400_naming_the_header(
    setup: tuple[str, FaultProxy],
) -> None:
    url, _ = setup
    reply = await chat(url, "via-500", **{"X-Turnout-Timeout": "soon"})
    error = _error(reply, 400, "invalid_header")
    assert error["param"] == "X-Turnout-Timeout"


# Failures after bytes went out: the stream ends with an error event, never hangs.


@pytest.mark.parametrize(
    ("model", "code"), [("stall", "backend_timeout"), ("cut", "backend_unavailable")]
)
@pytest.mark.parametrize("route", ["via", "only"])
async def test_failure_mid_stream_ends_with_an_error_event(
    setup: tuple[str, FaultProxy], model: str, code: str, route: str
) -> None:
    url, _ = setup
    body = {"model": f"{route}-{model}", "messages": ASK, "max_tokens": 2, "stream": True}
    reply = await client.stream(url + "/v1/chat/completions", body)
    assert reply.status == 200
    assert reply.headers["X-Turnout-Backend"] == f"f-{model}"  # committed: no fallback now
    assert len(reply.events) == 2 and "choices" in reply.events[0]
    check_error(reply.events[-1], type=reply.events[-1]["error"]["type"], code=code, param=None)
    assert f"'f-{model}'" in reply.events[-1]["error"]["message"]
    assert not reply.done
    assert reply.lines[-1][0] - reply.started < 5


# Malformed replies


@pytest.mark.parametrize(("fault", "stream"), [("badjson", False), ("badtype", False)])
async def test_malformed_reply_falls_back(
    setup: tuple[str, FaultProxy], fault: str, stream: bool
) -> None:
    url, _ = setup
    _ok(await chat(url, f"via-{fault}", stream), "llama", stream)


@pytest.mark.parametrize("fault", ["badtype", "badevent"])
async def test_malformed_stream_falls_back(setup: tuple[str, FaultProxy], fault: str) -> None:
    url, _ = setup
    body = {"model": f"via-{fault}", "messages": ASK, "max_tokens": 2, "stream": True}
    reply = await client.stream(url + "/v1/chat/completions", body)
    assert reply.status == 200 and reply.done
    assert reply.headers["X-Turnout-Backend"] == "llama"
    check_chat_stream(reply.events, max_tokens=2, include_usage=False)


@pytest.mark.parametrize(
    ("fault", "stream", "words"),
    [
        ("badjson", False, "malformed JSON"),
        ("badtype", False, "malformed JSON (text/html"),
        ("badtype", True, "answered a stream request with text/html"),
        ("badevent", True, "malformed stream event"),
    ],
)
async def test_malformed_reply_alone_is_a_502(
    setup: tuple[str, FaultProxy], fault: str, stream: bool, words: str
) -> None:
    url, _ = setup
    error = _error(await chat(url, f"only-{fault}", stream), 502, "backend_protocol_error")
    assert words in error["message"] and f"'f-{fault}'" in error["message"]


# Circuits: a request waits briefly for a cooling backend, then gets 503 with Retry-After.


async def test_a_request_waits_for_an_open_circuit_to_recover(
    setup: tuple[str, FaultProxy],
) -> None:
    url, proxy = setup
    for _ in range(2):  # two failures in a row open f-500x2's circuit for 1 s
        _error(await chat(url, "only-500x2"), 502, "backend_error")
    reply = await chat(url, "only-500x2")
    _ok(reply, "f-500x2", stream=False)  # the half-open trial reached the real server
    assert 0.5 < reply.elapsed < 10  # the rest of the 1 s cooldown, then the real answer
    assert proxy.counts["500x2"] == 3


async def test_no_recovery_in_time_is_a_503_with_retry_after(
    setup: tuple[str, FaultProxy],
) -> None:
    url, _ = setup
    _error(await chat(url, "only-gone"), 502, "backend_unavailable")  # opens for 30 s
    reply = await chat(url, "only-gone")
    error = _error(reply, 503, "no_backend_available")
    assert "'f-gone'" in error["message"] and "circuit open" in error["message"]
    assert 25 <= int(reply.headers["Retry-After"]) <= 30
    assert reply.elapsed < 0.4  # nothing recovers within recovery_wait (0.5 s): no wait at all


async def test_stats_show_each_fault(setup: tuple[str, FaultProxy]) -> None:
    url, _ = setup
    await chat(url, "only-cut", stream=False)  # a whole reply: the cut needs a stream
    stats = (await client.get(url + "/stats")).json()["backends"]
    assert stats["f-500"]["models"]["gemma-3-270m"]["errors"]["backend_error"] >= 3
    assert stats["f-gone"]["circuit"]["state"] == "open"
    assert stats["f-gone"]["failures"] == 1  # the second request never reached it
    assert stats["f-hang"]["models"]["gemma-3-270m"]["errors"]["backend_timeout"] >= 4
    assert stats["f-500x1"]["successes"] == 1 and stats["f-500x1"]["failures"] == 1
    assert stats["llama"]["failures"] == 0 and stats["llama"]["successes"] >= 10
