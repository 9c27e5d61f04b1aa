"""Statistics per backend and model, in bounded memory: counters, and latency percentiles over a
fixed window of the most recent samples.

Fed by the telemetry drain, never by a request. Memory is bounded twice: each series keeps at most
`WINDOW` samples per measure (in a ring of C doubles), and at most `MAX_SERIES` series exist;
model names beyond that (a client inventing names for a passthrough provider) are counted
together under `OTHER`.
"""

from __future__ import annotations

from array import array
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["MAX_SERIES", "OTHER", "WINDOW", "Series", "Window", "series_json", "summary_ms"]

WINDOW = 1024
MAX_SERIES = 512
OTHER = "(other)"


class Window:
    """The last `WINDOW` samples of one measure, plus an all-time count and sum."""

    __slots__ = ("_i", "_n", "_ring", "count", "total")

    def __init__(self, size: int = WINDOW) -> None:
        self._ring = array("d", bytes(8 * size))
        self._i = 0
        self._n = 0
        self.count = 0
        self.total = 0.0

    def add(self, value: float) -> None:
        self._ring[self._i] = value
        self._i = (self._i + 1) % len(self._ring)
        self._n = min(self._n + 1, len(self._ring))
        self.count += 1
        self.total += value

    def percentile(self, q: float) -> float | None:
        """Nearest-rank percentile of the window (q in 0..100)."""
        return _percentile(sorted(self._ring[: self._n]), q)

    def summary_ms(self) -> dict[str, float | int | None]:
        """Average (all time), p50 and p95 (of the window) in milliseconds."""
        return summary_ms(self.state())

    def state(self) -> dict[str, Any]:
        """The count, the sum and the window's samples, as JSON (what workers share)."""
        return {"count": self.count, "total": self.total, "samples": self._ring[: self._n].tolist()}


def _percentile(ordered: Sequence[float], q: float) -> float | None:
    if not ordered:
        return None
    rank = max(1, -(-q * len(ordered) // 100))  # ceil(q / 100 * n), at least the first
    return ordered[int(rank) - 1]


def summary_ms(state: Mapping[str, Any]) -> dict[str, float | int | None]:
    """Average (all time), p50 and p95 (of the samples) in milliseconds, of a `Window.state`
    (or of several merged: counts and sums added, samples put together)."""
    count = state["count"]
    if not count:
        return {"avg": None, "p50": None, "p95": None, "samples": 0}
    ordered = sorted(state["samples"])
    p50, p95 = _percentile(ordered, 50), _percentile(ordered, 95)
    return {
        "avg": round(state["total"] / count * 1000, 3),
        "p50": None if p50 is None else round(p50 * 1000, 3),
        "p95": None if p95 is None else round(p95 * 1000, 3),
        "samples": count,
    }


class Series:
    """One backend and model: what `GetStats` reports per vendor, plus errors by code."""

    __slots__ = (
        "cancelled",
        "children",
        "cost",
        "errors",
        "failures",
        "latency",
        "requests",
        "successes",
        "tokens_estimated",
        "tokens_in",
        "tokens_out",
        "ttft",
    )

    def __init__(self) -> None:
        self.requests = 0
        self.successes = 0
        self.failures = 0
        self.cancelled = 0  # calls ended because the client left: neither success nor failure
        self.errors: dict[str, int] = {}
        self.latency = Window()
        self.ttft = Window()
        self.tokens_in = 0
        self.tokens_out = 0
        self.tokens_estimated = 0  # requests whose token counts are estimates
        self.cost = 0.0
        self.children: object = None  # the Prometheus children of this series, made once

    def to_json(self) -> dict[str, object]:
        return series_json(self.state())

    def state(self) -> dict[str, Any]:
        """Counters and windows as JSON: what `series_json` renders, and what workers share
        (turnout/telemetry/workers.py adds up several)."""
        return {
            "requests": self.requests,
            "successes": self.successes,
            "failures": self.failures,
            "cancelled": self.cancelled,
            "errors": dict(self.errors),
            "latency": self.latency.state(),
            "ttft": self.ttft.state(),
            "tokens_in": self.tokens_in,
            "tokens_out": self.tokens_out,
            "tokens_estimated": self.tokens_estimated,
            "cost": self.cost,
        }


def series_json(state: Mapping[str, Any]) -> dict[str, object]:
    """One backend and model as ``/stats`` shows it, from `Series.state` (or several merged)."""
    return {
        "requests": state["requests"],
        "successes": state["successes"],
        "failures": state["failures"],
        "cancelled": state["cancelled"],
        "errors": dict(sorted(state["errors"].items())),
        "latency_ms": summary_ms(state["latency"]),
        "ttft_ms": summary_ms(state["ttft"]),
        "tokens_in": state["tokens_in"],
        "tokens_out": state["tokens_out"],
        "tokens_estimated": state["tokens_estimated"],
        "cost": round(state["cost"], 6),
    }
