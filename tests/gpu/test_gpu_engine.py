"""The transformers engine on a real CUDA GPU (marked ``gpu``; skipped, saying why, without one).

The model is ``GPU_TEST_MODEL`` (a Hugging Face folder: on the H200 machine, Gemma 3 270M's
configuration with random bf16 weights and the real tokenizer, built by
``scripts/gpu/make_model.py``), else the Gemma 3 270M converted from its GGUF (``hf_model_dir``).

- A chat and a stream through a real gateway over HTTP on ``device: cuda``, decoded in a CUDA
  graph, with usage counted from real token ids.
- The batched, graph-captured decoding gives the token ids of transformers' own eager
  ``generate`` (float32, greedy), for requests alone and for requests generated together.
- The device list the scheduler budgets from (NVML or torch) shows the GPU's free memory.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support import client
from tests.support.servers import run_gateway
from turnout import Gateway

pytestmark = [pytest.mark.gpu, pytest.mark.timeout(600)]


def _cuda_reason() -> str | None:
    try:
        import torch
    except ImportError:
        return "torch is not installed"
    if not torch.cuda.is_available():
        return f"no CUDA GPU (torch {torch.__version__} sees none)"
    return None


@pytest.fixture(scope="module")
def gpu_model(request: pytest.FixtureRequest) -> Path:
    reason = _cuda_reason()
    if reason is not None:
        print(f"gpu tests skipped: {reason}")
        pytest.skip(reason)
    configured = os.environ.get("GPU_TEST_MODEL")
    if configured:
        return Path(configured)
    return Path(request.getfixturevalue("hf_model_dir"))


@pytest.fixture(scope="module")
def gpu_gateway(gpu_model: Path) -> Iterator[tuple[Gateway, str]]:
    """The bench's settings (bench/gpu_engine.py), so the compiled graph is reused."""
    model = {
        "name": "g", "path": str(gpu_model), "engine": "transformers", "device": "cuda",
        "n_ctx": 512, "max_batch": 64,
    }  # fmt: skip
    gateway = Gateway({"providers": {"gpu": {"type": "embedded", "models": [model]}}}, environ={})
    with run_gateway(gateway) as url:
        yield gateway, url


async def test_chat_and_stream_on_cuda(gpu_gateway: tuple[Gateway, str]) -> None:
    gateway, url = gpu_gateway
    messages = [{"role": "user", "content": "Say hi."}]
    reply = await client.post(
        url + "/v1/chat/completions", {"model": "g", "messages": messages, "max_tokens": 16}
    )
    assert reply.status == 200, reply.body
    body = reply.json()
    assert body["choices"][0]["message"]["role"] == "assistant"
    assert body["usage"]["prompt_tokens"] > 5
    assert 1 <= body["usage"]["completion_tokens"] <= 16
    engine = gateway.providers["gpu"].engines["g"]  # type: ignore[attr-defined]
    assert engine.device.startswith("cuda")
    assert engine.batcher.mode in ("compile", "capture"), engine.batcher.mode
    payload = {
        "model": "g", "messages": messages, "max_tokens": 24, "stream": True,
        "stream_options": {"include_usage": True}, "temperature": 0,
    }  # fmt: skip
    stream = await client.stream(url + "/v1/chat/completions", payload)
    assert stream.status == 200
    assert stream.done
    usage = [e["usage"] for e in stream.events if e.get("usage")]
    assert usage and 1 <= usage[-1]["completion_tokens"] <= 24
    assert stream.chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    steps = engine.batcher.steps
    assert steps > 0  # the decoding ran in the batch (graph), not in a plain loop


def _reference(model: Any, prompts: list[list[int]], tokens: int) -> list[list[int]]:
    import torch

    out = []
    with torch.inference_mode():
        for ids in prompts:
            got = model.generate(
                torch.tensor([ids], device=model.device), max_new_tokens=tokens,
                min_new_tokens=tokens, do_sample=False, pad_token_id=0,
            )  # fmt: skip
            out.append(got[0, len(ids) :].tolist())
    return out


def test_graph_decoding_matches_generate(gpu_model: Path) -> None:
    """float32 (no bf16 rounding between fused and unfused kernels): the CUDA-graph batch and
    transformers' eager ``generate`` pick the same greedy tokens."""
    import torch
    from transformers import AutoModelForCausalLM

    from turnout.providers.embedded.torch_batch import Batcher

    model = AutoModelForCausalLM.from_pretrained(
        gpu_model, dtype=torch.float32, attn_implementation="sdpa"
    ).to("cuda")
    prompts = [[2, 9259, 1902, 236761], [2, *range(1000, 1020)], [2, 4444], [2, *range(50, 58)]]
    tokens = 12
    expected = _reference(model, prompts, tokens)
    batcher = Batcher(
        model, slots=4, n_ctx=128, device=torch.device("cuda"), graphs=True, eos=set(),
        sample_default=False, name="check",
    )  # fmt: skip
    batcher.start()
    assert batcher.ready.wait(300) and batcher.error is None, batcher.error
    assert batcher.mode in ("compile", "capture")
    try:
        alone = [_run(batcher, [ids], tokens)[0] for ids in prompts]
        together = _run(batcher, prompts, tokens)
    finally:
        batcher.close()
    assert alone == expected
    assert together == expected


def _run(batcher: Any, prompts: list[list[int]], tokens: int) -> list[list[int]]:
    from turnout.providers.embedded.torch_batch import Job

    got: list[list[int]] = [[] for _ in prompts]
    done = threading.Semaphore(0)
    errors: list[BaseException] = []

    def job(i: int, ids: list[int]) -> Job:
        def emit(token: int) -> bool:
            got[i].append(token)
            return True

        return Job(ids, tokens, emit=emit, end=lambda _: done.release(), fail=errors.append)

    for i, ids in enumerate(prompts):
        batcher.submit(job(i, ids))
    for _ in prompts:
        assert done.acquire(timeout=120), errors
    assert not errors
    return got


def test_devices_report_free_memory() -> None:
    reason = _cuda_reason()
    if reason is not None:
        print(f"gpu tests skipped: {reason}")
        pytest.skip(reason)
    from turnout.models.hardware import gpu_memory

    devices = gpu_memory()
    assert devices, "no device found through NVML or torch"
    first = devices[0]
    assert first.device == "cuda:0"
    assert 0 < first.free <= first.total
    assert first.source in ("nvml", "torch")
