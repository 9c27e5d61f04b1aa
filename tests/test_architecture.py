"""The structure of ``turnout/``, kept honest (issue 10, review-2026-12 §1 and §5).

Four rules, each checked over the AST of every module (read, never imported):

1. **Names.** A runtime or vendor name (``vllm``, ``ollama``, ``anthropic``, ``gemini``, …) appears
   in code (identifiers and string literals; comments and docstrings are free) only inside
   ``turnout/providers/``. The names come from the presets and dialect registry
   (``turnout/providers/presets.py``) plus `VENDORS`. Two words are dialects rather than
   runtimes where they are the wire format a client speaks: ``openai`` is the lingua franca of
   the whole gateway (the core API takes and returns OpenAI shapes), and the front dialects
   (`FRONT_DIALECTS`) may name the modules of ``turnout/wire/`` and ``turnout/server/fronts/``.
   Everything else outside providers/ is an entry of `ALLOWED`, with the reason.
2. **Layers.** `LAYERS` maps every module to a layer; no import (top level, inside a function or
   under ``TYPE_CHECKING``) runs to a higher layer, and no import circle joins modules.
3. **Module size.** No module over `MAX_MODULE_LINES` lines.
4. **Request-path functions.** No function over `MAX_FUNCTION_LINES` lines in `REQUEST_PATH`.

The checkers are plain functions over ``{relative path: source}``, so the tests at the end feed
them planted violations and prove each rule can fail. A failure lists ``file:line: rule: what``.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "turnout"

Sources = dict[str, str]  # path relative to the repository root ("turnout/x.py") -> source

# --------------------------------------------------------------------------------------------
# The rules, as data.

#: vendors and runtimes that are not (or not only) keys of the presets/dialect registry.
#: ``llama`` alone is not one: it is Meta's model family (``llama3.2:latest`` is a model name),
#: and gguf's ``LlamaFileType`` is a file format; ``llama.cpp`` and its servers are (llamacpp,
#: llamacpppython, llamaserver).
VENDORS = frozenset(
    {
        "anthropic", "claude", "gemini", "google", "vertex", "mistral", "cohere", "groq",
        "openrouter", "koboldcpp", "llamaserver", "lmstudio", "tabby",
        "exllama", "sglang", "ollama", "vllm", "localai", "jan", "gpt4all", "fastchat",
        "mistralrs", "textgen", "mlx", "kobold",
    }
)  # fmt: skip
#: dialect words that are not runtime names: ``embedded`` is turnout's own in-process backend
#: (its `turnout models` commands and the local model admin are about it), ``openai`` the
#: lingua franca every layer speaks (Gateway.complete takes an OpenAI body, errors render
#: `to_openai`). ``openai-cloud``, OpenAI the vendor, stays a runtime name.
LINGUA_FRANCA = frozenset({"openai", "embedded"})
#: the wire formats clients speak to turnout's fronts: a front (and its wire module) is named
#: after the dialect it speaks, e.g. turnout/server/fronts/anthropic.py
FRONT_DIALECTS = frozenset({"openai", "anthropic", "ollama"})
FRONT_PLACES = ("turnout/wire/", "turnout/server/fronts/")
PROVIDERS = "turnout/providers/"


@dataclass(frozen=True)
class Allowed:
    """A runtime name that may appear in one file outside providers/, and why."""

    path: str
    name: str  # normalised: lower case, letters and digits only
    why: str


ALLOWED: tuple[Allowed, ...] = (
    # `turnout ollama ...`: the CLI command group that manages an Ollama server's models, and
    # the line of cli/__init__.py that registers it
    Allowed("turnout/cli/ollama.py", "ollama", "CLI command name `turnout ollama`"),
    Allowed("turnout/cli/__init__.py", "ollama", "registers the `turnout ollama` commands"),
    # `turnout hardware` tells the user whether llama.cpp can offload to their GPU
    Allowed("turnout/cli/local.py", "llamacpp", "user-facing text: llama.cpp GPU offload"),
    # offline file tools that use the llama.cpp library itself (not a runtime being served):
    # GGUF quantisation, and the probe of whether the installed build can offload to a GPU
    Allowed("turnout/models/quantize.py", "llamacpp", "quantises with llama_cpp's library"),
    Allowed("turnout/models/hardware.py", "llamacpp", "asks llama_cpp for GPU offload"),
)

#: (layer, module or package prefix); a module is in the layer of its longest matching prefix
LAYERS: tuple[tuple[int, str], ...] = (
    (0, "turnout.wire"),
    (0, "turnout.errors"),
    (0, "turnout.tasks"),
    (1, "turnout.config"),
    (2, "turnout.models"),
    (2, "turnout.access"),  # gateway keys, limits, budgets, sans I/O
    (3, "turnout.providers"),
    (4, "turnout.telemetry"),
    (4, "turnout.routing"),
    (4, "turnout.store"),  # keys and the usage ledger in SQLite/PostgreSQL, limits in Redis
    (5, "turnout.gateway"),
    (5, "turnout.discovery"),  # while it is a top-level module; under providers/ it is layer 3
    (6, "turnout.server"),
    (7, "turnout.cli"),
)
#: the top, exactly these modules: the public face (re-exports from below) and ``python -m``
TOP = {"turnout": 8, "turnout.__main__": 8}
#: names a module may import from the top package: the version is a constant, defined before
#: turnout/__init__.py imports anything, not a dependency on what the package re-exports
FROM_TOP = {"__version__"}
#: packages that must not import these, whatever the layer map says (the review's first finding)
FORBIDDEN = {"turnout.models": ("turnout.providers", "turnout.server")}

MAX_MODULE_LINES = 600
MAX_FUNCTION_LINES = 60
#: the files and folders a request passes through; every function there is held to the budget
REQUEST_PATH = (
    "turnout/gateway.py",
    "turnout/routing/",
    "turnout/server/",
    "turnout/wire/",
    "turnout/providers/http.py",
)


@dataclass(frozen=True, order=True)
class Violation:
    path: str
    line: int
    rule: str
    what: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.rule}: {self.what}"


def report(violations: Iterable[Violation]) -> str:
    found = sorted(set(violations))
    return f"{len(found)} violation(s):\n" + "\n".join(f"  {v}" for v in found)


def load(root: Path = ROOT) -> Sources:
    return {
        path.relative_to(root).as_posix(): path.read_text(encoding="utf-8")
        for path in sorted((root / PACKAGE).rglob("*.py"))
    }


def module_name(path: str) -> str:
    parts = path.removesuffix(".py").split("/")
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


# --------------------------------------------------------------------------------------------
# 1. Names.

_WORD = re.compile(r"[A-Z]+(?=[A-Z][a-z])|[A-Z]?[a-z]+|[A-Z]+|[0-9]+")


def runtime_names() -> frozenset[str]:
    """Every runtime and vendor name, normalised: the presets, the dialects and `VENDORS`."""
    from turnout.providers.presets import DIALECTS, PRESETS

    return frozenset(normalise(n) for n in (*PRESETS, *DIALECTS, *VENDORS)) - LINGUA_FRANCA


def normalise(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def names_in(text: str, names: frozenset[str]) -> set[str]:
    """The names that ``text`` spells as whole words or runs of words: ``OllamaProvider``,
    ``llama-cpp-python``, ``"LM Studio"``, ``GPT4All``, ``vLLM`` and ``koboldcpp`` all count;
    ``january`` does not count as ``jan``."""
    words = [w.lower() for w in _WORD.findall(text)]
    spans = []
    for i in range(len(words)):
        joined = ""
        for j, word in enumerate(words[i : i + 4], i + 1):
            joined += word
            if joined in names:
                spans.append((i, j, joined))
    # the longest spelling only: "llama-cpp-python" is llamacpppython, not also llamacpp
    return {
        name
        for i, j, name in spans
        if not any(a <= i and j <= b and (a, b) != (i, j) for a, b, _ in spans)
    }


def _docstrings(tree: ast.AST) -> set[int]:
    """ids of the string constants that are docstrings or bare string statements (prose)."""
    return {
        id(node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Expr)
        and isinstance(node.value, ast.Constant)
        and isinstance(node.value.value, str)
    }


def _spellings(tree: ast.AST) -> Iterator[tuple[int, str, str]]:
    """(line, kind, text) of every identifier and string literal in ``tree``, prose excepted."""
    prose = _docstrings(tree)
    for node in ast.walk(tree):
        line = getattr(node, "lineno", 0)
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            if id(node) not in prose:
                yield line, "string", node.value
        elif isinstance(node, ast.Name):
            yield line, "identifier", node.id
        elif isinstance(node, ast.Attribute):
            yield line, "identifier", node.attr
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            yield line, "identifier", node.name
        elif isinstance(node, ast.arg | ast.keyword) and node.arg:
            yield line, "identifier", node.arg
        elif isinstance(node, ast.ImportFrom) and node.module:
            yield line, "import", node.module
        elif isinstance(node, ast.alias):
            yield line, "import", node.asname or node.name


def name_allowed(path: str, name: str) -> bool:
    if path.startswith(PROVIDERS):
        return True
    if name in FRONT_DIALECTS and path.startswith(FRONT_PLACES):
        return True
    return any(a.path == path and a.name == name for a in ALLOWED)


def check_names(sources: Sources, names: frozenset[str]) -> list[Violation]:
    found = []
    for path, source in sources.items():
        if path.startswith(PROVIDERS):
            continue
        for line, kind, text in _spellings(ast.parse(source, path)):
            for name in sorted(names_in(text, names)):
                if not name_allowed(path, name):
                    found.append(
                        Violation(
                            path,
                            line,
                            "runtime name outside turnout/providers/",
                            f"{name!r} in {kind} {text[:60]!r}",
                        )
                    )
    return found


# --------------------------------------------------------------------------------------------
# 2. Layers and circles.


def layer_of(module: str) -> int | None:
    if module in TOP:
        return TOP[module]
    for layer, prefix in sorted(LAYERS, key=lambda lp: -len(lp[1])):
        if module == prefix or module.startswith(prefix + "."):
            return layer
    return None


@dataclass(frozen=True)
class Import:
    path: str
    line: int
    source: str  # importing module
    target: str  # imported module (a turnout module or package)


def _resolve(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".")
    base = base[: len(base) - node.level + (1 if is_package else 0)]
    return ".".join([*base, *([node.module] if node.module else [])])


def imports(sources: Sources) -> list[Import]:
    """Every import of a turnout module, wherever it stands (module level, in a function,
    under ``TYPE_CHECKING``), and every ``import_module("turnout.…")`` with a literal name."""
    modules = {module_name(p) for p in sources}
    found = []
    for path, source in sources.items():
        me = module_name(path)
        for node in ast.walk(ast.parse(source, path)):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = _resolve(me, path.endswith("__init__.py"), node)
                for alias in node.names:  # `from pkg import module` imports the module
                    if base == PACKAGE and alias.name in FROM_TOP:
                        continue
                    sub = f"{base}.{alias.name}"
                    targets.append(sub if sub in modules else base)
            elif (
                isinstance(node, ast.Call)
                and getattr(node.func, "attr", getattr(node.func, "id", "")) == "import_module"
                and node.args
                and isinstance(node.args[0], ast.Constant)
                and isinstance(node.args[0].value, str)
            ):
                targets = [node.args[0].value]
            for target in targets:
                while target and target not in modules and "." in target:
                    target = target.rpartition(".")[0]  # `import turnout.x.y`: the module x.y
                if target in modules and target != me:
                    found.append(Import(path, getattr(node, "lineno", 0), me, target))
    return found


def check_layers(sources: Sources) -> list[Violation]:
    found = []
    for path in sources:
        if layer_of(module_name(path)) is None:
            found.append(Violation(path, 1, "layer map", "module in no layer: add it to LAYERS"))
    for imp in imports(sources):
        mine, theirs = layer_of(imp.source), layer_of(imp.target)
        if mine is not None and theirs is not None and theirs > mine:
            found.append(
                Violation(
                    imp.path,
                    imp.line,
                    "import runs back up",
                    f"{imp.source} (layer {mine}) imports {imp.target} (layer {theirs})",
                )
            )
        for package, banned in FORBIDDEN.items():
            inside = imp.source == package or imp.source.startswith(package + ".")
            if inside and imp.target.startswith(banned):
                found.append(
                    Violation(
                        imp.path,
                        imp.line,
                        f"{package} imports nothing from {' or '.join(banned)}",
                        f"{imp.source} imports {imp.target}",
                    )
                )
    return found


def circles(edges: Iterable[tuple[str, str]]) -> list[list[str]]:
    """The groups of two or more modules that reach each other through imports. A module graph
    has about a hundred nodes: reachability from each one is plenty fast."""
    graph: dict[str, set[str]] = {}
    for a, b in edges:
        graph.setdefault(a, set()).add(b)
        graph.setdefault(b, set())

    def reach(start: str) -> set[str]:
        seen, todo = set(), [start]
        while todo:
            for nxt in graph[todo.pop()] - seen:
                seen.add(nxt)
                todo.append(nxt)
        return seen

    reaches = {node: reach(node) for node in graph}
    groups = {
        tuple(sorted({node} | {other for other in reaches[node] if node in reaches[other]}))
        for node in graph
        if node in reaches[node]
    }
    return sorted(list(group) for group in groups if len(group) > 1)


def check_circles(sources: Sources) -> list[Violation]:
    edges = imports(sources)
    found = []
    for circle in circles((e.source, e.target) for e in edges):
        members = set(circle)
        inside = sorted(
            {e for e in edges if e.source in members and e.target in members},
            key=lambda e: (e.path, e.line, e.target),
        )
        where = ", ".join(f"{e.path}:{e.line} -> {e.target}" for e in inside)
        first = inside[0]
        found.append(
            Violation(first.path, first.line, "import circle", f"{' <-> '.join(circle)}: {where}")
        )
    return found


# --------------------------------------------------------------------------------------------
# 3 and 4. Sizes.


def check_module_sizes(sources: Sources, limit: int = MAX_MODULE_LINES) -> list[Violation]:
    return [
        Violation(path, limit + 1, f"module over {limit} lines", f"{lines} lines")
        for path, source in sources.items()
        if (lines := len(source.splitlines())) > limit
    ]


def on_request_path(path: str) -> bool:
    return any(path == p or (p.endswith("/") and path.startswith(p)) for p in REQUEST_PATH)


def check_function_sizes(sources: Sources, limit: int = MAX_FUNCTION_LINES) -> list[Violation]:
    found = []
    for path, source in sources.items():
        if not on_request_path(path):
            continue
        for node in ast.walk(ast.parse(source, path)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = (node.end_lineno or node.lineno) - node.lineno + 1
                if lines > limit:
                    found.append(
                        Violation(
                            path,
                            node.lineno,
                            f"request-path function over {limit} lines",
                            f"{node.name} is {lines} lines",
                        )
                    )
    return found


# --------------------------------------------------------------------------------------------
# The rules on turnout/.

SOURCES = load()


def test_no_runtime_name_outside_providers() -> None:
    found = check_names(SOURCES, runtime_names())
    assert not found, report(found)


def test_imports_only_run_down_the_layers() -> None:
    found = check_layers(SOURCES)
    assert not found, report(found)


def test_no_import_circle() -> None:
    found = check_circles(SOURCES)
    assert not found, report(found)


def test_no_module_over_the_line_budget() -> None:
    found = check_module_sizes(SOURCES)
    assert not found, report(found)


def test_no_long_function_on_the_request_path() -> None:
    found = check_function_sizes(SOURCES)
    assert not found, report(found)


def test_the_rules_see_the_real_tree() -> None:
    """Guards the guards: the tree is read, the request path and allow-list name real files,
    and the names come from the registry (a renamed file would otherwise pass silently)."""
    assert len(SOURCES) > 50 and "turnout/gateway.py" in SOURCES
    for place in REQUEST_PATH:
        assert any(p == place or p.startswith(place) for p in SOURCES), place
    for allowed in ALLOWED:
        assert allowed.path in SOURCES, allowed
    names = runtime_names()
    assert {"vllm", "llamacpp", "llamacpppython", "ollama", "anthropic", "gemini"} <= names
    assert "openai" not in names and "openaicloud" in names
    assert len(imports(SOURCES)) > 100


# --------------------------------------------------------------------------------------------
# The checkers can fail: planted violations.

NAMES = frozenset({"vllm", "ollama", "anthropic", "llamacpp", "llamacpppython", "lmstudio", "jan"})


def test_names_planted_are_reported_with_file_and_line() -> None:
    source = (
        '"""Docstrings may say vllm and ollama."""\n'
        "# comments too: anthropic\n"
        "def pick(kind: str) -> str:\n"
        '    """So may this one: llama.cpp."""\n'
        '    if kind == "vllm":\n'
        "        return OllamaProvider.name\n"
        '    return f"{kind} on LM Studio"\n'
        "llama_cpp_python = january = 1\n"
    )
    found = check_names({"turnout/server/x.py": source}, NAMES)
    assert sorted((v.line, v.what.split()[0]) for v in found) == [
        (5, "'vllm'"),
        (6, "'ollama'"),
        (7, "'lmstudio'"),
        (8, "'llamacpppython'"),  # the longest spelling only
    ], report(found)
    assert str(min(found)).startswith("turnout/server/x.py:5: runtime name outside")


def test_names_allowed_in_providers_fronts_and_the_allow_list() -> None:
    planted = 'x = "ollama"\n'
    assert not check_names({"turnout/providers/ollama.py": planted}, NAMES)
    assert not check_names({"turnout/server/fronts/ollama.py": planted}, NAMES)
    assert not check_names({"turnout/wire/ollama.py": planted}, NAMES)
    assert not check_names({"turnout/cli/ollama.py": planted}, NAMES)
    # a front may be named after its client dialect, never after a runtime
    assert check_names({"turnout/server/fronts/vllm.py": 'x = "vllm"\n'}, NAMES)
    assert check_names({"turnout/cli/models.py": planted}, NAMES)


def test_layers_planted_upward_imports_are_reported() -> None:
    sources = {
        "turnout/__init__.py": "",
        "turnout/wire/__init__.py": "",
        "turnout/wire/types.py": "from turnout.errors import E\n",
        "turnout/errors.py": "",
        "turnout/models/__init__.py": "",
        "turnout/models/formats.py": (
            "from typing import TYPE_CHECKING\n"
            "if TYPE_CHECKING:\n"
            "    from ..providers import base\n"
            "def f():\n"
            "    import turnout.server.app\n"
        ),
        "turnout/providers/__init__.py": "",
        "turnout/providers/base.py": "from ..wire.types import X\n",
        "turnout/server/__init__.py": "",
        "turnout/server/app.py": "from turnout import __version__, gateway\n",
        "turnout/cli/__init__.py": "from .. import __version__\nfrom turnout import Gateway\n",
        "turnout/gateway.py": "",
        "turnout/newthing.py": "",
    }
    found = {(v.path, v.line, v.rule) for v in check_layers(sources)}
    up = "import runs back up"
    assert found == {
        ("turnout/models/formats.py", 3, up),
        (
            "turnout/models/formats.py",
            3,
            "turnout.models imports nothing from turnout.providers or turnout.server",
        ),
        ("turnout/models/formats.py", 5, up),
        (
            "turnout/models/formats.py",
            5,
            "turnout.models imports nothing from turnout.providers or turnout.server",
        ),
        ("turnout/newthing.py", 1, "layer map"),
        ("turnout/cli/__init__.py", 2, up),  # the package's re-exports are above the CLI
    }, found


def test_circles_planted_are_reported() -> None:
    sources = {
        "turnout/gateway.py": "from turnout import discovery\n",
        "turnout/discovery.py": (
            "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .gateway import G\n"
        ),
        "turnout/wire/__init__.py": "",
        "turnout/wire/a.py": "from . import b\n",
        "turnout/wire/b.py": "def f():\n    from .c import x\n",
        "turnout/wire/c.py": "import turnout.wire.a\n",
    }
    found = check_circles(sources)
    assert [v.what.split(":")[0] for v in found] == [
        "turnout.discovery <-> turnout.gateway",
        "turnout.wire.a <-> turnout.wire.b <-> turnout.wire.c",
    ], report(found)
    assert circles([("a", "b"), ("b", "c")]) == []


def test_sizes_planted_are_reported() -> None:
    long_function = "def f():\n" + "    x = 1\n" * 60  # 61 lines
    assert check_function_sizes({"turnout/routing/x.py": long_function})
    assert not check_function_sizes({"turnout/routing/x.py": "def f():\n" + "    x = 1\n" * 59})
    assert not check_function_sizes({"turnout/cli/x.py": long_function})  # off the request path
    [violation] = check_function_sizes({"turnout/wire/x.py": "\n\n" + long_function})
    assert str(violation) == (
        "turnout/wire/x.py:3: request-path function over 60 lines: f is 61 lines"
    )
    assert check_module_sizes({"turnout/x.py": "x = 1\n" * 601})
    assert not check_module_sizes({"turnout/x.py": "x = 1\n" * 600})
