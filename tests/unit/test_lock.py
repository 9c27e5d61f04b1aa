"""The lock files match pyproject.toml (scripts/lock.sh regenerates them): they were made from
the dependencies as they are now (the digest in their first line), every requirement of the
extras they cover is pinned to a version it allows, and every pin carries a hash, so that the
install and test commands (pip install --require-hashes) take exactly what was tested."""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))
from lock_digest import digest  # noqa: E402

LOCKS = {"requirements.lock": ("all", "test"), "requirements-embedded.lock": ("embedded",)}
_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s\\;]+)")


def _pins(text: str) -> dict[str, tuple[str, bool]]:
    """name -> (version, hashed) for every pinned package of a lock file."""
    pins: dict[str, tuple[str, bool]] = {}
    lines = text.splitlines()
    for i, line in enumerate(lines):
        match = _PIN.match(line)
        if match:
            following = " ".join(lines[i : i + 3])
            pins[canonicalize_name(match[1])] = (match[2], "--hash=sha256:" in following)
    return pins


def _requirements(extras: tuple[str, ...]) -> list[Requirement]:
    """The requirements the extras bring, turnout's own extras followed."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    optional = project["optional-dependencies"]
    seen: set[str] = set()
    todo, out = list(extras), [Requirement(r) for r in project["dependencies"]]
    while todo:
        extra = todo.pop()
        if extra in seen:
            continue
        seen.add(extra)
        for raw in optional[extra]:
            req = Requirement(raw)
            if canonicalize_name(req.name) == "turnout":
                todo.extend(req.extras)
            else:
                out.append(req)
    return out


@pytest.mark.parametrize("lock", sorted(LOCKS))
def test_the_lock_was_made_from_pyproject_as_it_is(lock: str) -> None:
    first = (ROOT / lock).read_text().splitlines()[0]
    assert f"(dependencies {digest()})" in first, (
        f"{lock} was made from other dependencies than pyproject.toml's: run scripts/lock.sh"
    )


@pytest.mark.parametrize(("lock", "extras"), sorted(LOCKS.items()))
def test_every_requirement_is_pinned_to_an_allowed_version_with_a_hash(
    lock: str, extras: tuple[str, ...]
) -> None:
    pins = _pins((ROOT / lock).read_text())
    assert pins and all(hashed for _, hashed in pins.values()), "a pin without a hash"
    environment = {**default_environment(), "extra": ""}
    for req in _requirements(extras):
        if req.marker is not None and not req.marker.evaluate(environment):
            continue
        name = canonicalize_name(req.name)
        assert name in pins, f"{req} is not in {lock}: run scripts/lock.sh"
        version = pins[name][0]
        assert req.specifier.contains(version, prereleases=True), (
            f"{lock} pins {name}=={version}, which {req} does not allow: run scripts/lock.sh"
        )


def test_a_changed_dependency_is_noticed(tmp_path: Path) -> None:
    pyproject = tmp_path / "pyproject.toml"
    original = (ROOT / "pyproject.toml").read_text()
    pyproject.write_text(original)
    before = digest(pyproject)
    pyproject.write_text(original.replace('"pyyaml>=6', '"pyyaml>=6.1', 1))
    assert digest(pyproject) != before
