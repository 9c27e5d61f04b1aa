"""What a model file says about itself: GGUF, safetensors and ONNX headers read without loading.

GGUF headers are read with the ``gguf`` package's type tables (value types, file types, tensor
types and its parameter-count notation) by a reader that skips arrays instead of decoding them:
``gguf.GGUFReader`` decodes every element of the tokenizer's arrays into numpy views, which took
16 s for the Gemma 3 270M file on this machine (262,144 tokens), against a tenth of a second here.
Safetensors headers are JSON behind an 8-byte length; a Hugging Face folder's ``config.json`` names
the architecture. ONNX files are protobuf; only the folder's ``genai_config.json`` or
``config.json`` is read for them.
"""

from __future__ import annotations

import json
import math
import mmap
import struct
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["FORMATS", "Header", "HeaderError", "read_gguf", "read_safetensors"]

#: file suffix -> format name
FORMATS = {".gguf": "gguf", ".safetensors": "safetensors", ".onnx": "onnx"}

_MAGIC = b"GGUF"
# Keys kept from a GGUF header: everything scalar, arrays only when short (tags, languages).
_MAX_KEPT_ARRAY = 32


class HeaderError(ValueError):
    """The file is not a readable model of the format its name says."""


@dataclass(slots=True)
class Header:
    """What a file's header tells: architecture, parameters, quantization, and the numbers a
    memory estimate needs (layers, KV heads and head sizes, trained context)."""

    architecture: str | None = None
    parameters: int | None = None
    quantization: str | None = None
    context_length: int | None = None
    name: str | None = None
    layers: int | None = None
    kv_heads: int | None = None
    key_length: int | None = None
    value_length: int | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    #: GGUF: bytes of each repeating layer's tensors (``blk.N.*``), and of the rest (embeddings,
    #: output); what `turnout.models.hardware.fit_gpu_layers` places layer by layer
    layer_bytes: list[int] = field(default_factory=list)
    other_bytes: int = 0

    @property
    def parameter_label(self) -> str | None:
        if not self.parameters:
            return None
        from gguf import model_weight_count_rounded_notation

        return str(model_weight_count_rounded_notation(self.parameters))


class _Cursor:
    """Little- or big-endian reads over a memory map, with bounds checks."""

    def __init__(self, buf: mmap.mmap, endian: str) -> None:
        self.buf = buf
        self.pos = 0
        self.endian = endian

    def take(self, fmt: str) -> Any:
        size = struct.calcsize(fmt)
        if self.pos + size > len(self.buf):
            raise HeaderError("truncated GGUF header")
        (value,) = struct.unpack_from(self.endian + fmt, self.buf, self.pos)
        self.pos += size
        return value

    def string(self) -> str:
        length = self.take("Q")
        if self.pos + length > len(self.buf):
            raise HeaderError("truncated GGUF header (string)")
        raw = self.buf[self.pos : self.pos + length]
        self.pos += length
        return raw.decode("utf-8", "replace")

    def skip_strings(self, count: int) -> None:
        for _ in range(count):
            length = self.take("Q")
            self.pos += length
        if self.pos > len(self.buf):
            raise HeaderError("truncated GGUF header (array)")


def read_gguf(path: Path) -> Header:
    """The metadata and tensor table of a GGUF file (v2 or v3), without reading tensor data."""
    with path.open("rb") as f:
        try:
            buf = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        except ValueError:  # an empty file cannot be mapped
            raise HeaderError("empty file") from None
    with buf:
        if buf[:4] != _MAGIC:
            raise HeaderError("not a GGUF file (bad magic)")
        if len(buf) < 8:  # the version; the cursor below checks every later read
            raise HeaderError("truncated GGUF header")
        endian = "<"
        (version,) = struct.unpack_from("<I", buf, 4)
        if version & 0xFFFF == 0:  # written by a big-endian machine
            endian, version = ">", struct.unpack_from(">I", buf, 4)[0]
        if version not in (2, 3):
            raise HeaderError(f"GGUF version {version} is not supported (2 and 3 are)")
        cur = _Cursor(buf, endian)
        cur.pos = 8
        n_tensors, n_kv = cur.take("Q"), cur.take("Q")
        meta = _read_kv(cur, n_kv)
        parameters, by_type, sizes = _read_tensor_table(cur, n_tensors)
    header = _header(meta, parameters, by_type)
    blocks = [size for name, size in sizes.items() if name.startswith("blk.")]
    header.layer_bytes = [sizes[f"blk.{i}"] for i in range(len(blocks)) if f"blk.{i}" in sizes]
    header.other_bytes = sizes.get("", 0)
    return header


def _read_kv(cur: _Cursor, count: int) -> dict[str, Any]:
    from gguf import GGUFValueType as T

    scalars = {
        T.UINT8: "B", T.INT8: "b", T.UINT16: "H", T.INT16: "h", T.UINT32: "I", T.INT32: "i",
        T.FLOAT32: "f", T.BOOL: "?", T.UINT64: "Q", T.INT64: "q", T.FLOAT64: "d",
    }  # fmt: skip
    meta: dict[str, Any] = {}
    for _ in range(count):
        key = cur.string()
        kind = T(cur.take("I"))
        if kind == T.STRING:
            meta[key] = cur.string()
        elif kind != T.ARRAY:
            meta[key] = cur.take(scalars[kind])
        else:
            item, n = T(cur.take("I")), cur.take("Q")
            if item == T.ARRAY:
                raise HeaderError(f"nested array in GGUF key {key!r}")
            keep = n <= _MAX_KEPT_ARRAY
            if item == T.STRING and keep:
                meta[key] = [cur.string() for _ in range(n)]
            elif item == T.STRING:
                cur.skip_strings(n)
            elif keep:
                meta[key] = [cur.take(scalars[item]) for _ in range(n)]
            else:
                cur.pos += n * struct.calcsize(scalars[item])
    return meta


def _read_tensor_table(cur: _Cursor, count: int) -> tuple[int, Counter[str], Counter[str]]:
    """Parameters (elements of all tensors), elements by tensor type, and bytes by layer
    (``blk.N``; ``""`` for the tensors outside the repeating layers)."""
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    parameters = 0
    by_type: Counter[str] = Counter()
    sizes: Counter[str] = Counter()
    for _ in range(count):
        name = cur.string()
        dims = [cur.take("Q") for _ in range(cur.take("I"))]
        kind_id = cur.take("I")
        cur.take("Q")  # offset
        elements = math.prod(dims)
        parameters += elements
        try:
            kind = GGMLQuantizationType(kind_id)
        except ValueError:
            by_type[f"type{kind_id}"] += elements
            continue
        by_type[kind.name] += elements
        block, size = GGML_QUANT_SIZES.get(kind, (1, 4))
        parts = name.split(".")
        layer = ".".join(parts[:2]) if parts[0] == "blk" and len(parts) > 2 else ""
        sizes[layer] += elements // block * size
    return parameters, by_type, sizes


def _header(meta: dict[str, Any], parameters: int, by_type: Counter[str]) -> Header:
    from gguf import LlamaFileType

    arch = meta.get("general.architecture")
    quant = None
    if isinstance(meta.get("general.file_type"), int):
        try:
            quant = LlamaFileType(meta["general.file_type"]).name
        except ValueError:
            quant = None
    if quant is None and by_type:
        # No file type: the type holding most weights, ignoring the f32 norms every model has.
        quant = next((t for t, _ in by_type.most_common() if t != "F32"), "F32")
    quant = quant.removeprefix("MOSTLY_").removeprefix("ALL_") if quant else None

    def num(key: str) -> int | None:
        value = meta.get(f"{arch}.{key}")
        if isinstance(value, list):  # per-layer values (some architectures): take the largest
            value = max(value) if value else None
        return int(value) if isinstance(value, int | float) else None

    heads, width = num("attention.head_count"), num("embedding_length")
    head_dim = width // heads if heads and width else None
    return Header(
        architecture=arch if isinstance(arch, str) else None,
        parameters=parameters or None,
        quantization=quant,
        context_length=num("context_length"),
        name=meta.get("general.name") if isinstance(meta.get("general.name"), str) else None,
        layers=num("block_count"),
        kv_heads=num("attention.head_count_kv") or heads,
        key_length=num("attention.key_length") or head_dim,
        value_length=num("attention.value_length") or head_dim,
        metadata=meta,
    )


def read_safetensors(files: list[Path]) -> Header:
    """Parameters and dominant dtype of one or more safetensors shards; the architecture from
    the folder's ``config.json`` when there is one."""
    parameters = 0
    by_dtype: Counter[str] = Counter()
    for path in files:
        with path.open("rb") as f:
            raw = f.read(8)
            if len(raw) != 8:
                raise HeaderError("truncated safetensors header")
            (length,) = struct.unpack("<Q", raw)
            if length > 100 * 1024 * 1024:
                raise HeaderError("safetensors header larger than 100 MB")
            try:
                header = json.loads(f.read(length))
            except ValueError:
                raise HeaderError("safetensors header is not JSON") from None
        if not isinstance(header, dict):
            raise HeaderError("safetensors header is not a JSON object")
        for name, info in header.items():
            if name == "__metadata__" or not isinstance(info, dict):
                continue
            elements = math.prod(info.get("shape") or [1])
            parameters += elements
            by_dtype[str(info.get("dtype"))] += elements
    out = Header(parameters=parameters or None)
    if by_dtype:
        out.quantization = by_dtype.most_common(1)[0][0]
    _read_hf_config(files[0].parent, out)
    return out


def read_onnx(path: Path) -> Header:
    """What the folder's ``genai_config.json`` (onnxruntime-genai) or ``config.json`` says."""
    out = Header()
    genai = path.parent / "genai_config.json"
    if genai.is_file():
        try:
            model = json.loads(genai.read_text()).get("model", {})
        except (OSError, ValueError):
            model = {}
        if isinstance(model, dict):
            out.architecture = model.get("type") if isinstance(model.get("type"), str) else None
            ctx = model.get("context_length")
            out.context_length = ctx if isinstance(ctx, int) else None
    if out.architecture is None:
        _read_hf_config(path.parent, out)
    return out


def _read_hf_config(folder: Path, out: Header) -> None:
    config = folder / "config.json"
    if not config.is_file():
        return
    try:
        data = json.loads(config.read_text())
    except (OSError, ValueError):
        return
    if not isinstance(data, dict):
        return
    archs = data.get("architectures")
    if isinstance(archs, list) and archs and isinstance(archs[0], str):
        out.architecture = archs[0]
    elif isinstance(data.get("model_type"), str):
        out.architecture = data["model_type"]
    ctx = data.get("max_position_embeddings")
    out.context_length = ctx if isinstance(ctx, int) else out.context_length
