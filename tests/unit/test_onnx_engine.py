"""The onnx engine's parts that need no model: which folder is a model, its chat template, the
search options a request becomes, and the logit adjustments (bias, penalties)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from turnout.errors import ConfigError, InvalidRequestError
from turnout.providers.embedded.onnx_engine import OnnxEngine, _Adjust, _chat_template, model_folder
from turnout.providers.embedded.settings import EmbeddedModel
from turnout.providers.embedded.thread_engine import Sampling


def genai_folder(root: Path) -> Path:
    folder = root / "m"
    folder.mkdir()
    (folder / "genai_config.json").write_text(json.dumps({"model": {"type": "gemma3_text"}}))
    (folder / "model.onnx").write_bytes(b"")
    return folder


def test_a_folder_or_an_onnx_file_in_it_names_the_model(tmp_path: Path) -> None:
    folder = genai_folder(tmp_path)
    assert model_folder(folder) == folder
    assert model_folder(folder / "model.onnx") == folder


def test_an_onnx_file_without_genai_config_says_how_to_build_one(tmp_path: Path) -> None:
    (tmp_path / "lone.onnx").write_bytes(b"")
    with pytest.raises(ConfigError, match=r"has no genai_config\.json.*--to onnx"):
        model_folder(tmp_path / "lone.onnx")


def test_the_chat_template_comes_from_the_tokenizer_files(tmp_path: Path) -> None:
    folder = genai_folder(tmp_path)
    assert _chat_template(folder) is None
    config = {"chat_template": [{"name": "tool_use", "template": "T"}, {"name": "default",
              "template": "D"}]}  # fmt: skip
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    assert _chat_template(folder) == "D"
    (folder / "tokenizer_config.json").write_text(json.dumps({"chat_template": "S"}))
    assert _chat_template(folder) == "S"
    (folder / "chat_template.jinja").write_text("J")
    assert _chat_template(folder) == "J"  # the file wins, as in transformers


def engine(tmp_path: Path, **entry: object) -> OnnxEngine:
    folder = genai_folder(tmp_path)
    made = OnnxEngine(EmbeddedModel(name="m", path=str(folder), **entry), lambda: folder)
    made.context_length, made.window = 32768, 512
    return made


def test_search_options_size_the_cache_and_map_sampling(tmp_path: Path) -> None:
    e = engine(tmp_path, n_ctx=2048)
    greedy = e._search_options(12, Sampling(max_tokens=16, temperature=0))
    # the sliding window needs a cache of 512 even for 28 tokens
    assert greedy == {"max_length": 512, "batch_size": 1, "do_sample": False}
    sampled = e._search_options(
        1000, Sampling(max_tokens=2000, temperature=0.7, top_p=0.9, top_k=40, seed=3)
    )
    assert sampled == {
        "max_length": 2048, "batch_size": 1, "do_sample": True, "temperature": 0.7,
        "top_p": 0.9, "top_k": 40, "random_seed": 3,
    }  # fmt: skip
    assert e._search_options(5, Sampling(max_tokens=4)) == {"max_length": 512, "batch_size": 1}


def test_logit_bias_and_penalties_adjust_the_logits() -> None:
    sampling = Sampling(
        max_tokens=4, logit_bias={1: -100.0, 3: 5.0}, presence_penalty=0.5, frequency_penalty=1.0
    )
    adjust = _Adjust(sampling, vocab=5)
    adjust.seen(2)
    adjust.seen(2)
    adjust.seen(4)
    logits = np.zeros((1, 1, 5), dtype=np.float32)
    out = adjust(logits)
    assert out.dtype == np.float32 and out.shape == (1, 1, 5)
    assert out[0, 0].tolist() == [0.0, -100.0, -2.5, 5.0, -1.5]
    assert not _Adjust(Sampling(max_tokens=4), vocab=5).active


def test_a_bias_outside_the_vocabulary_names_logit_bias() -> None:
    with pytest.raises(InvalidRequestError) as caught:
        _Adjust(Sampling(max_tokens=4, logit_bias={7: 1.0}), vocab=5)
    assert (caught.value.param, caught.value.code) == ("logit_bias", "invalid_value")


def test_the_memory_estimate_counts_files_and_kv_cache(tmp_path: Path) -> None:
    e = engine(tmp_path, n_ctx=1024)
    folder = tmp_path / "m"
    decoder = {"num_hidden_layers": 2, "num_key_value_heads": 1, "head_size": 64}
    (folder / "genai_config.json").write_text(json.dumps({"model": {"decoder": decoder}}))
    (folder / "model.onnx.data").write_bytes(b"\0" * 1000)
    files = sum(p.stat().st_size for p in folder.iterdir())
    kv = 2 * 1024 * 1 * 64 * 2 * 4
    assert e.estimate_bytes(folder) == 2 * files + kv + 32 * 1024 * 1024
