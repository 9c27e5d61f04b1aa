"""The models directory: which model files are there, and what each one is.

A model is a ``.gguf`` file (the shards of a split GGUF, ``name-00001-of-00003.gguf``, count as
one), a ``.safetensors`` or ``.onnx`` file, or a Hugging Face style folder holding safetensors
shards beside a ``config.json`` (or ONNX files beside a ``genai_config.json``). Its name is its
path relative to the directory without the suffix (``gemma-3-270m-q4_k_m``, ``org/model``).
Hidden files and folders, and unfinished downloads, are not models. Headers are read once per
file version (path, size, modification time) and remembered.

`copy_model` gives a model a second name in the same directory (Ollama's ``/api/copy``): its files
hard-linked under the new name, or copied where the file system cannot link them.
"""

from __future__ import annotations

import os
import re
import shutil
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .formats import FORMATS, Header, HeaderError, read_gguf, read_onnx, read_safetensors

__all__ = ["ModelFile", "copy_model", "describe", "find", "scan"]

_SHARD = re.compile(r"^(?P<stem>.+)-(?P<part>\d{5})-of-(?P<total>\d{5})$")
_PARTIAL = (".partial", ".incomplete", ".part", ".tmp", ".lock")

_cache: dict[tuple[str, int, int], Header] = {}
_cache_lock = threading.Lock()


@dataclass(slots=True)
class ModelFile:
    """One model found on disk."""

    name: str
    path: Path  # the file to load: the model file, the first shard, or the folder
    format: str
    size: int
    files: list[Path] = field(default_factory=list)
    header: Header = field(default_factory=Header)
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        h = self.header
        return {
            "name": self.name,
            "path": str(self.path),
            "format": self.format,
            "size": self.size,
            "architecture": h.architecture,
            "parameters": h.parameters,
            "parameter_label": h.parameter_label,
            "quantization": h.quantization,
            "context_length": h.context_length,
            "files": len(self.files),
            **({"error": self.error} if self.error else {}),
        }


def scan(directory: str | Path) -> list[ModelFile]:
    """Every model under ``directory`` (recursively), sorted by name. A missing directory holds
    no models; a file whose header cannot be read is listed with its ``error``."""
    root = Path(directory).expanduser()
    if not root.is_dir():
        return []
    found: list[ModelFile] = []
    claimed: set[Path] = set()
    files = sorted(p for p in root.rglob("*") if _visible(p, root) and p.is_file())
    # Folders first: a Hugging Face folder claims its shards before they are seen one by one.
    for folder in sorted({p.parent for p in files}):
        model = _folder_model(root, folder)
        if model is not None:
            found.append(model)
            claimed.update(model.files)
    shards: dict[Path, list[Path]] = {}
    for path in files:
        fmt = FORMATS.get(path.suffix.lower())
        if fmt is None or path in claimed:
            continue
        match = _SHARD.match(path.stem) if fmt == "gguf" else None
        if match:
            shards.setdefault(path.with_name(match["stem"] + path.suffix), []).append(path)
            continue
        found.append(_file_model(root, path, fmt, [path]))
    for base, parts in shards.items():
        parts.sort()
        found.append(_file_model(root, base, "gguf", parts))
    return sorted(found, key=lambda m: m.name)


def find(directory: str | Path, name: str) -> ModelFile | None:
    """The model called ``name`` (with or without its file suffix) in ``directory``."""
    wanted = name.removesuffix(Path(name).suffix) if Path(name).suffix in FORMATS else name
    return next((m for m in scan(directory) if m.name == wanted), None)


def copy_model(directory: str | Path, source: str, destination: str) -> ModelFile:
    """Give the model ``source`` of ``directory`` a second name, ``destination`` (a name as
    `scan` makes them, with or without the file suffix): its file, each shard of a split GGUF
    (``dest-00001-of-00003.gguf``...) or its whole folder, hard-linked (the same bytes, no space
    taken) or copied where the file system cannot link. Nothing appears under the new name until
    it is complete. Raises `FileNotFoundError` for an unknown source, `FileExistsError` for a
    name already taken, `ValueError` for a name that is not a plain relative one."""
    root = Path(directory).expanduser()
    model = find(root, source)
    if model is None:
        raise FileNotFoundError(f"no model named {source!r} in the models directory")
    name = _new_name(destination, model.format)
    if find(root, name) is not None:
        raise FileExistsError(f"a model named {name!r} is already in the models directory")
    if model.path.is_dir():
        _place_folder(model.path, root / name)
    else:
        stem = Path(model.name).name  # the file's stem; the shards' without the part number
        for part in model.files:
            tail = part.name[len(stem) :]  # ".gguf", or "-00001-of-00003.gguf"
            _place_file(part, root / (name + tail))
    copied = find(root, name)
    assert copied is not None  # just made
    return copied


def _new_name(destination: str, fmt: str) -> str:
    """``destination`` as a model name of the directory, or `ValueError` saying why not."""
    name = destination.strip()
    suffix = Path(name).suffix.lower()
    if suffix in FORMATS and FORMATS[suffix] == fmt:
        name = name[: -len(suffix)]
    parts = name.split("/")
    bad = (not name or "\\" in name or "\0" in name or name.startswith("/")
           or any(p in ("", ".", "..") or p.startswith(".") for p in parts)
           or name.endswith(_PARTIAL) or _SHARD.match(parts[-1]))  # fmt: skip
    if bad:
        raise ValueError(
            f"{destination!r} is not a model name for the models directory: give a relative "
            "name (folders joined by '/'), no part empty, '..' or starting with '.', and no "
            "shard number (-00001-of-00002)"
        )
    return name


def _place_file(source: Path, target: Path) -> None:
    """``source`` at ``target``: a hard link, else a copy written beside it and renamed."""
    if target.exists():
        raise FileExistsError(f"{target.name} is already in the models directory")
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, target)
        return
    except OSError:  # another file system, or one without hard links
        pass
    partial = target.with_name(target.name + ".partial")  # not a model while it is written
    try:
        shutil.copy2(source, partial)
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)


def _place_folder(source: Path, target: Path) -> None:
    """The folder ``source`` at ``target``: built under a hidden name, then renamed."""
    if target.exists():
        raise FileExistsError(f"{target.name} is already in the models directory")
    target.parent.mkdir(parents=True, exist_ok=True)
    hidden = target.with_name(f".{target.name}.copying")
    shutil.rmtree(hidden, ignore_errors=True)
    try:
        shutil.copytree(source, hidden, copy_function=_link_or_copy)
        hidden.rename(target)
    finally:
        shutil.rmtree(hidden, ignore_errors=True)


def _link_or_copy(source: str, target: str) -> None:
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def describe(path: str | Path) -> ModelFile:
    """One file, wherever it is, described like a directory entry (named by its stem)."""
    path = Path(path).expanduser()
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        allowed = ", ".join(FORMATS)
        raise HeaderError(f"{path.name}: not a model file (allowed suffixes: {allowed})")
    return _file_model(path.parent, path, fmt, [path])


def _visible(path: Path, root: Path) -> bool:
    rel = path.relative_to(root)
    if any(part.startswith(".") for part in rel.parts):
        return False
    return not path.name.endswith(_PARTIAL)


def _name(root: Path, path: Path) -> str:
    rel = path.relative_to(root)
    return (rel.parent / rel.stem).as_posix() if rel.suffix else rel.as_posix()


def _file_model(root: Path, path: Path, fmt: str, parts: list[Path]) -> ModelFile:
    # ``path`` is the file, or for shards the name they share without the part number.
    model = ModelFile(_name(root, path), parts[0], fmt, sum(_size(p) for p in parts), list(parts))
    try:
        model.header = _header(parts[0], lambda: _read(fmt, parts))
    except (HeaderError, OSError) as exc:
        model.error = str(exc)
    return model


def _folder_model(root: Path, folder: Path) -> ModelFile | None:
    if (folder / "config.json").is_file():
        parts = sorted(folder.glob("*.safetensors"))
        fmt = "safetensors"
    elif (folder / "genai_config.json").is_file():
        parts = sorted(folder.glob("*.onnx"))
        fmt = "onnx"
    else:
        return None
    if not parts:
        return None
    name = folder.relative_to(root).as_posix() if folder != root else folder.name
    weights = [p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")]
    model = ModelFile(name, folder, fmt, sum(_size(p) for p in weights), parts)
    try:
        model.header = _header(parts[0], lambda: _read(fmt, parts))
    except (HeaderError, OSError) as exc:
        model.error = str(exc)
    return model


def _read(fmt: str, parts: list[Path]) -> Header:
    if fmt == "gguf":
        return read_gguf(parts[0])
    if fmt == "safetensors":
        return read_safetensors(parts)
    return read_onnx(parts[0])


def _header(path: Path, read: Any) -> Header:
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    with _cache_lock:
        cached = _cache.get(key)
    if cached is not None:
        return cached
    header: Header = read()
    with _cache_lock:
        _cache[key] = header
    return header


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0
