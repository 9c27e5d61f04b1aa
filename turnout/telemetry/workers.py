"""Statistics added up across the worker processes of ``turnout serve --workers N``.

Each worker's `Telemetry` writes its state (outcome counts, per-backend-and-model counters and
latency windows, each backend's live circuit and concurrency) to a file of its own in a folder
the parent process made, at every drain (0.5 s) and whenever it answers ``/stats`` or
``/metrics``; it answers with every worker's file added up (`merge`), its own state fresh and
the others' as of their last drain. Counters add; the latency windows are put together (the
percentiles are those of every worker's recent samples); live state is taken from the workers
still running: slots and queues add, a circuit shows the worst of its workers' states.

The Prometheus counters and histograms go through prometheus-client's multiprocess mode (the
parent sets ``PROMETHEUS_MULTIPROC_DIR``, see turnout/telemetry/metrics.py); only the live
gauges come from here. A worker that died keeps its last counts in both.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import orjson

__all__ = ["WorkerFiles", "merge", "merge_live"]

State = dict[str, Any]

_CIRCUIT_RANK = {"closed": 0, "half_open": 1, "open": 2}


class WorkerFiles:
    """This worker's state file in ``folder``, and every worker's states read back."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.pid = os.getpid()
        self.path = self.folder / f"{self.pid}.json"
        self._spare = self.folder / f".{self.pid}.tmp"

    def write(self, state: State) -> None:
        """Replace this worker's file at once (a reader sees the old state or the new one)."""
        self._spare.write_bytes(orjson.dumps(state))
        os.replace(self._spare, self.path)

    def read(self, own: State) -> list[State]:
        """``own`` (fresh) and every other worker's last state, each marked running or not."""
        states = [{**own, "running": True}]
        for path in sorted(self.folder.glob("*.json")):
            if path == self.path:
                continue
            try:
                state = orjson.loads(path.read_bytes())
            except (OSError, orjson.JSONDecodeError):  # gone, or from an older run's crash
                continue
            states.append({**state, "running": _alive(state.get("pid"))})
        return states


def _alive(pid: object) -> bool:
    if not isinstance(pid, int):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # pragma: no cover - a pid reused by another user's process
        return False
    return True


def merge(states: Sequence[State]) -> State:
    """Several workers' states as one (the first is the worker answering)."""
    merged: State = {
        "pid": states[0]["pid"],
        "started": min(s["started"] for s in states),
        "outcomes": _add_counts(s["outcomes"] for s in states),
        "reasons": {},
        "overhead": _add_windows(s["overhead"] for s in states),
        "dropped": sum(s["dropped"] for s in states),
        "series": [],
        "live": merge_live(s["live"] for s in states if s.get("running", True)),
        "workers": [
            {
                "pid": s["pid"],
                "requests": sum(s["outcomes"].values()),
                "running": s.get("running", True),
            }
            for s in sorted(states, key=lambda s: s["pid"])
        ],
    }
    for outcome in sorted({o for s in states for o in s["reasons"]}):
        merged["reasons"][outcome] = _add_counts(s["reasons"].get(outcome, {}) for s in states)
    series: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
    for state in states:
        for backend, model, entry in state["series"]:
            series.setdefault((backend, model), []).append(entry)
    merged["series"] = [[b, m, _add_series(entries)] for (b, m), entries in series.items()]
    return merged


def _add_counts(counts: Iterable[Mapping[str, int]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for each in counts:
        for name, n in each.items():
            out[name] = out.get(name, 0) + n
    return out


def _add_windows(windows: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {"count": 0, "total": 0.0, "samples": []}
    for window in windows:
        out["count"] += window["count"]
        out["total"] += window["total"]
        out["samples"].extend(window["samples"])
    return out


def _add_series(entries: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {
        name: sum(e[name] for e in entries)
        for name in ("requests", "successes", "failures", "cancelled", "tokens_in", "tokens_out",
                     "tokens_estimated", "cost")
    }  # fmt: skip
    out["errors"] = _add_counts(e["errors"] for e in entries)
    out["latency"] = _add_windows(e["latency"] for e in entries)
    out["ttft"] = _add_windows(e["ttft"] for e in entries)
    return out


def merge_live(lives: Iterable[Mapping[str, Mapping[str, Any]]]) -> dict[str, dict[str, Any]]:
    """Each backend's live state across workers: concurrency figures added (each worker has
    its own slots and queue), the worst circuit (its opens added), the latest health probe."""
    out: dict[str, dict[str, Any]] = {}
    for live in lives:
        for name, entry in live.items():
            have = out.get(name)
            if have is None:
                out[name] = {k: dict(v) if isinstance(v, dict) else v for k, v in entry.items()}
                continue
            if "concurrency" in entry:
                have["concurrency"] = _add_numbers(have["concurrency"], entry["concurrency"])
            if "circuit" in entry:
                have["circuit"] = _worse_circuit(have["circuit"], entry["circuit"])
            health = entry.get("health")
            if health is not None and (
                have.get("health") is None or health["checked_at"] > have["health"]["checked_at"]
            ):
                have["health"] = dict(health)
    return out


def _add_numbers(a: Mapping[str, Any], b: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(a)
    for name, value in b.items():
        mine = out.get(name)
        if _number(mine) and _number(value):
            out[name] = mine + value
        elif mine is None:
            out[name] = value
    return out


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _worse_circuit(a: Mapping[str, Any], b: Mapping[str, Any]) -> dict[str, Any]:
    worse = dict(b if _CIRCUIT_RANK.get(b["state"], 0) > _CIRCUIT_RANK.get(a["state"], 0) else a)
    for name in ("opens", "held"):
        if _number(a.get(name)) and _number(b.get(name)):
            worse[name] = a[name] + b[name]
    with contextlib.suppress(KeyError, TypeError):
        worse["consecutive_failures"] = max(a["consecutive_failures"], b["consecutive_failures"])
    return worse
