"""Issue 3's acceptance, with real servers: two llama-cpp-python replicas and a closed port in one
route group. Every request succeeds; the dead backend is tried only until its circuit opens (then
once per cooldown, which doubles), or never once the health monitor has seen it down; ``/stats``
and ``/metrics`` show it, in numbers.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support import client
from tests.support.servers import free_port, run_gateway, run_llama_cpp_server

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

MODEL = "gemma-3-270m"
REQUESTS = 200
CONCURRENCY = 4
FAILURES_TO_OPEN = 3
COOLDOWN = 2.0


@pytest.fixture(scope="module")
def replicas(gemma_path: Path) -> Iterator[tuple[str, str]]:
    with run_llama_cpp_server(gemma_path) as one, run_llama_cpp_server(gemma_path) as two:
        yield one, two


def config(replicas: tuple[str, str], **extra: Any) -> dict[str, Any]:
    one, two = replicas
    return {
        "providers": {
            "r1": {"type": "llama-cpp-python", "endpoint": one},
            "dead": {
                "type": "openai",
                "endpoint": f"http://127.0.0.1:{free_port()}",  # nothing listens there
                "models": [MODEL],
                "breaker": {"failures": FAILURES_TO_OPEN, "cooldown": COOLDOWN},
            },
            "r2": {"type": "llama-cpp-python", "endpoint": two},
        },
        "routes": {
            "gemma": {
                "strategy": "round_robin",
                "targets": [
                    {"provider": "r1", "model": MODEL},
                    {"provider": "dead", "model": MODEL},
                    {"provider": "r2", "model": MODEL},
                ],
            }
        },
        # A stream queued longer than the keep-alive interval would start before its backend is
        # known (no X-Turnout-Backend header); on a busy 2-core machine that can happen.
        "server": {"sse_keepalive_seconds": 120},
        **extra,
    }


async def send_all(url: str, count: int) -> list[tuple[int, str, str]]:
    """``count`` chat requests, ``CONCURRENCY`` at a time, every other one streamed."""
    gate = asyncio.Semaphore(CONCURRENCY)

    async def one(i: int) -> tuple[int, str, str]:
        body = {
            "model": "gemma",
            "messages": [{"role": "user", "content": f"Count to {i}"}],
            "max_tokens": 2,
            "stream": i % 2 == 1,
        }
        async with gate:
            reply = await client.post(url + "/v1/chat/completions", body)
        text = reply.body.decode()
        ended = text.rstrip().endswith("data: [DONE]") if i % 2 else "choices" in reply.json()
        assert ended, text
        return reply.status, reply.headers.get("X-Turnout-Backend", ""), text

    return await asyncio.gather(*(one(i) for i in range(count)))


async def metrics(url: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    reply = await client.get(url + "/metrics")
    assert reply.status == 200
    assert reply.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    samples = {}
    for family in text_string_to_metric_families(reply.body.decode()):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def metric(samples: dict[Any, float], name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


def trials_by(seconds: float) -> int:
    """Half-open trials a dead backend can get in ``seconds`` after its circuit opened: at
    COOLDOWN, then COOLDOWN * 2, * 4... later (each failed trial doubles the cooldown)."""
    return sum(1 for k in range(1, 32) if COOLDOWN * (2**k - 1) <= seconds)


async def test_200_requests_succeed_and_the_dead_backend_is_tried_until_its_circuit_opens(
    replicas: tuple[str, str],
) -> None:
    # The health monitor is off here, so the circuit breaker alone keeps requests away.
    with run_gateway(config(replicas, health={"enabled": False})) as url:
        started = time.monotonic()
        results = await send_all(url, REQUESTS)
        elapsed = time.monotonic() - started
        stats = (await client.get(url + "/stats")).json()
        samples = await metrics(url)

    assert [status for status, _, _ in results] == [200] * REQUESTS
    served = {name: sum(1 for _, b, _ in results if b == name) for name in ("r1", "r2", "dead")}
    assert served["dead"] == 0 and served["r1"] + served["r2"] == REQUESTS
    # Round robin turns among the usable replicas: neither gets the dead one's turns.
    assert min(served["r1"], served["r2"]) >= REQUESTS * 0.4, served

    dead = stats["backends"]["dead"]
    attempts = dead["requests"]
    trials = dead["circuit"]["opens"] - 1  # each failed half-open trial opened it again
    first_burst = attempts - trials
    # Until the circuit opened: FAILURES_TO_OPEN failures, plus at most the requests that were
    # already on their way to it (CONCURRENCY - 1); then one trial per (doubling) cooldown.
    assert FAILURES_TO_OPEN <= first_burst <= FAILURES_TO_OPEN + CONCURRENCY - 1, dead
    assert 0 <= trials <= trials_by(elapsed), (dead, elapsed)
    assert dead["failures"] == attempts and dead["successes"] == 0
    assert dead["models"][MODEL]["errors"] == {"backend_unavailable": attempts}
    assert dead["circuit"]["state"] in ("open", "half_open")
    requests = stats["requests"]
    assert (requests["total"], requests["ok"], requests["reasons"]) == (REQUESTS, REQUESTS, {})
    replicas_ok = sum(stats["backends"][r]["successes"] for r in ("r1", "r2"))
    assert replicas_ok == REQUESTS
    for name in ("r1", "r2"):
        model = stats["backends"][name]["models"][MODEL]
        assert model["failures"] == 0 and model["latency_ms"]["p95"] >= model["latency_ms"]["p50"]
        assert model["ttft_ms"]["samples"] == sum(
            1 for i, (_, b, _) in enumerate(results) if b == name and i % 2
        )
        assert model["tokens_out"] > 0 and model["tokens_in"] > 0
    assert stats["overhead_ms"]["samples"] == REQUESTS

    labels = {"backend": "dead", "model": MODEL}
    assert (
        metric(samples, "turnout_backend_requests_total", **labels, outcome="failure") == attempts
    )
    assert metric(samples, "turnout_backend_requests_total", **labels, outcome="success") == 0
    assert (
        metric(samples, "turnout_backend_errors_total", **labels, code="backend_unavailable")
        == attempts
    )
    assert metric(samples, "turnout_backend_circuit_opens_total", backend="dead") == trials + 1
    state = dead["circuit"]["state"]
    assert metric(samples, "turnout_backend_circuit_state", backend="dead", state=state) == 1
    assert metric(samples, "turnout_backend_circuit_state", backend="r1", state="closed") == 1
    assert metric(samples, "turnout_requests_total", outcome="ok") == REQUESTS
    succeeded = sum(
        metric(samples, "turnout_backend_requests_total", backend=r, model=MODEL, outcome="success")
        for r in ("r1", "r2")
    )
    assert succeeded == REQUESTS
    assert metric(samples, "turnout_overhead_seconds_count") == REQUESTS
    print(
        f"\n{REQUESTS}/{REQUESTS} succeeded in {elapsed:.1f}s (r1 {served['r1']}, r2 "
        f"{served['r2']}); dead backend tried {attempts} times: {first_burst} before its circuit "
        f"opened, then {trials} half-open trials (bound {trials_by(elapsed)}); overhead p50 "
        f"{stats['overhead_ms']['p50']} ms, p95 {stats['overhead_ms']['p95']} ms"
    )


async def test_with_the_health_monitor_the_dead_backend_is_never_tried(
    replicas: tuple[str, str],
) -> None:
    with run_gateway(config(replicas, health={"interval": 0.5, "timeout": 1})) as url:
        deadline = time.monotonic() + 10
        while True:  # the monitor's first round runs in the background at start-up
            health = (await client.get(url + "/stats")).json()["backends"]["dead"]["health"]
            if health is not None:
                break
            assert time.monotonic() < deadline, "no health snapshot after 10 s"
            await asyncio.sleep(0.1)
        assert health["ok"] is False and "unreachable" in health["detail"]
        results = await send_all(url, 20)
        stats = (await client.get(url + "/stats")).json()
        samples = await metrics(url)

    assert [status for status, _, _ in results] == [200] * 20
    assert stats["backends"]["dead"]["requests"] == 0  # ordered last, never needed
    assert stats["backends"]["r1"]["health"]["ok"] is True
    assert stats["backends"]["r1"]["successes"] + stats["backends"]["r2"]["successes"] == 20
    assert metric(samples, "turnout_backend_up", backend="dead") == 0
    assert metric(samples, "turnout_backend_up", backend="r1") == 1
    assert math.isclose(metric(samples, "turnout_requests_total", outcome="ok"), 20)
