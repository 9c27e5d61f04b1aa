"""Telemetry: each request's record, emitted once after its response, aggregated off the hot path.

Every request gives one record whatever its fate (turnout/telemetry/record.py: its outcome and
reason); ``/stats`` counts them under ``requests``, per outcome and per reason. A request appends
its `Trace` to a bounded list (O(1); when full, the record is dropped and
counted, never queued without bound). A background task drains the list every ``interval``
seconds into per-backend-and-model statistics and Prometheus metrics; ``/stats``, ``/metrics``
and `Gateway.stats()` drain it first, so what they show includes every finished request.

Sinks (`Telemetry.add_sink`) receive each drained batch after the statistics have filled in its
token counts (estimated where the backend gave none) and costs: the OpenTelemetry exporter
(telemetry/otel.py) is one, so spans are built and sent off the request path; the usage ledger
(turnout/store/ledger.py) another. With a sink attached a full list is drained at once instead of
dropping a record: a ledger row is owed for every request.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from .. import tasks
from ..wire.types import JSON, Kind
from .metrics import CONTENT_TYPE, Live, Metrics
from .record import CURRENT, OUTCOMES, Trace
from .stats import MAX_SERIES, OTHER, Series, Window, series_json, summary_ms
from .workers import WorkerFiles, merge

__all__ = ["CONTENT_TYPE", "CURRENT", "Sink", "Telemetry", "Trace"]

State = dict[str, Any]

#: receives every drained batch of finished requests; must not block (queue, then return)
Sink = Callable[[Sequence[Trace]], None]

log = logging.getLogger("turnout.telemetry")


class Telemetry:
    def __init__(
        self,
        *,
        live: Live | None = None,
        prompt_text: Callable[[Kind, JSON], str] | None = None,
        capacity: int = 4096,
        interval: float = 0.5,
    ) -> None:
        self.metrics = Metrics(live)
        self.capacity = capacity
        self.interval = interval
        self.dropped = 0
        self._dropped_counted = 0
        self.overhead = Window()
        self.outcomes = dict.fromkeys(OUTCOMES, 0)
        #: outcome -> reason -> requests, for every outcome but "ok"
        self.reasons: dict[str, dict[str, int]] = {}
        self.started = time.time()
        self._live = live
        self._prompt_text = prompt_text
        self._pending: list[Trace] = []
        self._series: dict[tuple[str, str], Series] = {}
        self._task: asyncio.Task[None] | None = None
        self._sinks: list[Sink] = []
        self._shared: WorkerFiles | None = None

    def share(self, folder: str | Path) -> None:
        """Serve as one of several worker processes: write this worker's state to ``folder`` at
        every drain, and answer `stats` and `render_metrics` for all of them
        (turnout/telemetry/workers.py)."""
        self._shared = WorkerFiles(folder)

    def add_sink(self, sink: Sink) -> None:
        self._sinks.append(sink)

    def emit(self, trace: Trace) -> None:
        """Hand over a finished request, once; O(1), no await."""
        if trace.emitted:
            return
        trace.emitted = True
        trace.t_end = now = time.perf_counter()
        trace.latency_s = now - trace.t_start
        if len(self._pending) < self.capacity:
            self._pending.append(trace)
        elif self._sinks:
            self.flush()
            self._pending.append(trace)
        else:
            self.dropped += 1

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._drain(), name="turnout-telemetry")

    async def close(self) -> None:
        await tasks.stop(self._task)
        self._task = None
        self.flush()
        self._publish()  # a worker's last counts stay in the others' totals

    async def _drain(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                self.flush()
                self._publish()
            except Exception:  # statistics must never take the gateway down
                log.exception("telemetry drain failed")

    def _publish(self) -> State | None:
        """Write this worker's state for the others (when sharing); the state written."""
        if self._shared is None:
            return None
        state = self._state()
        self._shared.write(state)
        return state

    def flush(self) -> None:
        batch, self._pending = self._pending, []
        if batch:
            touched: set[Series] = set()
            for trace in batch:
                self._add(trace, touched)
            # The Prometheus counters follow the statistics' totals once per batch rather than
            # once per request: each `inc` takes a lock, and a busy drain holds thousands.
            self.metrics.publish_outcomes(self.outcomes)
            for series in touched:
                children: Any = series.children
                children.publish(
                    series.successes, series.failures, series.tokens_in, series.tokens_out,
                    series.cost,
                )  # fmt: skip
        if self.dropped > self._dropped_counted:
            self.metrics.dropped.inc(self.dropped - self._dropped_counted)
            self._dropped_counted = self.dropped
        if batch:
            for sink in self._sinks:
                try:
                    sink(batch)
                except Exception:  # one failing sink must not stop the others
                    log.exception("telemetry sink failed")

    def _series_for(self, backend: str, model: str) -> Series:
        key = (backend, model)
        series = self._series.get(key)
        if series is None:
            if len(self._series) >= MAX_SERIES:
                key = (backend, OTHER)
                series = self._series.get(key)
            if series is None:
                series = self._series[key] = Series()
                series.children = self.metrics.children(*key)
        return series

    def _add(self, trace: Trace, touched: set[Series]) -> None:
        """Count one request into the statistics and the histograms; the counters it moves are
        published by `flush` for the whole batch (``touched``: the series it changed)."""
        metrics = self.metrics
        outcome = trace.outcome
        self.outcomes[outcome] += 1
        if outcome != "ok":
            reasons = self.reasons.get(outcome)
            if reasons is None:
                reasons = self.reasons[outcome] = {}
            reason = trace.code or outcome
            reasons[reason] = reasons.get(reason, 0) + 1
        if trace.overhead_s is not None:
            self.overhead.add(trace.overhead_s)
            metrics.overhead.observe(trace.overhead_s)
        for backend, model, ok, code, seconds, ttft in trace.attempts:
            series = self._series_for(backend, model)
            touched.add(series)
            children: Any = series.children
            series.requests += 1
            if code == "cancelled":  # the client left: says nothing about the backend
                series.cancelled += 1
            elif ok:
                series.successes += 1
                series.latency.add(seconds)
                children.latency.observe(seconds)
                if ttft is not None:
                    series.ttft.add(ttft)
                    children.ttft.observe(ttft)
            else:
                series.failures += 1
                code = code or "error"
                series.errors[code] = series.errors.get(code, 0) + 1
                metrics.error(children, backend, model, code).inc()
        if trace.backend is not None:
            series = self._series_for(trace.backend, trace.served)
            touched.add(series)
            self._tokens(trace, series)

    def _tokens(self, trace: Trace, series: Series) -> None:
        """Count the reply's tokens and cost; what was estimated is written back to the trace."""
        tokens_in, tokens_out = trace.tokens_in, trace.tokens_out
        if tokens_in is None or tokens_out is None:
            series.tokens_estimated += 1
            trace.estimated = True
            if tokens_in is None:
                text = ""
                if trace.body is not None and self._prompt_text is not None and trace.kind:
                    text = self._prompt_text(trace.kind, trace.body)
                tokens_in = (len(text) + 3) // 4
            tokens_out = tokens_out or 0
        series.tokens_in += tokens_in
        series.tokens_out += tokens_out
        trace.tokens_in, trace.tokens_out = tokens_in, tokens_out
        cost = tokens_in / 1000 * (trace.price_in or 0.0) + tokens_out / 1000 * (
            trace.price_out or 0.0
        )
        if cost:
            series.cost += cost
            trace.cost = cost

    def _state(self) -> State:
        """Everything recorded so far, as JSON that several workers' states add up from."""
        live: Mapping[str, Mapping[str, Any]] = self._live() if self._live else {}
        return {
            "pid": os.getpid(),
            "started": self.started,
            "outcomes": dict(self.outcomes),
            "reasons": {o: dict(r) for o, r in self.reasons.items()},
            "overhead": self.overhead.state(),
            "dropped": self.dropped,
            "series": [[b, m, series.state()] for (b, m), series in self._series.items()],
            "live": live,
        }

    def _everyone(self) -> State:
        """This process's state, or with several workers, all of theirs added up."""
        self.flush()
        if self._shared is None:
            return self._state()
        own = self._publish()
        assert own is not None
        return merge(self._shared.read(own))

    def stats(self) -> dict[str, Any]:
        """Everything recorded so far, per backend and model, with each backend's live state;
        with several workers, their totals (and ``workers``: each one's requests)."""
        state = self._everyone()
        backends: dict[str, dict[str, Any]] = {
            name: _backend(entry) for name, entry in state["live"].items()
        }
        for name, model, series in sorted(state["series"], key=lambda s: (s[0], s[1])):
            entry = backends.setdefault(name, _backend({}))
            for counter in ("requests", "successes", "failures", "cancelled", "tokens_in",
                            "tokens_out"):  # fmt: skip
                entry[counter] += series[counter]
            entry["cost"] = round(entry["cost"] + series["cost"], 6)
            entry["models"][model] = series_json(series)
        outcomes, reasons = state["outcomes"], state["reasons"]
        out: dict[str, Any] = {
            "uptime_seconds": round(time.time() - state["started"], 3),
            "requests": {
                "total": sum(outcomes.values()),
                **outcomes,
                "reasons": {o: dict(sorted(r.items())) for o, r in sorted(reasons.items())},
            },
            "overhead_ms": summary_ms(state["overhead"]),
            "dropped_records": state["dropped"],
            "backends": backends,
        }
        if "workers" in state:
            out["worker"] = state["pid"]  # the one that answered
            out["workers"] = state["workers"]
        return out

    def render_metrics(self) -> bytes:
        if self._shared is None:
            self.flush()
            return self.metrics.render()
        live = self._everyone()["live"]
        return self.metrics.render_workers(live)


def _backend(live: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "requests": 0,
        "successes": 0,
        "failures": 0,
        "cancelled": 0,
        "tokens_in": 0,
        "tokens_out": 0,
        "cost": 0.0,
        **live,
        "models": {},
    }
