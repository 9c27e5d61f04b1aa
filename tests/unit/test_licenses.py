"""LICENSES.md is current: regenerated here (scripts/licenses.py, pip-licenses) and compared with
the file, rows in any order; every provider type names its runtime's licence; the quick start
states the default model's terms."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path
from types import ModuleType

import pytest

from turnout.providers import PROVIDER_TYPES

ROOT = Path(__file__).resolve().parents[2]
REGENERATE = "regenerate it: python scripts/licenses.py"


@pytest.fixture(scope="module")
def script() -> ModuleType:
    pytest.importorskip("piplicenses")
    spec = importlib.util.spec_from_file_location("turnout_licenses", ROOT / "scripts/licenses.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _sections(text: str) -> tuple[str, set[str]]:
    head, _, table = text.partition("## Python dependencies")
    return head, {
        line for line in table.splitlines() if line.startswith("| ") and "---" not in line
    }


def test_licenses_md_is_current(script: ModuleType) -> None:
    written_head, written = _sections((ROOT / "LICENSES.md").read_text())
    fresh_head, fresh = _sections(script.render(script.rows()))
    assert written_head == fresh_head, f"LICENSES.md's preamble or runtimes changed; {REGENERATE}"
    # Rows of packages not installed here (an extra this machine lacks) are not compared; every
    # package installed here that turnout needs must be in the file as it is here.
    missing = sorted(fresh - written)
    assert not missing, f"not in LICENSES.md as installed here: {missing[:10]}; {REGENERATE}"
    assert len(fresh) > 30  # the closure was walked, not just the direct dependencies


def test_closure_follows_extras_of_dependencies(script: ModuleType) -> None:
    names = set(script.closure())
    assert {"starlette", "uvicorn", "orjson", "pydantic", "typer"} <= names
    assert "httptools" in names  # only through uvicorn[standard]
    assert "pytest" not in names and "ruff" not in names  # the test extra is not shipped


def test_every_provider_type_names_its_licence(script: ModuleType) -> None:
    assert set(PROVIDER_TYPES) <= set(script.RUNTIMES)
    text = (ROOT / "LICENSES.md").read_text()
    for kind in PROVIDER_TYPES:
        assert f"| `{kind}` |" in text


def test_quick_start_states_the_model_terms() -> None:
    readme = (ROOT / "README.md").read_text()
    quick = readme.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    assert "Gemma Terms of Use" in quick and "https://ai.google.dev/gemma/terms" in quick
    assert "LICENSES.md" in quick
    assert re.search(r"Gemma Terms of Use", (ROOT / "LICENSES.md").read_text())
