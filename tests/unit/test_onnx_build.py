"""build_onnx's error paths: bad input gets a clear error naming what is wrong, and nothing, not
even a temporary folder, is left where the model was to go. The last two run onnxruntime-genai's
real model builder in its child process (a few seconds each: it imports PyTorch)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from turnout.models import onnx_build
from turnout.models.onnx_build import OnnxBuildError, _flatten_gemma3_rope, build_onnx


def hf_folder(root: Path, config: object = None, weights: bytes | None = b"x") -> Path:
    folder = root / "hf"
    folder.mkdir()
    if config is not None:
        (folder / "config.json").write_text(json.dumps(config))
    if weights is not None:
        (folder / "model.safetensors").write_bytes(weights)
    return folder


def nothing_left(root: Path, target: Path) -> None:
    assert not target.exists()
    assert not [p for p in root.iterdir() if p.name.startswith(f".{target.name}")]


GEMMA = {"architectures": ["Gemma3ForCausalLM"], "model_type": "gemma3_text"}


@pytest.mark.parametrize(
    ("config", "weights", "message"),
    [
        (None, b"x", "has no config.json"),
        ({"model_type": "gemma3_text"}, b"x", "names no architecture"),
        (GEMMA, None, "holds no weights"),
    ],
)
def test_a_folder_that_is_not_a_model_is_refused(
    tmp_path: Path, config: object, weights: bytes | None, message: str
) -> None:
    source = hf_folder(tmp_path, config, weights)
    with pytest.raises(OnnxBuildError, match=message):
        build_onnx(source, tmp_path / "out")
    nothing_left(tmp_path, tmp_path / "out")


def test_a_missing_folder_is_named(tmp_path: Path) -> None:
    with pytest.raises(OnnxBuildError, match=r"no Hugging Face model folder at .*nowhere"):
        build_onnx(tmp_path / "nowhere", tmp_path / "out")
    nothing_left(tmp_path, tmp_path / "out")


def test_a_precision_the_cpu_cannot_run_lists_the_allowed_ones(tmp_path: Path) -> None:
    source = hf_folder(tmp_path, GEMMA)
    with pytest.raises(OnnxBuildError, match=r"'fp16'.*allowed: int4, int8, fp32"):
        build_onnx(source, tmp_path / "out", precision="fp16")


def test_an_existing_target_is_kept_without_force(tmp_path: Path) -> None:
    source = hf_folder(tmp_path, GEMMA)
    target = tmp_path / "out"
    target.mkdir()
    (target / "keep").write_text("mine")
    with pytest.raises(OnnxBuildError, match="exists; pass --force"):
        build_onnx(source, target)
    assert (target / "keep").read_text() == "mine"


def test_a_target_inside_the_source_is_refused(tmp_path: Path) -> None:
    source = hf_folder(tmp_path, GEMMA)
    with pytest.raises(OnnxBuildError, match="outside the source"):
        build_onnx(source, source / "onnx")


def test_missing_builder_packages_are_named_with_the_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(onnx_build, "_BUILDER_PACKAGES", ("torch", "no_such_package_here"))
    source = hf_folder(tmp_path, GEMMA)
    with pytest.raises(OnnxBuildError, match=r"needs no_such_package_here.*turnout\[engines\]"):
        build_onnx(source, tmp_path / "out")
    nothing_left(tmp_path, tmp_path / "out")


def test_the_temporary_folder_of_a_killed_build_is_removed(tmp_path: Path) -> None:
    target = tmp_path / "out"
    dead = tmp_path / ".out.partial-4194305"  # above Linux's largest pid: no such process
    alive = tmp_path / f".out.partial-{os.getppid()}"
    for folder in (dead, alive):
        folder.mkdir()
        (folder / "model.onnx.data").write_bytes(b"half")
    onnx_build._remove_abandoned(target)
    assert not dead.exists() and alive.exists()


def test_gemma3_rope_parameters_are_flattened_for_the_builder() -> None:
    from types import SimpleNamespace

    config = SimpleNamespace(
        architectures=["Gemma3ForCausalLM"],
        rope_parameters={
            "full_attention": {"rope_theta": 1e6, "rope_type": "default"},
            "sliding_attention": {"rope_theta": 1e4, "rope_type": "default"},
        },
    )
    _flatten_gemma3_rope(config)
    assert config.rope_theta == 1e6
    assert config.rope_local_base_freq == 1e4
    assert config.rope_parameters == {"rope_theta": 1e6, "rope_type": "default"}


@pytest.mark.slow
def test_an_architecture_the_builder_lacks_is_named(tmp_path: Path) -> None:
    config = {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "n_layer": 2,
              "n_embd": 64, "n_head": 2, "vocab_size": 100}  # fmt: skip
    source = hf_folder(tmp_path, config)
    with pytest.raises(OnnxBuildError, match=r"does not support the model in .*not currently"):
        build_onnx(source, tmp_path / "out")
    nothing_left(tmp_path, tmp_path / "out")


@pytest.mark.slow
def test_unreadable_weights_fail_with_the_builders_error_and_leave_nothing(
    tmp_path: Path,
) -> None:
    config = {**GEMMA, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
              "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 32,
              "vocab_size": 256}  # fmt: skip
    source = hf_folder(tmp_path, config, b"not a safetensors file")
    with pytest.raises(OnnxBuildError) as caught:
        build_onnx(source, tmp_path / "out")
    message = str(caught.value)
    assert "model builder failed on" in message
    assert "SafetensorError" in message  # the exception it ended on, not just an exit code
    nothing_left(tmp_path, tmp_path / "out")
