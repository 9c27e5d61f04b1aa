"""What this machine offers local models, and the settings and quantization to use on it.

Detection reads the CPU, memory and GPUs without extra dependencies: ``/proc/cpuinfo`` and
``/proc/meminfo`` (``sysctl`` on macOS), NVML (``nvidia-ml-py``, when installed) or ``nvidia-smi``
for CUDA (name, memory total and free, driver, compute capability), ``rocm-smi`` or ``/dev/kfd``
for ROCm, Apple silicon for Metal, and whether the installed llama.cpp can offload to a GPU.
`gpu_memory` is what the model scheduler budgets from: each CUDA device's free memory, read with
NVML where present and ``torch.cuda.mem_get_info`` otherwise.

The recommendations follow source document 001: ``calculateOptimalSettings`` (threads up to 8,
context 2048 / 4096 / 8192 below 4 / 8 GB / above) and ``getQuantizationRecommendation`` (its
speed / balanced / quality table by memory tier of 4, 8, 16 and 32 GB). Per model size, the
table's choice is kept when the model fits in memory at that quantization and stepped down
until it does; sizes come from approximate bits per weight of llama.cpp's quantization types.
"""

from __future__ import annotations

import contextlib
import os
import platform
import re
import shutil
import subprocess
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "BITS_PER_WEIGHT", "DeviceMemory", "Gpu", "Hardware", "advise", "detect", "fit_gpu_layers",
    "gpu_advice",
    "gpu_memory", "parse_cpuinfo", "parse_meminfo", "recommend_quantization",
    "recommend_settings", "size_recommendations",
]  # fmt: skip

GB = 1024**3

#: approximate bits per weight of llama.cpp's types on 7B-class models (llama-quantize's table)
BITS_PER_WEIGHT = {
    "Q2_K": 2.96, "Q3_K_S": 3.50, "Q3_K_M": 3.91, "Q4_0": 4.55, "Q4_K_S": 4.58, "Q4_K_M": 4.89,
    "Q5_K_M": 5.69, "Q6_K": 6.56, "Q8_0": 8.50, "F16": 16.0,
}  # fmt: skip
#: source document 001's getQuantizationRecommendation: memory tier (GB) -> type, per target
_TABLE = {
    "speed": {4: "Q2_K", 8: "Q3_K_S", 16: "Q4_K_M", 32: "Q5_K_M"},
    "balanced": {4: "Q3_K_S", 8: "Q4_K_M", 16: "Q5_K_M", 32: "Q8_0"},
    "quality": {4: "Q4_K_M", 8: "Q5_K_M", 16: "Q8_0", 32: "F16"},
}
#: from most to least precise: where a recommendation steps down to when it does not fit
_LADDER = ("F16", "Q8_0", "Q6_K", "Q5_K_M", "Q4_K_M", "Q3_K_M", "Q3_K_S", "Q2_K")
#: model sizes (billions of parameters) the doctor gives advice for
SIZES = (0.5, 1.0, 3.0, 7.0, 8.0, 13.0, 34.0, 70.0)


@dataclass(slots=True)
class Gpu:
    kind: str  # "cuda" | "rocm" | "metal"
    name: str
    memory: int | None = None  # bytes
    free: int | None = None  # bytes
    driver: str | None = None
    compute_capability: str | None = None
    index: int = 0


@dataclass(frozen=True, slots=True)
class DeviceMemory:
    """One accelerator's memory as a placement decision needs it."""

    device: str  # "cuda:0"
    name: str
    total: int
    free: int
    source: str  # "nvml" | "torch"


@dataclass(slots=True)
class Hardware:
    system: str
    machine: str
    cpu: str
    logical_cores: int
    physical_cores: int
    cpu_flags: list[str] = field(default_factory=list)
    memory_total: int = 0
    memory_available: int = 0
    gpus: list[Gpu] = field(default_factory=list)
    gpu_offload: bool = False  # whether the installed llama.cpp was built with a GPU backend

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def parse_cpuinfo(text: str) -> tuple[str, int, int, list[str]]:
    """(model, logical cores, physical cores, SIMD flags llama.cpp uses) from /proc/cpuinfo."""
    model = next(
        iter(re.findall(r"^(?:model name|Hardware|cpu model)\s*:\s*(.+)$", text, re.M)), ""
    )
    logical = len(re.findall(r"^processor\s*:", text, re.M))
    cores = set()
    for block in text.split("\n\n"):
        phys = re.search(r"^physical id\s*:\s*(\d+)", block, re.M)
        core = re.search(r"^core id\s*:\s*(\d+)", block, re.M)
        if core:
            cores.add((phys[1] if phys else "0", core[1]))
    flags_line = next(iter(re.findall(r"^(?:flags|Features)\s*:\s*(.+)$", text, re.M)), "")
    wanted = ("avx", "avx2", "avx512f", "fma", "f16c", "neon", "asimd", "sve")
    flags = [f for f in wanted if f in flags_line.split()]
    return model.strip(), logical, len(cores) or logical, flags


def parse_meminfo(text: str) -> tuple[int, int]:
    """(total, available) bytes from /proc/meminfo."""
    values = {k: int(v) * 1024 for k, v in re.findall(r"^(\w+):\s+(\d+) kB", text, re.M)}
    total = values.get("MemTotal", 0)
    return total, values.get("MemAvailable", values.get("MemFree", total))


def _run(*cmd: str) -> str:
    if shutil.which(cmd[0]) is None:
        return ""
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return ""
    return done.stdout if done.returncode == 0 else ""


def _visible(count: int) -> list[int]:
    """The physical (NVML) indices behind CUDA's device numbers: ``CUDA_VISIBLE_DEVICES``
    when it lists indices, else all of them."""
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is None:
        return list(range(count))
    indices = [int(i) for i in listed.split(",") if i.strip().isdigit()]
    return [i for i in indices if i < count]


def _nvml_gpus() -> list[Gpu] | None:
    """CUDA GPUs through NVML (package nvidia-ml-py), as CUDA numbers them; None without it."""
    try:
        import pynvml
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
    except Exception:  # no driver
        return None
    try:
        driver = pynvml.nvmlSystemGetDriverVersion()
        out = []
        for cuda, physical in enumerate(_visible(pynvml.nvmlDeviceGetCount())):
            handle = pynvml.nvmlDeviceGetHandleByIndex(physical)
            memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
            major, minor = pynvml.nvmlDeviceGetCudaComputeCapability(handle)
            name = pynvml.nvmlDeviceGetName(handle)
            out.append(
                Gpu("cuda", name.decode() if isinstance(name, bytes) else str(name),
                    int(memory.total), int(memory.free),
                    driver.decode() if isinstance(driver, bytes) else str(driver),
                    f"{major}.{minor}", cuda)
            )  # fmt: skip
        return out
    except Exception:
        return None
    finally:
        with contextlib.suppress(Exception):
            pynvml.nvmlShutdown()


def _smi_gpus() -> list[Gpu]:
    fields = "index,name,memory.total,memory.free,driver_version,compute_cap"
    out: list[Gpu] = []
    for line in _run(
        "nvidia-smi", f"--query-gpu={fields}", "--format=csv,noheader,nounits"
    ).splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) != 6:
            continue
        index, name, total, free, driver, capability = parts
        mib = {
            k: int(v) * 1024 * 1024 if v.isdigit() else None for k, v in (("t", total), ("f", free))
        }
        out.append(
            Gpu("cuda", name, mib["t"], mib["f"], driver or None, capability or None,
                int(index) if index.isdigit() else len(out))
        )  # fmt: skip
    return out


def gpu_memory() -> list[DeviceMemory]:
    """Each CUDA device's total and free memory, as CUDA numbers them: NVML where
    ``nvidia-ml-py`` is installed, else ``torch.cuda.mem_get_info`` (when torch is); empty on a
    machine without CUDA."""
    gpus = _nvml_gpus()
    if gpus:
        return [
            DeviceMemory(f"cuda:{g.index}", g.name, g.memory or 0, g.free or 0, "nvml")
            for g in gpus
        ]
    try:
        import torch
    except ImportError:
        return []
    if not torch.cuda.is_available():
        return []
    out = []
    for index in range(torch.cuda.device_count()):
        free, total = torch.cuda.mem_get_info(index)
        name = torch.cuda.get_device_name(index)
        out.append(DeviceMemory(f"cuda:{index}", name, int(total), int(free), "torch"))
    return out


def _gpus(system: str, machine: str) -> list[Gpu]:
    found: list[Gpu] = _nvml_gpus() or _smi_gpus()
    if _run("rocm-smi", "--showproductname") or Path("/dev/kfd").exists():
        found.append(Gpu("rocm", "AMD GPU (ROCm)"))
    if system == "Darwin" and machine == "arm64":
        found.append(Gpu("metal", "Apple silicon (Metal, unified memory)"))
    return found


def detect() -> Hardware:
    system, machine = platform.system(), platform.machine()
    logical = os.cpu_count() or 1
    model, physical = platform.processor() or machine, logical
    flags: list[str] = []
    total = available = 0
    if Path("/proc/cpuinfo").is_file():
        model, logical_seen, physical, flags = parse_cpuinfo(Path("/proc/cpuinfo").read_text())
        logical = logical_seen or logical
    if Path("/proc/meminfo").is_file():
        total, available = parse_meminfo(Path("/proc/meminfo").read_text())
    elif system == "Darwin":
        total = int(_run("sysctl", "-n", "hw.memsize").strip() or 0)
        available = total
    try:
        import llama_cpp

        offload = bool(llama_cpp.llama_supports_gpu_offload())
    except ImportError:
        offload = False
    return Hardware(
        system, machine, model, logical, physical, flags, total, available,
        _gpus(system, machine), offload,
    )  # fmt: skip


def recommend_quantization(memory_gb: float, target: str = "balanced") -> str:
    """Source document 001's table: the first tier (4, 8, 16, 32 GB) at or above the memory."""
    tiers = _TABLE[target]
    tier = next((t for t in sorted(tiers) if memory_gb <= t), 32)
    return tiers[tier]


def recommend_settings(hw: Hardware) -> dict[str, Any]:
    """Engine settings for this machine (source document 001's calculateOptimalSettings, in
    llama.cpp's terms)."""
    available_gb = hw.memory_available / GB
    gpu = next(iter(hw.gpus), None) if hw.gpu_offload else None
    n_ctx = 2048 if available_gb < 4 else 4096 if available_gb < 8 else 8192
    return {
        # llama.cpp is fastest on physical cores; the source document caps threads at 8
        "n_threads": max(1, min(hw.physical_cores, 8)),
        "n_ctx": n_ctx,
        "n_batch": 512 if gpu is None else 1024,
        "n_gpu_layers": -1 if gpu is not None else 0,
        "use_mmap": True,
        "use_mlock": available_gb >= 16,  # pin weights when memory is plentiful
        "device": gpu.kind if gpu is not None else "cpu",
        "quantization": recommend_quantization(available_gb),
    }


def model_bytes(parameters: float, quantization: str, n_ctx: int = 4096) -> int:
    """Rough memory of a model: weights at the type's bits per weight, plus an f16 KV cache of
    about 0.06 GB per billion parameters at 4k context (Llama 3 8B with grouped-query attention:
    0.5 GB) and 0.25 GB of buffers."""
    weights = parameters * BITS_PER_WEIGHT[quantization] / 8
    extra = 0.06 * GB * (parameters / 1e9) * (n_ctx / 4096) + 0.25 * GB
    return int(weights + extra)


def advise(parameters: float, hw: Hardware, target: str = "balanced") -> dict[str, Any]:
    """For a model of ``parameters``: the table's quantization for the memory it can use (80%
    of available memory, or of VRAM when llama.cpp can offload to a GPU that reports it),
    stepped down until the model fits; ``quantization`` is None when nothing fits."""
    settings = recommend_settings(hw)
    n_ctx = settings["n_ctx"]
    gpu = next((g for g in hw.gpus if g.memory), None) if hw.gpu_offload else None
    room = int(0.8 * (gpu.memory if gpu and gpu.memory else hw.memory_available))
    first = recommend_quantization(room / GB, target)
    ladder = _LADDER[_LADDER.index(first) :]
    choice = next((q for q in ladder if model_bytes(parameters, q, n_ctx) <= room), None)
    return {
        "parameters_b": round(parameters / 1e9, 2),
        "quantization": choice,
        "memory_bytes": model_bytes(parameters, choice or "Q2_K", n_ctx),
        "fits": choice is not None,
        "n_ctx": n_ctx,
        "n_threads": settings["n_threads"],
        "n_gpu_layers": settings["n_gpu_layers"] if choice else 0,
    }


def size_recommendations(hw: Hardware, target: str = "balanced") -> list[dict[str, Any]]:
    """`advise` for the usual model sizes (0.5B to 70B)."""
    return [advise(billions * 1e9, hw, target) for billions in SIZES]


#: GPU memory llama.cpp needs beside the layers it offloads: compute buffers and scratch
GPU_RESERVE = 512 * 1024 * 1024


def fit_gpu_layers(
    header: Any, n_ctx: int, free: int, reserve: int = GPU_RESERVE
) -> tuple[int, str]:
    """How many of a GGUF's layers llama.cpp can offload into ``free`` bytes of GPU memory (its
    ``n_gpu_layers``), and why: each layer's weights (from the tensor table) and its share of
    an f16 KV cache of ``n_ctx`` tokens, after ``reserve`` for compute buffers; -1 when every
    layer and the output layer fit."""
    sizes = list(getattr(header, "layer_bytes", None) or [])
    if not sizes:
        return 0, "the GGUF lists no per-layer tensors to offload"
    kv_heads = header.kv_heads or 0
    width = (header.key_length or 128) + (header.value_length or 128)
    kv = n_ctx * kv_heads * width * 2
    per = [size + kv for size in sizes]
    room = free - reserve
    mib = 1024 * 1024
    need = sum(per) + header.other_bytes
    if need <= room:
        return -1, (
            f"all {len(per)} layers and the output fit: about {need // mib} MiB of "
            f"{free // mib} MiB free (KV cache for n_ctx {n_ctx} included)"
        )
    count, used = 0, 0
    for size in reversed(per):  # llama.cpp offloads the last layers first
        if used + size > room:
            break
        count, used = count + 1, used + size
    average = sum(per) // len(per) // mib
    return count, (
        f"{count} of {len(per)} layers fit in {free // mib} MiB free (about {average} MiB a "
        f"layer with the KV cache for n_ctx {n_ctx}, {reserve // mib} MiB kept for buffers)"
    )


def gpu_advice(parameters: float, gpu: Gpu) -> dict[str, Any]:
    """For a model of ``parameters`` on ``gpu`` (its free memory, else its total): the
    transformers engine's settings (dtype: bfloat16 from compute capability 8.0, else float16;
    8-bit or 4-bit weights when 16-bit ones leave no room for a batch's KV cache) and
    llama.cpp's (all layers offloaded when the Q4_K_M GGUF fits, else auto)."""
    room = int(0.9 * (gpu.free or gpu.memory or 0))
    major = int((gpu.compute_capability or "0").split(".")[0] or 0)
    dtype = "bfloat16" if major >= 8 else "float16"
    # a batch of 64 at 2,048 tokens: about 0.1 GB of KV cache a billion parameters (GQA)
    kv = 0.1 * GB * parameters / 1e9 + 0.5 * GB
    options = (("16-bit", 2.0, {"dtype": dtype}), ("8-bit", 1.0, {"load_in_8bit": True}),
               ("4-bit", 0.5, {"load_in_4bit": True}))  # fmt: skip
    transformers: dict[str, Any] = {"fits": False}
    for label, width, settings in options:
        need = int(parameters * width + kv)
        if need <= room:
            transformers = {"fits": True, "weights": label, "memory_bytes": need, **settings,
                            "max_batch": 64}  # fmt: skip
            break
    gguf = model_bytes(parameters, "Q4_K_M", 4096)
    return {
        "parameters_b": round(parameters / 1e9, 2),
        "transformers": transformers,
        "llama_cpp": {"n_gpu_layers": -1 if gguf <= room else "auto", "gguf_q4_k_m_bytes": gguf},
    }
