"""The transformers engine's batch (turnout/providers/embedded/torch_batch.py) on the CPU, with a
tiny Gemma 3 of random weights (3 layers, two of them sliding over a window of 4 positions):
greedy tokens equal transformers' own ``generate`` for prompts alone, prefilled together
(left-padded) and admitted while others are generating; the sliding window's ring; logit bias,
seeded sampling and penalties per row; a request that leaves frees its slot; an end of sequence
ends only its own row. The CUDA-graph mode of the same code runs in tests/gpu."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from turnout.providers.embedded.torch_batch import (  # noqa: E402
    Batcher,
    Job,
    layer_plan,
    prefill_columns,
)

PROMPTS = [[2, 5, 9], [2, *range(10, 22)], [2, 7, 7, 7, 8], [2, *range(30, 37)], [2, 40]]


@pytest.fixture(scope="module")
def model() -> Any:
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    torch.manual_seed(0)
    config = Gemma3TextConfig(
        vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, sliding_window=4,
        layer_types=["sliding_attention", "sliding_attention", "full_attention"],
        max_position_embeddings=256, pad_token_id=0, eos_token_id=1, bos_token_id=2,
    )  # fmt: skip
    m = Gemma3ForCausalLM(config).eval()
    m.config._attn_implementation = "sdpa"
    return m


def reference(model: Any, prompts: list[list[int]], tokens: int) -> list[list[int]]:
    out = []
    with torch.inference_mode():
        for ids in prompts:
            got = model.generate(
                torch.tensor([ids]), max_new_tokens=tokens, min_new_tokens=tokens,
                do_sample=False, pad_token_id=0,
            )  # fmt: skip
            out.append(got[0, len(ids) :].tolist())
    return out


class Run:
    """Jobs submitted to a batcher; what each got and how it ended."""

    def __init__(self, batcher: Batcher) -> None:
        self.batcher = batcher
        self.tokens: dict[int, list[int]] = {}
        self.ends: dict[int, str] = {}
        self.errors: list[BaseException] = []
        self.done = threading.Semaphore(0)

    def submit(self, i: int, prompt: list[int], limit: int, **kw: Any) -> Job:
        self.tokens[i] = []

        def emit(token: int) -> bool:
            self.tokens[i].append(token)
            return not kw.get("stop_after") or len(self.tokens[i]) < kw["stop_after"]

        def end(reason: str) -> None:
            self.ends[i] = reason
            self.done.release()

        extra = {k: v for k, v in kw.items() if k != "stop_after"}
        job = Job(prompt, limit, emit=emit, end=end, fail=self.errors.append, **extra)
        self.batcher.submit(job)
        return job

    def wait(self, count: int) -> None:
        for _ in range(count):
            assert self.done.acquire(timeout=60), self.errors
        assert not self.errors


def batcher(model: Any, slots: int, eos: set[int] | None = None) -> Batcher:
    b = Batcher(
        model, slots=slots, n_ctx=64, device=torch.device("cpu"), graphs=False,
        eos=eos or set(), sample_default=False, name="tiny",
    )  # fmt: skip
    b.start()
    assert b.ready.wait(30) and b.error is None
    return b


def test_layer_plan_reads_sliding_layers_and_drops_a_window_wider_than_the_context(
    model: Any,
) -> None:
    types, window = layer_plan(model.config, 64)
    assert types == ["sliding_attention", "sliding_attention", "full_attention"]
    assert window == 4
    assert layer_plan(model.config, 4) == (["full_attention"] * 3, None)


def test_prefill_columns_put_each_position_at_its_ring_slot() -> None:
    # two prompts of 6 and 3 tokens, left-padded to 6; a ring of 4 slots
    cols = prefill_columns([6, 3], 6, 4).tolist()
    assert cols[0] == [4, 5, 2, 3]  # positions 4, 5 overwrote 0, 1; 2, 3 stayed
    assert cols[1][:3] == [3, 4, 5]  # positions 0..2 are columns 3..5 (after 3 pads)
    full = prefill_columns([6, 3], 6, 64).tolist()
    assert full[0] == [0, 1, 2, 3, 4, 5] and full[1][:3] == [3, 4, 5]


def test_batched_greedy_tokens_equal_generate(model: Any) -> None:
    expected = reference(model, PROMPTS, 12)
    b = batcher(model, slots=3)  # five prompts, three slots: two join while others generate
    try:
        run = Run(b)
        for i, prompt in enumerate(PROMPTS):
            run.submit(i, prompt, 12)
            time.sleep(0.01)
        run.wait(len(PROMPTS))
    finally:
        b.close()
    assert [run.tokens[i] for i in range(len(PROMPTS))] == expected
    assert set(run.ends.values()) == {"length"}
    assert b.busy() == 0


def test_prompts_prefilled_together_equal_generate(model: Any) -> None:
    expected = reference(model, PROMPTS, 10)
    b = batcher(model, slots=8)
    try:
        run = Run(b)
        with b._cond:  # held: all five are waiting when the loop looks, one padded prefill
            for i, prompt in enumerate(PROMPTS):
                b._pending.append(
                    Job(prompt, 10, emit=_collect(run, i), end=_ended(run, i),
                        fail=run.errors.append)
                )  # fmt: skip
            b._cond.notify()
        run.wait(len(PROMPTS))
    finally:
        b.close()
    assert [run.tokens[i] for i in range(len(PROMPTS))] == expected


def _collect(run: Run, i: int) -> Any:
    run.tokens[i] = []

    def emit(token: int) -> bool:
        run.tokens[i].append(token)
        return True

    return emit


def _ended(run: Run, i: int) -> Any:
    def end(reason: str) -> None:
        run.ends[i] = reason
        run.done.release()

    return end


def test_end_of_sequence_ends_only_its_row(model: Any) -> None:
    expected = reference(model, PROMPTS[:2], 8)
    eos = expected[0][3]  # the 4th token of the first prompt ends it
    b = batcher(model, slots=4, eos={eos})
    try:
        run = Run(b)
        run.submit(0, PROMPTS[0], 8)
        run.submit(1, PROMPTS[1], 8)
        run.wait(2)
    finally:
        b.close()
    assert run.tokens[0] == expected[0][:3] and run.ends[0] == "stop"
    cut = expected[1].index(eos) if eos in expected[1] else 8
    assert run.tokens[1] == expected[1][:cut]


def test_logit_bias_is_applied_to_its_row_only(model: Any) -> None:
    plain = reference(model, PROMPTS[:2], 4)
    banned = plain[0][0]
    b = batcher(model, slots=4)
    try:
        run = Run(b)
        run.submit(0, PROMPTS[0], 4, bias={banned: -100.0})
        run.submit(1, PROMPTS[1], 4)
        run.wait(2)
        assert banned not in run.tokens[0]
        assert run.tokens[1] == plain[1]
        forced = Run(b)
        forced.submit(0, PROMPTS[0], 3, bias={77: 100.0})
        forced.wait(1)
        assert forced.tokens[0] == [77, 77, 77]
        assert not b._bias_rows  # the rows' bias is cleared when they end
    finally:
        b.close()


def test_seeded_sampling_repeats_and_penalties_change_the_tokens(model: Any) -> None:
    b = batcher(model, slots=4)
    try:
        runs = []
        for _ in range(2):
            run = Run(b)
            run.submit(0, PROMPTS[2], 10, temperature=1.5, seed=7)
            run.wait(1)
            runs.append(run.tokens[0])
        assert runs[0] == runs[1]
        greedy = reference(model, [PROMPTS[2]], 10)[0]
        assert len(set(greedy)) <= 2  # it repeats one token (see the fixture's seed)
        penalised = Run(b)
        penalised.submit(0, PROMPTS[2], 10, frequency=5.0, temperature=0)
        penalised.wait(1)
        assert len(set(penalised.tokens[0])) > len(set(greedy))
    finally:
        b.close()


def test_a_request_that_leaves_frees_its_slot(model: Any) -> None:
    b = batcher(model, slots=1)
    try:
        run = Run(b)
        job = run.submit(0, PROMPTS[0], 40)
        while len(run.tokens[0]) < 3:
            time.sleep(0.005)
        job.cancelled.set()
        second = Run(b)  # the only slot: served once the first one's is freed
        second.submit(0, PROMPTS[1], 4)
        second.wait(1)
        assert 0 not in run.ends  # a request that left gets no end
        assert len(run.tokens[0]) < 40
    finally:
        b.close()


def test_a_stop_string_ends_the_request_and_frees_the_slot(model: Any) -> None:
    b = batcher(model, slots=1)
    try:
        run = Run(b)
        run.submit(0, PROMPTS[0], 40, stop_after=2)  # emit says done at the second token
        deadline = time.monotonic() + 10
        while (len(run.tokens[0]) < 2 or b.busy()) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert b.busy() == 0 and len(run.tokens[0]) == 2
    finally:
        b.close()


def test_closing_fails_requests_still_waiting(model: Any) -> None:
    b = batcher(model, slots=1)
    run = Run(b)
    with b._cond:
        b._pending.append(Job([2, 3], 5, emit=lambda _: True, end=print, fail=run.errors.append))
        b._closed = True
        b._cond.notify()
    b._thread.join(10)
    assert run.errors and "unloaded" in str(run.errors[0])
    with pytest.raises(RuntimeError):
        b.submit(Job([2], 1, emit=lambda _: True, end=print, fail=print))
