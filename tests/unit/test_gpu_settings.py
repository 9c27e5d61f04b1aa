"""GPU settings on a machine without one (CI's): the configuration keys, the devices and the
errors naming the key at fault, ``n_gpu_layers: auto`` from a real GGUF's tensor table (0 here,
saying why; the layers that fit in a simulated GPU's free memory), the transformers engine's GPU
memory estimate, and ``turnout doctor``'s GPU report with a simulated GPU."""

from __future__ import annotations

import importlib.util
import json
import threading
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from turnout.cli import app
from turnout.config import load_config
from turnout.errors import BackendError, ConfigError
from turnout.models import hardware
from turnout.models.formats import read_gguf
from turnout.models.hardware import GB, DeviceMemory, Gpu, fit_gpu_layers, gpu_advice
from turnout.providers.embedded.llama_engine import resolve_gpu_layers
from turnout.providers.embedded.settings import EmbeddedConfig, EmbeddedModel

MB = 1024 * 1024


def test_accelerator_keys_are_validated_naming_the_key() -> None:
    entry = EmbeddedModel(name="m", device="cuda:1", dtype="bfloat16", n_gpu_layers="auto")
    assert entry.device == "cuda:1" and entry.n_gpu_layers == "auto"
    for bad, key in (
        ({"device": "gpu"}, "device"), ({"dtype": "int8"}, "dtype"),
        ({"n_gpu_layers": -2}, "n_gpu_layers"), ({"n_gpu_layers": "most"}, "n_gpu_layers"),
        ({"max_batch": 0}, "max_batch"),
    ):  # fmt: skip
        model = {"name": "m", **bad}
        with pytest.raises(ConfigError) as caught:
            load_config({"providers": {"p": {"type": "embedded", "models": [model]}}}, environ={})
        assert key in str(caught.value), caught.value
    with pytest.raises(ConfigError) as caught:
        load_config(
            {"providers": {"p": {"type": "embedded", "models": [
                {"name": "m", "load_in_8bit": True, "load_in_4bit": True}]}}},
            environ={},
        )  # fmt: skip
    assert "load_in_8bit and load_in_4bit" in str(caught.value)
    provider = EmbeddedConfig(type="embedded", device="cuda", dtype="float16")
    assert (provider.device, provider.dtype) == ("cuda", "float16")


def test_a_model_takes_the_providers_device_unless_it_sets_its_own() -> None:
    from turnout.providers.embedded.provider import EmbeddedProvider

    config = EmbeddedConfig(
        type="embedded", device="cpu", dtype="float32",
        models=[EmbeddedModel(name="a", path="/x/a.gguf"),
                EmbeddedModel(name="b", path="/x/b.gguf", device="auto", dtype="bfloat16")],
    )  # fmt: skip
    provider = EmbeddedProvider("local", config)
    a, b = provider.engines["a"].entry, provider.engines["b"].entry
    assert (a.device, a.dtype) == ("cpu", "float32")
    assert (b.device, b.dtype) == ("auto", "bfloat16")


torch_only = pytest.mark.skipif(
    importlib.util.find_spec("torch") is None, reason="torch is not installed"
)


@torch_only
def test_asking_for_a_gpu_that_is_not_here_names_the_model_and_the_key() -> None:
    import torch

    from turnout.providers.embedded.torch_engine import resolve_device

    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU")
    assert resolve_device("auto", "m") in ("cpu", "mps")
    assert resolve_device("cpu", "m") == "cpu"
    with pytest.raises(BackendError) as caught:
        resolve_device("cuda:1", "m")
    text = caught.value.message
    assert "model 'm'" in text and "device 'cuda:1'" in text and "no CUDA device" in text


@pytest.mark.skipif(
    importlib.util.find_spec("bitsandbytes") is not None, reason="bitsandbytes is installed"
)
@pytest.mark.parametrize("key", ["load_in_8bit", "load_in_4bit"])
def test_quantized_weights_without_bitsandbytes_name_the_key(key: str) -> None:
    from turnout.providers.embedded.torch_engine import _quantization

    with pytest.raises(BackendError) as caught:
        _quantization(EmbeddedModel(name="m", **{key: True}))
    text = caught.value.message
    assert "model 'm'" in text and key in text and "pip install bitsandbytes" in text
    assert _quantization(EmbeddedModel(name="m")) is None


@torch_only
async def test_loading_a_quantized_model_without_bitsandbytes_fails_naming_the_key(
    hf_model_dir: Path,
) -> None:
    if importlib.util.find_spec("bitsandbytes") is not None:
        pytest.skip("bitsandbytes is installed")
    from turnout.providers.embedded.torch_engine import TransformersEngine

    entry = EmbeddedModel(name="q", path=str(hf_model_dir), device="cpu", load_in_4bit=True)
    engine = TransformersEngine(entry, lambda: hf_model_dir)
    with pytest.raises(BackendError) as caught:
        await engine.load(lambda _: None, threading.Event())
    assert "load_in_4bit needs the bitsandbytes package" in caught.value.message
    assert engine.model is None


def test_gguf_layers_are_read_from_the_tensor_table(gemma_path: Path) -> None:
    header = read_gguf(gemma_path)
    assert header.layers == len(header.layer_bytes) == 18
    total = sum(header.layer_bytes) + header.other_bytes
    size = gemma_path.stat().st_size
    assert 0.9 * size < total <= size  # the tensors are nearly the whole file
    assert min(header.layer_bytes) > 0


def test_n_gpu_layers_auto_is_zero_on_a_machine_without_a_gpu_and_says_why(
    gemma_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    entry = EmbeddedModel(name="g", path=str(gemma_path), n_gpu_layers="auto")
    layers, why = resolve_gpu_layers(entry, gemma_path, offloads=False)
    assert layers == 0 and "cannot offload to a GPU" in why and "CPU build" in why
    monkeypatch.setattr("turnout.providers.embedded.llama_engine.gpu_memory", list, raising=True)
    layers, why = resolve_gpu_layers(entry, gemma_path, offloads=True)
    assert layers == 0 and "no CUDA GPU found" in why
    configured = EmbeddedModel(name="g", path=str(gemma_path), n_gpu_layers=7)
    assert resolve_gpu_layers(configured, gemma_path) == (7, "configured")


def test_n_gpu_layers_auto_counts_the_layers_that_fit_in_free_gpu_memory(
    gemma_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    header = read_gguf(gemma_path)
    entry = EmbeddedModel(name="g", path=str(gemma_path), n_gpu_layers="auto", n_ctx=2048)
    kv = 2048 * header.kv_heads * (header.key_length + header.value_length) * 2
    per_layer = max(header.layer_bytes) + kv
    free = hardware.GPU_RESERVE + 5 * per_layer + per_layer // 2  # room for five layers
    gpu = DeviceMemory("cuda:0", "Simulated GPU", 8 * GB, free, "nvml")
    monkeypatch.setattr("turnout.providers.embedded.llama_engine.gpu_memory", lambda: [gpu])
    layers, why = resolve_gpu_layers(entry, gemma_path, offloads=True)
    assert layers == 5, why
    assert "5 of 18 layers fit" in why and "cuda:0 (Simulated GPU)" in why and "n_ctx 2048" in why
    big = DeviceMemory("cuda:0", "Simulated GPU", 8 * GB, 4 * GB, "nvml")
    monkeypatch.setattr("turnout.providers.embedded.llama_engine.gpu_memory", lambda: [big])
    layers, why = resolve_gpu_layers(entry, gemma_path, offloads=None)
    assert layers == -1 and "all 18 layers and the output fit" in why


def test_fit_is_zero_when_no_layer_fits_and_the_kv_cache_counts() -> None:
    class Header:
        layer_bytes = [100 * MB] * 10
        other_bytes = 50 * MB
        kv_heads, key_length, value_length = 8, 128, 128

    small, _ = fit_gpu_layers(Header(), 512, hardware.GPU_RESERVE + 50 * MB)
    assert small == 0
    # 1,100 MiB above the reserve: 10 layers of 100 MiB and the 50 MiB output fit at n_ctx
    # 512 (KV 2 MiB a layer); at 1,024 MiB the output does not (10 layers, not -1); at n_ctx
    # 32768 (KV 128 MiB a layer) 4 layers do
    room = hardware.GPU_RESERVE + 1100 * MB
    assert fit_gpu_layers(Header(), 512, room)[0] == -1
    assert fit_gpu_layers(Header(), 512, hardware.GPU_RESERVE + 1024 * MB)[0] == 10
    assert fit_gpu_layers(Header(), 32768, room)[0] == 4


@pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="torch is not installed")
def test_the_gpu_estimate_counts_weights_kv_cache_and_batch(hf_model_dir: Path) -> None:
    from turnout.providers.embedded.torch_engine import TransformersEngine

    def estimate(**kw: Any) -> int:
        entry = EmbeddedModel(name="g", path=str(hf_model_dir), n_ctx=512, **kw)
        return TransformersEngine(entry, lambda: hf_model_dir).device_bytes(hf_model_dir)

    base = estimate(max_batch=64)
    # Gemma 3 270M, bf16, 64 slots of 512 positions: measured 2,354 MiB on the H200
    assert 2.0 * GB < base < 2.6 * GB
    assert estimate(max_batch=128) > base  # more slots, more KV cache and logits
    assert estimate(max_batch=64, dtype="float32") > base + 400 * MB  # twice the weights
    assert estimate(max_batch=64, load_in_4bit=True) < base


def test_gpu_advice_steps_down_to_8_and_4_bit() -> None:
    h100 = Gpu("cuda", "Simulated", 80 * GB, 79 * GB, "580", "9.0")
    assert gpu_advice(7e9, h100)["transformers"]["dtype"] == "bfloat16"
    assert gpu_advice(70e9, h100)["transformers"] == {
        **gpu_advice(70e9, h100)["transformers"], "weights": "4-bit", "load_in_4bit": True,
    }  # fmt: skip
    t4 = Gpu("cuda", "Simulated", 16 * GB, 15 * GB, "580", "7.5")
    assert gpu_advice(1e9, t4)["transformers"]["dtype"] == "float16"  # no bf16 before 8.0
    assert gpu_advice(70e9, t4)["transformers"] == {"fits": False}
    assert gpu_advice(70e9, t4)["llama_cpp"]["n_gpu_layers"] == "auto"


def test_doctor_reports_a_simulated_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    gpu = Gpu("cuda", "Simulated H200", 141 * 10**9, 140 * 10**9, "580.159.04", "9.0", 0)
    monkeypatch.setattr(hardware, "_nvml_gpus", lambda: [gpu])
    result = CliRunner().invoke(app, ["doctor"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "GPU 0: CUDA Simulated H200, 141.0 GB total, 140.0 GB free" in result.output
    assert "driver 580.159.04, compute capability 9.0" in result.output
    assert "On Simulated H200" in result.output and "dtype bfloat16" in result.output
    report = json.loads(CliRunner().invoke(app, ["doctor", "--json"]).output)
    assert report["hardware"]["gpus"][0]["compute_capability"] == "9.0"
    assert len(report["gpu_sizes"]) == len(hardware.SIZES)


def test_doctor_says_what_n_gpu_layers_auto_would_choose(gemma_path: Path, tmp_path: Path) -> None:
    (tmp_path / "g.gguf").symlink_to(gemma_path)
    result = CliRunner().invoke(
        app, ["doctor", "--dir", str(tmp_path), "--json"], env={"COLUMNS": "200"}
    )
    assert result.exit_code == 0, result.output
    model = json.loads(result.output)["models"][0]
    assert model["n_gpu_layers_auto"] == 0  # this machine: no GPU, or a CPU build
    assert model["n_gpu_layers_why"]
