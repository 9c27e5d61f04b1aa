"""The models directory and the header readers, on small files built here: GGUF files written
with the ``gguf`` package's own writer (the format's reference implementation), safetensors
headers as the format specifies them, and ONNX folders with onnxruntime-genai's config."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import gguf
import numpy as np
import pytest

from turnout.models.directory import describe, find, scan
from turnout.models.formats import HeaderError, read_gguf
from turnout.providers.embedded.llama_engine import estimate_bytes
from turnout.wire.durations import FOREVER, parse_keep_alive


def write_gguf(
    path: Path,
    *,
    arch: str = "llama",
    file_type: int | None = gguf.LlamaFileType.MOSTLY_Q8_0,
    tokens: int = 1000,
    endian: gguf.GGUFEndian = gguf.GGUFEndian.LITTLE,
    template: str | None = None,
) -> None:
    """A small GGUF: llama hyper-parameters, a long token list, and two f32 tensors."""
    writer = gguf.GGUFWriter(str(path), arch, endianess=endian)
    writer.add_name("Tiny Test")
    writer.add_context_length(4096)
    writer.add_block_count(4)
    writer.add_embedding_length(64)
    writer.add_head_count(8)
    writer.add_head_count_kv(2)
    if file_type is not None:
        writer.add_file_type(file_type)
    writer.add_token_list([f"tok{i}" for i in range(tokens)])
    if template:
        writer.add_chat_template(template)
    # The writer byte-swaps tensors itself for a big-endian file.
    writer.add_tensor("token_embd.weight", np.zeros((100, 64), dtype=np.float32))
    writer.add_tensor("output_norm.weight", np.zeros((64,), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def write_safetensors(path: Path, tensors: dict[str, tuple[str, list[int]]]) -> None:
    """A safetensors file: 8-byte little-endian header length, the JSON header, the data."""
    header: dict[str, object] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, (dtype, shape) in tensors.items():
        size = int(np.prod(shape)) * {"F32": 4, "BF16": 2, "F16": 2}[dtype]
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + b"\0" * offset)


def test_gguf_header(tmp_path: Path) -> None:
    path = tmp_path / "tiny.gguf"
    write_gguf(path, tokens=50_000)
    header = read_gguf(path)
    assert header.architecture == "llama"
    assert header.name == "Tiny Test"
    assert header.parameters == 100 * 64 + 64
    assert header.parameter_label == "6.5K"
    assert header.quantization == "Q8_0"
    assert header.context_length == 4096
    assert (header.layers, header.kv_heads, header.key_length) == (4, 2, 8)  # 64 / 8 heads
    assert "tokenizer.ggml.tokens" not in header.metadata  # long arrays are skipped, not kept


def test_gguf_big_endian_and_no_file_type(tmp_path: Path) -> None:
    path = tmp_path / "be.gguf"
    write_gguf(path, endian=gguf.GGUFEndian.BIG, file_type=None)
    header = read_gguf(path)
    assert header.architecture == "llama"
    assert header.quantization == "F32"  # from the tensors: all f32


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "empty file"),
        (b"GGML" + b"\0" * 20, "bad magic"),
        (b"GGUF\x07\0\0\0", "version 7"),
        (b"GGUF\x03\0", "truncated"),
    ],
)
def test_gguf_errors(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "bad.gguf"
    path.write_bytes(content)
    with pytest.raises(HeaderError, match=message):
        read_gguf(path)


def test_truncated_gguf_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "cut.gguf"
    write_gguf(path)
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(HeaderError, match="truncated"):
        read_gguf(path)


def test_scan_lists_every_format_and_skips_what_is_not_a_model(tmp_path: Path) -> None:
    write_gguf(tmp_path / "alpha.gguf")
    (tmp_path / "sub").mkdir()
    write_gguf(tmp_path / "sub" / "beta.gguf", arch="gemma3", file_type=15)
    for i in (1, 2):  # a split GGUF counts once, under its name without the part number
        write_gguf(tmp_path / f"split-0000{i}-of-00002.gguf")
    write_safetensors(tmp_path / "loose.safetensors", {"w": ("F16", [10, 10])})
    hf = tmp_path / "org" / "hf-model"
    hf.mkdir(parents=True)
    (hf / "config.json").write_text(json.dumps({"architectures": ["Qwen2ForCausalLM"]}))
    write_safetensors(hf / "model-00001-of-00002.safetensors", {"a": ("BF16", [4, 8])})
    write_safetensors(hf / "model-00002-of-00002.safetensors", {"b": ("BF16", [8, 8])})
    onnx = tmp_path / "phi-onnx"
    onnx.mkdir()
    (onnx / "genai_config.json").write_text(json.dumps({"model": {"type": "phi3"}}))
    (onnx / "model.onnx").write_bytes(b"\x08\x07")
    (tmp_path / "readme.txt").write_text("not a model")
    (tmp_path / "downloading.gguf.incomplete").write_bytes(b"GGUF")
    (tmp_path / ".cache").mkdir()
    write_gguf(tmp_path / ".cache" / "hidden.gguf")
    (tmp_path / "broken.gguf").write_bytes(b"junk")

    found = {m.name: m for m in scan(tmp_path)}
    assert sorted(found) == [
        "alpha", "broken", "loose", "org/hf-model", "phi-onnx", "split", "sub/beta",
    ]  # fmt: skip
    assert found["alpha"].format == "gguf" and found["alpha"].header.quantization == "Q8_0"
    assert found["sub/beta"].header.architecture == "gemma3"
    assert found["sub/beta"].header.quantization == "Q4_K_M"
    split = found["split"]
    assert len(split.files) == 2 and split.size == sum(p.stat().st_size for p in split.files)
    assert found["org/hf-model"].format == "safetensors"
    assert found["org/hf-model"].header.architecture == "Qwen2ForCausalLM"
    assert found["org/hf-model"].header.parameters == 4 * 8 + 8 * 8
    assert found["org/hf-model"].header.quantization == "BF16"
    assert found["loose"].header.parameters == 100
    assert found["phi-onnx"].format == "onnx" and found["phi-onnx"].header.architecture == "phi3"
    assert found["broken"].error == "not a GGUF file (bad magic)"
    listed = found["alpha"].to_json()
    assert listed["parameter_label"] == "6.5K" and listed["size"] > 0 and "error" not in listed


def test_find_by_name_or_file_name(tmp_path: Path) -> None:
    write_gguf(tmp_path / "alpha.gguf")
    assert find(tmp_path, "alpha") is not None
    assert find(tmp_path, "alpha.gguf") is not None
    assert find(tmp_path, "beta") is None
    assert scan(tmp_path / "missing") == []


def test_describe_refuses_other_files(tmp_path: Path) -> None:
    with pytest.raises(HeaderError, match="allowed suffixes"):
        describe(tmp_path / "notes.txt")


@pytest.mark.parametrize(
    ("value", "seconds"),
    [(300, 300.0), ("300", 300.0), ("5m", 300.0), ("1h30m", 5400.0), ("1.5s", 1.5),
     ("250ms", 0.25), (0, 0.0), ("0", 0.0), (-1, FOREVER), ("-1m", FOREVER)],
)  # fmt: skip
def test_keep_alive_values(value: object, seconds: float) -> None:
    assert parse_keep_alive(value) == seconds


@pytest.mark.parametrize("value", ["5 minutes", "m", "", True, None, [1], "5m3"])
def test_keep_alive_errors_say_what_is_allowed(value: object) -> None:
    with pytest.raises(ValueError, match="'5m'"):
        parse_keep_alive(value)


def test_memory_estimate_counts_weights_once_and_kv_per_instance(tmp_path: Path) -> None:
    path = tmp_path / "tiny.gguf"
    write_gguf(path)
    header = read_gguf(path)
    one = estimate_bytes(1000, header, n_ctx=1024)
    kv = 4 * 1024 * 2 * (8 + 8) * 2  # layers x ctx x kv heads x (key + value) x f16
    assert one == 1000 + kv + 64 * 1024 * 1024 + 1000 // 20
    two = estimate_bytes(1000, header, n_ctx=1024, instances=2)
    assert two - one == kv + 64 * 1024 * 1024 + 1000 // 20
    assert estimate_bytes(1000, header, n_ctx=1024, instances=2, mmap=False) == two + 1000
