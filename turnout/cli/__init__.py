"""The ``turnout`` command. Each module here adds one group of commands to `app` (in
`common`): ``gateway`` (serve, demo, chat, config, version), ``models``, ``local``, ``convert``,
``bench``, ``providers``, ``ollama``, and ``keys`` (keys, usage)."""

from __future__ import annotations

import sys

# Command modules register themselves on `app` when imported.
from . import (
    bench as _bench,  # noqa: F401
    convert as _convert,  # noqa: F401
    gateway as _gateway,  # noqa: F401
    keys as _keys,  # noqa: F401
    local as _local,  # noqa: F401
    models as _models,  # noqa: F401
    ollama as _ollama,  # noqa: F401
    providers as _providers,  # noqa: F401
)
from .common import (
    ConfigOption,
    UrlOption,
    app,
    console,
    err_console,
    load,
    progress_bar,
)

__all__ = [
    "ConfigOption",
    "UrlOption",
    "app",
    "console",
    "err_console",
    "load",
    "main",
    "progress_bar",
]


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)
