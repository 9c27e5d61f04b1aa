"""GPU placement in the model scheduler, on a simulated device list (two 24 GB GPUs): models
are placed by free memory without evicting what fits elsewhere, eviction frees the device the
model needs and nothing else, a model larger than any GPU is refused at once naming its size
and the free memory, and a thrash workload is batched rather than loaded and evicted in turn.

The engine is the stand-in of test_models_scheduler.py: it records loads and unloads."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tests.unit.test_models_scheduler import Engine, use
from turnout.models.hardware import DeviceMemory
from turnout.providers.embedded.scheduler import ModelTooLargeError, Need, Scheduler
from turnout.wire.durations import FOREVER

GB = 1024**3
TWO_GPUS = [
    DeviceMemory("cuda:0", "Simulated GPU", 24 * GB, 22 * GB, "nvml"),
    DeviceMemory("cuda:1", "Simulated GPU", 24 * GB, 20 * GB, "nvml"),
]


class GpuEngine(Engine):
    """Models needing GPU memory: ``gpu`` maps a name to (bytes, pinned device or None)."""

    def __init__(self, gpu: dict[str, tuple[int, str | None]], **kw: Any) -> None:
        super().__init__(**kw)
        self.gpu = gpu

    def estimate(self, name: str) -> Need:  # type: ignore[override]
        if name not in self.gpu:
            return Need(host=super().estimate(name))
        size, where = self.gpu[name]
        return Need(host=200 * 1024 * 1024, device=size, where=where)


def gpu_scheduler(
    engine: GpuEngine, devices: list[DeviceMemory] = TWO_GPUS, **kw: Any
) -> Scheduler:
    reads: list[int] = []

    def listed() -> list[DeviceMemory]:
        reads.append(1)
        return devices

    s = Scheduler(
        engine.load, engine.unload, engine.estimate, keep_alive=lambda _: FOREVER,
        devices=listed, owner="local", **kw,
    )  # fmt: skip
    s.reads = reads  # type: ignore[attr-defined]
    return s


async def test_models_that_fit_on_two_gpus_are_placed_without_eviction() -> None:
    engine = GpuEngine({"a": (15 * GB, None), "b": (15 * GB, None), "c": (4 * GB, None)})
    s = gpu_scheduler(engine)
    await use(s, "a")
    await use(s, "b")
    await use(s, "c")
    assert engine.loaded == {"a", "b", "c"}
    assert [kind for kind, _ in engine.events] == ["load", "load", "load"]  # nothing evicted
    # a on the GPU with most free memory; b does not fit beside it, so on the other one; c
    # where most room is left
    assert s.device_of("a") == "cuda:0" and s.device_of("b") == "cuda:1"
    assert s.device_of("c") == "cuda:0"  # 22-15 = 7 GB left there, 20-15 = 5 on cuda:1
    status = {row["name"]: row for row in s.status()}
    assert status["b"]["device"] == "cuda:1" and status["b"]["device_bytes"] == 15 * GB
    assert s.reads == [1]  # type: ignore[attr-defined]  # budgets read once, at first placement
    await s.close()


async def test_a_model_bigger_than_any_gpu_is_refused_at_once() -> None:
    engine = GpuEngine({"huge": (40 * GB, None)})
    s = gpu_scheduler(engine)
    started = asyncio.get_running_loop().time()
    with pytest.raises(ModelTooLargeError) as caught:
        await use(s, "huge")
    assert asyncio.get_running_loop().time() - started < 0.5
    message = caught.value.message
    assert "'huge'" in message and "40960 MB of GPU memory" in message
    assert "cuda:0 (Simulated GPU) 22528 MB free of 24576 MB" in message
    assert "cuda:1 (Simulated GPU) 20480 MB free" in message
    assert caught.value.status == 503 and caught.value.code == "insufficient_memory"
    assert engine.loads() == []
    assert s.fits("huge") is False
    await s.close()


async def test_a_pinned_model_too_big_for_its_gpu_is_refused_though_another_could_hold_it() -> None:
    engine = GpuEngine({"p": (21 * GB, "cuda:1")})
    s = gpu_scheduler(engine)
    with pytest.raises(ModelTooLargeError) as caught:
        await use(s, "p")
    assert "more than cuda:1 here has free" in caught.value.message
    await s.close()


async def test_no_gpu_refuses_a_gpu_model_and_says_so() -> None:
    engine = GpuEngine({"a": (1 * GB, None)})
    s = gpu_scheduler(engine, devices=[])
    with pytest.raises(ModelTooLargeError) as caught:
        await use(s, "a")
    assert "no CUDA GPU found" in caught.value.message
    await s.close()


async def test_eviction_frees_the_device_the_model_needs_and_nothing_else() -> None:
    engine = GpuEngine({
        "a": (12 * GB, "cuda:0"), "b": (12 * GB, "cuda:1"), "c": (6 * GB, "cuda:1"),
        "d": (14 * GB, "cuda:1"),
    })  # fmt: skip
    s = gpu_scheduler(engine)
    for name in ("b", "a", "c"):  # b is the least recently used of all
        await use(s, name)
    assert engine.loaded == {"a", "b", "c"}
    await use(s, "d")  # 14 GB on cuda:1 (20 GB, 18 used): b (least recent) goes, enough
    assert engine.loaded == {"a", "c", "d"}
    assert [name for kind, name in engine.events if kind == "unload"] == ["b"]
    assert s.device_of("d") == "cuda:1"
    await s.close()


async def test_eviction_takes_the_least_recently_used_model_on_the_chosen_gpu() -> None:
    engine = GpuEngine({
        "a": (12 * GB, None), "b": (12 * GB, None), "c": (6 * GB, None), "d": (12 * GB, None),
    })  # fmt: skip
    s = gpu_scheduler(engine)
    for name in ("a", "b", "c"):  # a: cuda:0, b: cuda:1, c: cuda:0 (10 GB left vs 8)
        await use(s, name)
    assert (s.device_of("a"), s.device_of("b"), s.device_of("c")) == ("cuda:0", "cuda:1", "cuda:0")
    await use(s, "d")  # fits nowhere; cuda:0 can free 18 GB, cuda:1 12: room made on cuda:0
    assert s.device_of("d") == "cuda:0"
    unloaded = [name for kind, name in engine.events if kind == "unload"]
    assert unloaded[0] == "a"  # the least recently used there first
    assert "b" not in unloaded
    await s.close()


@pytest.mark.parametrize("clients", [2, 8])
async def test_thrash_workload_on_one_gpu_is_batched_not_looped(clients: int) -> None:
    """Two models that cannot share one GPU, requested in turn by many clients at once: every
    request is answered, and the loads stay near the two that are needed, instead of one load
    (and one eviction) per request."""
    engine = GpuEngine({"a": (14 * GB, None), "b": (14 * GB, None)}, load_time=0.05)
    s = gpu_scheduler(engine, devices=TWO_GPUS[:1], swap_after=0.0)
    order = ["a", "b"] * (5 * clients)
    handles = await asyncio.gather(*(use(s, name, hold=0.02) for name in order))
    assert handles == [f"handle:{n}" for n in order]
    loads = engine.loads()
    assert len(loads) <= 3, loads  # a, b (and a again at most): no load-evict loop
    assert len(order) == 10 * clients
    await s.close()


async def test_host_and_gpu_models_share_a_scheduler() -> None:
    """A CPU model (an int estimate) is budgeted on host memory only, a GPU model on both."""
    engine = GpuEngine({"g": (10 * GB, None)})
    s = gpu_scheduler(engine, budget=1 * GB)
    await use(s, "cpu-model")  # the stand-in's 100 MB, host only
    await use(s, "g")  # 200 MB of host memory, 10 GB on a GPU
    assert engine.loaded == {"cpu-model", "g"}
    assert s.device_of("cpu-model") is None and s.device_of("g") == "cuda:0"
    await s.close()
