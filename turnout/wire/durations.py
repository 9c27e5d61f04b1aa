"""``keep_alive`` values as Ollama takes them: seconds, or a Go duration such as ``"5m"``.

A negative value keeps a model loaded for good, ``0`` unloads it right after its request
(Ollama's FAQ). Go's ``time.ParseDuration`` units are accepted: ns, us, µs, ms, s, m, h.
"""

from __future__ import annotations

import math
import re

__all__ = ["FOREVER", "parse_keep_alive"]

#: what `parse_keep_alive` returns for "keep loaded for good"
FOREVER = math.inf

_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")


def parse_keep_alive(value: object) -> float:
    """Seconds to keep a model loaded after its last request; `FOREVER` for a negative value.
    Raises ValueError naming what is allowed."""
    if isinstance(value, bool) or value is None:
        raise ValueError(_allowed(value))
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        seconds = _parse(value.strip())
    else:
        raise ValueError(_allowed(value))
    if math.isnan(seconds):
        raise ValueError(_allowed(value))
    return FOREVER if seconds < 0 else seconds


def _parse(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        pass
    sign = -1.0 if text.startswith("-") else 1.0
    body = text.lstrip("+-")
    total, pos = 0.0, 0
    for match in _PART.finditer(body):
        if match.start() != pos:
            break
        total += float(match[1]) * _UNITS[match[2]]
        pos = match.end()
    if not body or pos != len(body):
        raise ValueError(_allowed(text))
    return sign * total


def _allowed(value: object) -> str:
    return (
        f"invalid keep_alive {value!r}: give seconds (a number) or a duration such as "
        "'30s', '5m', '1h30m'; a negative value keeps the model loaded, 0 unloads it at once"
    )
