"""Quantization with llama.cpp on the real Gemma 3 270M GGUF: the requantized file has the type
asked for, loads in the embedded engine and answers; failures leave nothing behind."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from turnout import Gateway
from turnout.cli import app
from turnout.models.formats import read_gguf
from turnout.models.quantize import QUANT_TYPES, QuantizeError, quantize

pytestmark = pytest.mark.slow

Quantized = tuple[Path, list[tuple[int, int]]]  # the file, and the progress reported

HI = [{"role": "user", "content": "Say hi."}]
NO_EOS = {"1": -100, "106": -100}  # Gemma's end tokens banned: generations run to max_tokens


@pytest.fixture(scope="module")
def gemma_q8(gemma_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Quantized:
    target = tmp_path_factory.mktemp("quant") / "gemma-3-270m-q8_0.gguf"
    seen: list[tuple[int, int]] = []
    result = quantize(gemma_path, target, "Q8_0", progress=lambda d, t: seen.append((d, t)))
    assert result.target == target and result.type == "Q8_0"
    assert result.source_type == "Q4_K_M"
    assert result.target_bytes == target.stat().st_size > result.source_bytes
    return target, seen


def test_requantized_file_is_q8_0_and_progress_was_reported(gemma_q8: Quantized) -> None:
    target, seen = gemma_q8
    header = read_gguf(target)
    assert header.quantization == "Q8_0"
    assert header.architecture == "gemma3" and header.parameters == 268_098_176
    assert seen, "no per-tensor progress"
    total = seen[-1][1]
    assert total == 236 and seen[-1][0] == total
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)
    assert not target.with_name(target.name + ".partial").exists()


async def test_requantized_model_loads_and_answers(gemma_q8: Quantized) -> None:
    target, _ = gemma_q8
    config = {
        "providers": {
            "local": {
                "type": "embedded",
                "models": [{"name": "gemma-q8", "path": str(target), "chat_format": "gemma"}],
            }
        }
    }
    async with Gateway(config, environ={}) as gw:
        reply = await gw.chat("local/gemma-q8", HI, max_tokens=8, logit_bias=NO_EOS)
    assert reply["choices"][0]["finish_reason"] == "length"
    assert reply["usage"]["completion_tokens"] == 8
    assert reply["choices"][0]["message"]["content"]


def test_unsupported_type_lists_the_allowed_ones(gemma_path: Path, tmp_path: Path) -> None:
    with pytest.raises(QuantizeError) as caught:
        quantize(gemma_path, tmp_path / "x.gguf", "IQ2_XS")
    assert "IQ2_XS" in str(caught.value)
    assert ", ".join(QUANT_TYPES) in str(caught.value)
    assert list(tmp_path.iterdir()) == []


def test_a_failed_quantization_leaves_nothing(gemma_path: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken.gguf"
    with gemma_path.open("rb") as f:  # a header that promises tensors the file does not hold
        broken.write_bytes(f.read(8 * 1024 * 1024))
    target = tmp_path / "out.gguf"
    with pytest.raises(QuantizeError, match="could not quantize"):
        quantize(broken, target, "Q8_0")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken.gguf"]


def test_existing_target_needs_force(gemma_q8: Quantized, gemma_path: Path) -> None:
    target, _ = gemma_q8
    before = target.stat().st_mtime_ns
    with pytest.raises(QuantizeError, match="--force"):
        quantize(gemma_path, target, "Q8_0")
    assert target.stat().st_mtime_ns == before


def test_cli_quantize_reports_sizes(gemma_path: Path, tmp_path: Path) -> None:
    target = tmp_path / "g.gguf"
    result = CliRunner().invoke(
        app, ["models", "quantize", str(gemma_path), str(target), "--type", "Q8_0"]
    )
    assert result.exit_code == 0, result.output
    assert "Q8_0" in result.stdout and "253.1 MB" in result.stdout and "291.5 MB" in result.stdout
    assert read_gguf(target).quantization == "Q8_0"
    again = CliRunner().invoke(app, ["models", "quantize", str(gemma_path), str(target)])
    assert again.exit_code == 2 and "--force" in again.output
