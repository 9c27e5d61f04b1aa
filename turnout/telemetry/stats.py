"""Statistics per backend and model, in bounded memory: counters, and latency percentiles over a
fixed window of the most recent samples.

Fed by the telemetry drain, never by a request. Memory is bounded twice: each series keeps at most
`WINDOW` samples per measure (in a ring of C doubles), and at most `MAX_SERIES` series exist;
model names beyond that (a client inventing names for a passthrough provider) are counted
together under `OTHER`.
"""

from __future__ import annotations

from array import array

__all__ = ["MAX_SERIES", "OTHER", "WINDOW", "Series", "Window"]

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
        if not self._n:
            return None
        ordered = sorted(self._ring[: self._n])
        rank = max(1, -(-q * self._n // 100))  # ceil(q / 100 * n), at least the first
        return ordered[int(rank) - 1]

    def summary_ms(self) -> dict[str, float | int | None]:
        """Average (all time), p50 and p95 (of the window) in milliseconds."""
        if not self.count:
            return {"avg": None, "p50": None, "p95": None, "samples": 0}
        p50, p95 = self.percentile(50), self.percentile(95)
        return {
            "avg": round(self.total / self.count * 1000, 3),
            "p50": None if p50 is None else round(p50 * 1000, 3),
            "p95": None if p95 is None else round(p95 * 1000, 3),
            "samples": self.count,
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
        return {
            "requests": self.requests,
            "successes": self.successes,
            "failures": self.failures,
            "cancelled": self.cancelled,
            "errors": dict(sorted(self.errors.items())),
            "latency_ms": self.latency.summary_ms(),
            "ttft_ms": self.ttft.summary_ms(),
            "tokens_in": self.tokens_in,
            "tokens_out": self.tokens_out,
            "tokens_estimated": self.tokens_estimated,
            "cost": round(self.cost, 6),
        }
