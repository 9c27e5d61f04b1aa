"""Which engine serves a model (turnout/providers/embedded/provider.py): by format under
``engine: auto``, forced per model or per provider, refused on a format it cannot read; what each
reports it can do; conversion arguments refused before any work (turnout/models/convert.py). No
model runs."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from turnout.config import ProviderConfig
from turnout.errors import BackendError, ConfigError
from turnout.models.convert import ConvertError, gguf_to_hf
from turnout.models.directory import scan
from turnout.providers.embedded import EmbeddedProvider, default_engine, model_format
from turnout.providers.embedded.llama_engine import LlamaEngine
from turnout.providers.embedded.server_engine import ServerEngine
from turnout.providers.embedded.settings import EmbeddedModel
from turnout.providers.embedded.thread_engine import require_packages
from turnout.providers.embedded.torch_engine import TransformersEngine


@pytest.fixture
def folders(tmp_path: Path, gemma_path: Path) -> dict[str, Path]:
    """The Gemma GGUF, a Hugging Face folder, an onnxruntime-genai folder, a lone file."""
    (tmp_path / "g.gguf").symlink_to(gemma_path)
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "config.json").write_text(json.dumps({"architectures": ["Gemma3ForCausalLM"]}))
    (hf / "model.safetensors").write_bytes(b"\x02\x00\x00\x00\x00\x00\x00\x00{}")
    onnx = tmp_path / "onnx"
    onnx.mkdir()
    (onnx / "genai_config.json").write_text(json.dumps({"model": {"type": "gemma3_text"}}))
    (onnx / "model.onnx").write_bytes(b"")
    (tmp_path / "lone.safetensors").write_bytes(b"\x02\x00\x00\x00\x00\x00\x00\x00{}")
    return {"gguf": tmp_path / "g.gguf", "hf": hf, "onnx": onnx, "dir": tmp_path}


def provider(*models: dict[str, Any], **settings: Any) -> EmbeddedProvider:
    config = ProviderConfig.model_validate({"type": "embedded", "models": list(models), **settings})
    return EmbeddedProvider("local", config)


def test_format_of_a_path(folders: dict[str, Path]) -> None:
    assert model_format(folders["gguf"]) == "gguf"
    assert model_format(folders["hf"]) == "safetensors"
    assert model_format(folders["hf"] / "model.safetensors") == "safetensors"
    assert model_format(folders["onnx"]) == "onnx"


def test_auto_picks_the_engine_by_format(folders: dict[str, Path]) -> None:
    p = provider(
        {"name": "g", "path": str(folders["gguf"])}, {"name": "hf", "path": str(folders["hf"])}
    )
    assert isinstance(p.engines["g"], LlamaEngine)
    assert isinstance(p.engines["hf"], TransformersEngine)
    assert p.engines["hf"].kind == "transformers"


def test_the_providers_engine_applies_where_it_can_read_the_format(
    folders: dict[str, Path],
) -> None:
    p = provider(
        {"name": "g", "path": str(folders["gguf"])},
        {"name": "hf", "path": str(folders["hf"])},
        engine="llama-server",
        llama_server="llama-cpp-python",
    )
    assert isinstance(p.engines["g"], ServerEngine)
    assert isinstance(p.engines["hf"], TransformersEngine)


@pytest.mark.parametrize(
    ("model", "engine", "fmt"),
    [
        ("gguf", "transformers", "gguf"),
        ("hf", "llama-cpp", "safetensors"),
        ("hf", "onnx", "safetensors"),
    ],
)
def test_forcing_an_engine_on_a_format_it_cannot_read_fails_at_start(
    folders: dict[str, Path], model: str, engine: str, fmt: str
) -> None:
    with pytest.raises(ConfigError) as err:
        provider({"name": "m", "path": str(folders[model]), "engine": engine})
    message = str(err.value)
    assert f"providers.local.models[m].engine: '{engine}' cannot serve a {fmt} model" in message


def test_the_engine_setting_accepts_transformers_and_onnx_only_besides_llama() -> None:
    from turnout.config import load_config

    with pytest.raises(ConfigError, match="engine"):
        load_config({"providers": {"x": {"type": "embedded", "engine": "vllm"}}})
    entry = EmbeddedModel(name="m", engine="onnx")
    assert entry.engine == "onnx"


def test_directory_listing_names_the_engine(folders: dict[str, Path]) -> None:
    engines = {m.name: default_engine(m) for m in scan(folders["dir"])}
    assert engines == {"g": "llama-cpp", "hf": "transformers", "onnx": "onnx", "lone": None}


def test_a_transformers_model_reports_what_it_cannot_do(folders: dict[str, Path]) -> None:
    p = provider(
        {"name": "hf", "path": str(folders["hf"])}, {"name": "g", "path": str(folders["gguf"])}
    )
    caps = p.capabilities("hf")
    assert not caps.tools and not caps.vision and not caps.embeddings and not caps.json_schema
    assert caps.chat and caps.completion and caps.streaming
    assert p.capabilities("g").embeddings


def test_missing_packages_name_the_pip_extra() -> None:
    with pytest.raises(BackendError) as err:
        require_packages(("torch", "no_such_package_here"), "transformers")
    assert err.value.message == (
        "the transformers engine needs no_such_package_here, which is not installed: "
        "pip install 'turnout[engines]'"
    )


def test_transformers_needs_a_config_beside_a_lone_file(folders: dict[str, Path]) -> None:
    import threading

    engine = TransformersEngine(EmbeddedModel(name="lone"), lambda: folders["dir"] / "x")
    with pytest.raises(BackendError, match=r"needs a config\.json beside lone\.safetensors"):
        engine._load_blocking(
            folders["dir"] / "lone.safetensors", lambda _: None, threading.Event()
        )


def test_transformers_memory_estimate_from_the_config(folders: dict[str, Path]) -> None:
    config = {
        "num_hidden_layers": 18, "num_key_value_heads": 1, "head_dim": 256, "dtype": "float32",
    }  # fmt: skip
    (folders["hf"] / "config.json").write_text(json.dumps(config))
    engine = TransformersEngine(EmbeddedModel(name="hf", n_ctx=1024), lambda: folders["hf"])
    weights = (folders["hf"] / "model.safetensors").stat().st_size
    kv = 18 * 1 * 256 * 2 * 1024 * 4  # layers, heads, head size, keys and values, tokens, f32
    assert engine.estimate_bytes(folders["hf"]) == int(weights * 1.6 + kv + 128 * 1024 * 1024)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ({"dtype": "int3"}, "unsupported dtype 'int3'; allowed: bfloat16, float16, float32"),
        ({"gguf_path": "missing.gguf"}, "no GGUF file at"),
        ({"gguf_path": "hf/model.safetensors"}, "is not a readable GGUF"),
        ({"out_dir": "hf"}, "already exists (--force, or overwrite=True, replaces it)"),
    ],
)
def test_conversion_arguments_are_checked_first(
    folders: dict[str, Path], args: dict[str, str], message: str
) -> None:
    call = {"gguf_path": "g.gguf", "out_dir": "new", "dtype": "bfloat16", **args}
    with pytest.raises(ConvertError, match=re.escape(message)):
        gguf_to_hf(
            folders["dir"] / call["gguf_path"], folders["dir"] / call["out_dir"], call["dtype"]
        )
    assert not (folders["dir"] / "new").exists()


def test_a_gguf_transformers_cannot_read_is_a_conversion_error(tmp_path: Path) -> None:
    """transformers' own refusal (an architecture it has no GGUF reader for) becomes a
    ConvertError naming the file and the reason; nothing is left behind."""
    import gguf
    import numpy as np

    writer = gguf.GGUFWriter(str(tmp_path / "odd.gguf"), "notanarch")
    writer.add_block_count(1)
    writer.add_token_list([f"tok{i}" for i in range(8)])
    writer.add_tensor("token_embd.weight", np.zeros((8, 4), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(ConvertError, match=r"transformers cannot read odd\.gguf: .*notanarch"):
        gguf_to_hf(tmp_path / "odd.gguf", tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["odd.gguf"]
