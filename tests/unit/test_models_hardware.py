"""Hardware detection parsers, source document 001's recommendation table, per-size advice, and
``turnout doctor`` on this machine."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from turnout.cli import app
from turnout.models.hardware import (
    GB,
    Gpu,
    Hardware,
    advise,
    parse_cpuinfo,
    parse_meminfo,
    recommend_quantization,
    recommend_settings,
    size_recommendations,
)

X86 = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 7B13
physical id\t: 0
core id\t\t: 0
flags\t\t: fpu sse sse2 avx avx2 fma f16c avx512f

processor\t: 1
model name\t: AMD EPYC 7B13
physical id\t: 0
core id\t\t: 0
flags\t\t: fpu sse sse2 avx avx2 fma f16c avx512f

processor\t: 2
model name\t: AMD EPYC 7B13
physical id\t: 0
core id\t\t: 1
flags\t\t: fpu sse sse2 avx avx2 fma f16c avx512f
"""
ARM = """processor\t: 0
BogoMIPS\t: 48.00
Features\t: fp asimd evtstrm aes crc32 cpuid

processor\t: 1
Features\t: fp asimd evtstrm aes crc32 cpuid
"""


def machine(memory_gb: float, gpus: list[Gpu] | None = None, offload: bool = False) -> Hardware:
    return Hardware(
        "Linux", "x86_64", "test", 16, 8, ["avx2"], int(memory_gb * GB), int(memory_gb * GB),
        gpus or [], offload,
    )  # fmt: skip


def test_cpuinfo_x86_counts_physical_cores_and_simd() -> None:
    model, logical, physical, flags = parse_cpuinfo(X86)
    assert model == "AMD EPYC 7B13"
    assert (logical, physical) == (3, 2)  # two threads share core 0
    assert flags == ["avx", "avx2", "avx512f", "fma", "f16c"]


def test_cpuinfo_arm_without_core_ids() -> None:
    model, logical, physical, flags = parse_cpuinfo(ARM)
    assert (logical, physical) == (2, 2) and flags == ["asimd"] and model == ""


def test_meminfo() -> None:
    text = "MemTotal:       24684084 kB\nMemFree:   100 kB\nMemAvailable:   23506780 kB\n"
    assert parse_meminfo(text) == (24684084 * 1024, 23506780 * 1024)


@pytest.mark.parametrize(
    ("memory", "target", "expected"),
    [(3, "balanced", "Q3_K_S"), (4, "balanced", "Q3_K_S"), (6, "balanced", "Q4_K_M"),
     (12, "balanced", "Q5_K_M"), (24, "balanced", "Q8_0"), (64, "balanced", "Q8_0"),
     (3, "speed", "Q2_K"), (16, "speed", "Q4_K_M"), (30, "speed", "Q5_K_M"),
     (8, "quality", "Q5_K_M"), (20, "quality", "F16")],
)  # fmt: skip
def test_the_source_documents_table(memory: float, target: str, expected: str) -> None:
    """getQuantizationRecommendation: the first tier of 4, 8, 16, 32 GB at or above."""
    assert recommend_quantization(memory, target) == expected


def test_settings_follow_memory_and_device() -> None:
    small = recommend_settings(machine(3))
    assert (small["n_ctx"], small["quantization"], small["use_mlock"]) == (2048, "Q3_K_S", False)
    assert small["n_threads"] == 8 and small["n_gpu_layers"] == 0 and small["device"] == "cpu"
    assert recommend_settings(machine(6))["n_ctx"] == 4096
    big = recommend_settings(machine(64, [Gpu("cuda", "RTX", 24 * GB)], offload=True))
    assert big["n_ctx"] == 8192 and big["n_gpu_layers"] == -1 and big["device"] == "cuda"
    # A GPU that llama.cpp was not built for is no help.
    assert recommend_settings(machine(64, [Gpu("cuda", "RTX", 24 * GB)]))["n_gpu_layers"] == 0


def test_sizes_step_down_until_they_fit() -> None:
    rows = {r["parameters_b"]: r for r in size_recommendations(machine(12))}
    assert rows[7.0]["quantization"] == "Q5_K_M"  # the table's choice for 9.6 GB of room
    assert rows[13.0]["quantization"] == "Q4_K_M"  # Q5_K_M would need 10.4 GB: one step down
    assert rows[13.0]["memory_bytes"] <= int(0.8 * 12 * GB)
    assert not rows[34.0]["fits"] and rows[34.0]["quantization"] is None
    assert list(rows) == sorted(rows)


def test_a_gpu_that_reports_vram_bounds_the_advice() -> None:
    gpu = machine(128, [Gpu("cuda", "small", 8 * GB)], offload=True)
    seven = advise(7e9, gpu)
    assert seven["fits"] and seven["memory_bytes"] <= 0.8 * 8 * GB
    assert seven["quantization"] in ("Q5_K_M", "Q4_K_M")
    assert seven["n_gpu_layers"] == -1


def test_doctor_on_this_machine(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["doctor", "--json", "--dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    hw = report["hardware"]
    assert hw["logical_cores"] >= 1 and hw["memory_total"] > 0
    assert report["settings"]["n_threads"] >= 1 and len(report["sizes"]) == 8
    assert report["models"] == []
    text = CliRunner().invoke(app, ["doctor", "--dir", str(tmp_path)])
    assert text.exit_code == 0 and "Quantization by model size" in text.stdout
    bad = CliRunner().invoke(app, ["doctor", "--target", "fast"])
    assert bad.exit_code == 2 and "speed, balanced or quality" in bad.output
