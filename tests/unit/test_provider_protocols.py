"""The protocols the server and the CLI reach a backend's model management through
(turnout/providers/base.py): the embedded engine loads and unloads its models (`LocalModels`),
Ollama's models are managed through its API (`ModelStore`), and no other dialect claims either."""

from __future__ import annotations

from pathlib import Path

import pytest

from turnout.config import ProviderConfig
from turnout.providers import DIALECTS, build_provider, provider_class
from turnout.providers.base import LocalFile, LocalModels, ModelStore


@pytest.mark.parametrize("dialect", sorted(DIALECTS))
def test_which_dialect_implements_which_protocol(dialect: str) -> None:
    cls = provider_class(dialect)
    assert issubclass(cls, LocalModels) is (dialect == "embedded")
    assert issubclass(cls, ModelStore) is (dialect == "ollama")


async def test_the_embedded_provider_reports_its_folder_files_and_engines(
    gemma_path: Path, tmp_path: Path
) -> None:
    (tmp_path / "a.gguf").symlink_to(gemma_path)
    config = ProviderConfig.model_validate({"type": "embedded", "models_dir": str(tmp_path)})
    provider = build_provider("local", config)
    assert isinstance(provider, LocalModels)
    assert provider.models_folder() == str(tmp_path)
    assert provider.local_files() == []  # the folder is read at start
    await provider.start()
    try:
        assert provider.local_files() == [LocalFile("a", tmp_path / "a.gguf", "llama-cpp")]
        assert provider.status() == []  # found, not loaded: it loads on demand
        assert provider.load_stats()["loads"] == 0
    finally:
        await provider.close()
