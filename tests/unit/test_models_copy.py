"""`copy_model`: a model of the models directory under a second name (what the Ollama front's
``/api/copy`` does there), on small GGUF files written by the ``gguf`` package's own writer."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.unit.test_models_directory import write_gguf, write_safetensors
from turnout.models import directory
from turnout.models.directory import copy_model, find, scan


def test_a_file_is_hard_linked_under_the_new_name(tmp_path: Path) -> None:
    write_gguf(tmp_path / "tiny.gguf")
    copied = copy_model(tmp_path, "tiny", "tiny-backup")
    assert copied.name == "tiny-backup" and copied.path == tmp_path / "tiny-backup.gguf"
    assert copied.header.architecture == "llama" and copied.error is None
    assert os.path.samefile(tmp_path / "tiny.gguf", copied.path)  # the same bytes, no space
    assert [m.name for m in scan(tmp_path)] == ["tiny", "tiny-backup"]


def test_the_suffix_and_folders_of_the_new_name(tmp_path: Path) -> None:
    write_gguf(tmp_path / "tiny.gguf")
    assert copy_model(tmp_path, "tiny.gguf", "kept/tiny.gguf").name == "kept/tiny"
    assert copy_model(tmp_path, "tiny", "tiny:latest").path.name == "tiny:latest.gguf"


def test_shards_keep_their_numbers(tmp_path: Path) -> None:
    (tmp_path / "org").mkdir()
    for part in (1, 2):
        write_gguf(tmp_path / f"org/big-0000{part}-of-00002.gguf")
    copied = copy_model(tmp_path, "org/big", "big2")
    assert copied.name == "big2" and len(copied.files) == 2
    assert sorted(p.name for p in copied.files) == [
        "big2-00001-of-00002.gguf",
        "big2-00002-of-00002.gguf",
    ]
    assert copied.size == find(tmp_path, "org/big").size  # type: ignore[union-attr]


def test_a_folder_model_is_copied_whole(tmp_path: Path) -> None:
    folder = tmp_path / "org" / "small"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"]}))
    write_safetensors(folder / "model.safetensors", {"w": ("F32", [4, 4])})
    copied = copy_model(tmp_path, "org/small", "small-copy")
    assert copied.format == "safetensors" and copied.path == tmp_path / "small-copy"
    assert (tmp_path / "small-copy" / "config.json").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no leftovers


def test_refusals(tmp_path: Path) -> None:
    write_gguf(tmp_path / "tiny.gguf")
    write_gguf(tmp_path / "other.gguf")
    with pytest.raises(FileNotFoundError, match="'nope'"):
        copy_model(tmp_path, "nope", "x")
    with pytest.raises(FileExistsError, match="'other'"):
        copy_model(tmp_path, "tiny", "other")
    for bad in ("", "../escape", "/abs", ".hidden", "a//b", "x-00001-of-00002", "a\\b"):
        with pytest.raises(ValueError, match="not a model name"):
            copy_model(tmp_path, "tiny", bad)
    assert [m.name for m in scan(tmp_path)] == ["other", "tiny"]


def test_a_copy_where_links_fail_is_written_whole_then_renamed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_gguf(tmp_path / "tiny.gguf")

    def no_links(*_: object) -> None:
        raise OSError(18, "Invalid cross-device link")

    monkeypatch.setattr(directory.os, "link", no_links)
    copied = copy_model(tmp_path, "tiny", "elsewhere")
    assert not os.path.samefile(tmp_path / "tiny.gguf", copied.path)
    assert copied.path.read_bytes() == (tmp_path / "tiny.gguf").read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["elsewhere.gguf", "tiny.gguf"]
