"""Prometheus metrics through prometheus-client, in a registry of the gateway's own.

Counters and histograms are updated by the telemetry drain (never by a request), through label
children made once per backend and model and kept on the series; the counters once per drained
batch, from the statistics' running totals. Live values (health, circuit state, requests in
flight and queued) are read at scrape time by a collector, so nothing updates them on the request
path either.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from .record import OUTCOMES

__all__ = ["CONTENT_TYPE", "Children", "Metrics"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_LATENCY = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
_OVERHEAD = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25)
_CIRCUIT_STATES = ("closed", "half_open", "open")
_LIVE_NAMES = (
    "turnout_backend_up", "turnout_backend_circuit", "turnout_backend_in_flight",
    "turnout_backend_queued",
)  # fmt: skip

#: backend name -> {"up": bool | None, "circuit": {...}, "concurrency": {...}}
Live = Callable[[], Mapping[str, Mapping[str, Any]]]


class Children:
    """The label children of one backend and model."""

    __slots__ = (
        "cost",
        "errors",
        "failure",
        "latency",
        "published",
        "success",
        "tokens_in",
        "tokens_out",
        "ttft",
    )

    def __init__(self, metrics: Metrics, backend: str, model: str) -> None:
        self.success = metrics.backend_requests.labels(backend, model, "success")
        self.failure = metrics.backend_requests.labels(backend, model, "failure")
        self.latency = metrics.latency.labels(backend, model)
        self.ttft = metrics.ttft.labels(backend, model)
        self.tokens_in = metrics.tokens.labels(backend, model, "input")
        self.tokens_out = metrics.tokens.labels(backend, model, "output")
        self.cost = metrics.cost.labels(backend, model)
        self.errors: dict[str, Counter] = {}
        #: successes, failures, tokens in, tokens out and cost the counters show so far
        self.published: tuple[int, int, int, int, float] = (0, 0, 0, 0, 0.0)

    def publish(
        self, successes: int, failures: int, tokens_in: int, tokens_out: int, cost: float
    ) -> None:
        """Bring the counters up to these running totals (the drain's, once per batch)."""
        done = self.published
        for counter, now, before in (
            (self.success, successes, done[0]),
            (self.failure, failures, done[1]),
            (self.tokens_in, tokens_in, done[2]),
            (self.tokens_out, tokens_out, done[3]),
            (self.cost, cost, done[4]),
        ):
            if now > before:
                counter.inc(now - before)
        self.published = (successes, failures, tokens_in, tokens_out, cost)


class Metrics:
    def __init__(self, live: Live | None = None) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "turnout_requests", "Client requests by outcome (" + ", ".join(OUTCOMES) + ").",
            ["outcome"], registry=r,
        )  # fmt: skip
        self.backend_requests = Counter(
            "turnout_backend_requests", "Calls to a backend (retries included), by outcome.",
            ["backend", "model", "outcome"], registry=r,
        )  # fmt: skip
        self.backend_errors = Counter(
            "turnout_backend_errors", "Failed calls to a backend, by error code.",
            ["backend", "model", "code"], registry=r,
        )  # fmt: skip
        self.latency = Histogram(
            "turnout_backend_latency_seconds", "Seconds a successful call took in the backend.",
            ["backend", "model"], buckets=_LATENCY, registry=r,
        )  # fmt: skip
        self.ttft = Histogram(
            "turnout_backend_ttft_seconds", "Seconds from sending a stream to its first chunk.",
            ["backend", "model"], buckets=_LATENCY, registry=r,
        )  # fmt: skip
        self.tokens = Counter(
            "turnout_backend_tokens", "Tokens in and out of successful calls.",
            ["backend", "model", "direction"], registry=r,
        )  # fmt: skip
        self.cost = Counter(
            "turnout_backend_cost", "Cost of successful calls, from the configured prices.",
            ["backend", "model"], registry=r,
        )  # fmt: skip
        self.overhead = Histogram(
            "turnout_overhead_seconds",
            "Seconds turnout itself spent on a request, backends and deliberate waits excluded.",
            buckets=_OVERHEAD, registry=r,
        )  # fmt: skip
        self.dropped = Counter(
            "turnout_telemetry_dropped", "Request records dropped because the queue was full.",
            registry=r,
        )  # fmt: skip
        self._outcomes = {o: self.requests.labels(o) for o in OUTCOMES}
        self._published_outcomes = dict.fromkeys(self._outcomes, 0)
        if live is not None:
            r.register(_LiveCollector(live))

    def publish_outcomes(self, totals: Mapping[str, int]) -> None:
        """Bring the request counters up to these running totals (once per drained batch)."""
        published = self._published_outcomes
        for name, total in totals.items():
            if total > published[name]:
                self._outcomes[name].inc(total - published[name])
                published[name] = total

    def children(self, backend: str, model: str) -> Children:
        return Children(self, backend, model)

    def error(self, children: Children, backend: str, model: str, code: str) -> Counter:
        counter = children.errors.get(code)
        if counter is None:
            counter = children.errors[code] = self.backend_errors.labels(backend, model, code)
        return counter

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def render_workers(self, live: Mapping[str, Mapping[str, Any]]) -> bytes:
        """Every worker's counters and histograms (prometheus-client's multiprocess mode: each
        process writes its values to files under ``PROMETHEUS_MULTIPROC_DIR``, which the parent
        of ``turnout serve --workers N`` sets) and ``live``, the backends' live state added up
        across workers (turnout/telemetry/workers.py)."""
        if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):  # one process after all
            registry = CollectorRegistry()
            registry.register(_Registered(self.registry))
        else:
            from prometheus_client.multiprocess import MultiProcessCollector

            registry = CollectorRegistry()
            MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        registry.register(_LiveCollector(lambda: live))
        return generate_latest(registry)


class _Registered(Collector):
    """The metrics of a registry but its live gauges (replaced by the workers' sum)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._registry = registry

    def collect(self) -> Iterator[Metric]:
        for metric in self._registry.collect():
            if not metric.name.startswith(_LIVE_NAMES):
                yield metric


class _LiveCollector(Collector):
    def __init__(self, live: Live) -> None:
        self._live = live

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily(
            "turnout_backend_up",
            "1 if the last health probe reached the backend.",
            labels=["backend"],
        )
        state = GaugeMetricFamily(
            "turnout_backend_circuit_state", "1 for the circuit's current state.",
            labels=["backend", "state"],
        )  # fmt: skip
        opens = CounterMetricFamily(
            "turnout_backend_circuit_opens",
            "Times the backend's circuit opened.",
            labels=["backend"],
        )
        in_flight = GaugeMetricFamily(
            "turnout_backend_in_flight", "Requests the backend is serving.", labels=["backend"]
        )
        queued = GaugeMetricFamily(
            "turnout_backend_queued", "Requests waiting for a slot.", labels=["backend"]
        )
        for name, live in self._live().items():
            health = live.get("health")
            if health is not None:
                up.add_metric([name], 1.0 if health["ok"] else 0.0)
            circuit = live["circuit"]
            for value in _CIRCUIT_STATES:
                state.add_metric([name, value], 1.0 if circuit["state"] == value else 0.0)
            opens.add_metric([name], float(circuit["opens"]))
            concurrency = live["concurrency"]
            in_flight.add_metric([name], float(concurrency["in_flight"]))
            queued.add_metric([name], float(concurrency["queued"]))
        yield from (up, state, opens, in_flight, queued)
