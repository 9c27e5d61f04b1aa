"""One client cannot open a backend's circuit for all (issue 15, item 3), through a real
``turnout serve``: a client provoking backend failures (HTTP 500s) at 3 requests a second leaves
another client's success rate above 95%; the control, the same two clients under one key (the
breaker cannot tell them apart), shows the harm the rule prevents."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from tests.fakes.paced import Paced, run_paced
from tests.support.gateway_process import paced_config, serve_process

SECONDS = 6.0


@pytest.fixture(scope="module")
def paced() -> Iterator[Paced]:
    with run_paced() as fake:
        yield fake


async def _client(url: str, key: str, prompt: str, per_second: float, outcomes: list[int]) -> None:
    body = {"model": "paced", "messages": [{"role": "user", "content": prompt}]}
    headers = {"Authorization": f"Bearer {key}"}
    end = time.monotonic() + SECONDS
    async with aiohttp.ClientSession(headers=headers) as http:
        while time.monotonic() < end:
            started = time.monotonic()
            async with http.post(f"{url}/v1/chat/completions", json=body) as reply:
                await reply.read()
                outcomes.append(reply.status)
            await asyncio.sleep(max(0.0, 1 / per_second - (time.monotonic() - started)))


@pytest.mark.parametrize("same_key", [False, True])
def test_an_attacker_does_not_open_the_circuit_for_a_victim(
    paced: Paced, tmp_path: Path, same_key: bool
) -> None:
    with serve_process(tmp_path, paced_config(paced.url)) as served:

        async def scenario() -> tuple[list[int], list[int]]:
            attacker: list[int] = []
            victim: list[int] = []
            await asyncio.gather(
                _client(served.url, "attacker", "fail", 3, attacker),
                _client(served.url, "attacker" if same_key else "victim", "chunks=1", 5, victim),
            )
            return attacker, victim

        attacker, victim = asyncio.run(scenario())
    success = victim.count(200) / len(victim)
    print(
        f"\n{'one key' if same_key else 'two keys'}: attacker {len(attacker)} requests "
        f"(all failing), victim {len(victim)} requests, {success:.1%} succeeded"
    )
    assert attacker and all(status >= 500 for status in attacker)
    if same_key:  # the control: the breaker cannot tell them apart, and opens for both
        assert success < 0.95, success
    else:
        assert success > 0.95, success
