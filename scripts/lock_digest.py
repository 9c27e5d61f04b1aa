"""Print a digest of pyproject.toml's dependencies (the main list and every extra).

The lock files record it (scripts/lock.sh) and tests/unit/test_lock.py compares it with
pyproject.toml as it is now: a dependency changed without the locks regenerated fails the test.
"""

from __future__ import annotations

import hashlib
import json
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def dependencies(pyproject: Path = ROOT / "pyproject.toml") -> dict[str, list[str]]:
    project = tomllib.loads(pyproject.read_text())["project"]
    out = {"": sorted(project.get("dependencies", []))}
    for extra, reqs in sorted(project.get("optional-dependencies", {}).items()):
        out[extra] = sorted(reqs)
    return out


def digest(pyproject: Path = ROOT / "pyproject.toml") -> str:
    text = json.dumps(dependencies(pyproject), sort_keys=True)
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()[:16]


if __name__ == "__main__":
    print(digest())
