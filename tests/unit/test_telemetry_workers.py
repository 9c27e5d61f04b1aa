"""Statistics added up across workers (turnout/telemetry/workers.py): each worker's state file in
a shared folder, merged by whichever worker answers ``/stats``. Another worker is played by a
state file written the way a worker writes it, under the pid of a live process (pytest's parent)
or of one that has exited."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson

from tests.unit.test_telemetry import record
from turnout.telemetry import Telemetry
from turnout.telemetry.workers import merge_live


def other_worker(folder: Path, pid: int, traces: list[Any], live: dict[str, Any]) -> None:
    telemetry = Telemetry(live=lambda: live)
    for trace in traces:
        telemetry.emit(trace)
    telemetry.flush()
    state = {**telemetry._state(), "pid": pid, "started": telemetry.started - 60}
    (folder / f"{pid}.json").write_bytes(orjson.dumps(state))


def concurrency(in_flight: int, queued: int) -> dict[str, Any]:
    return {"in_flight": in_flight, "queued": queued, "max_concurrency": 4, "queue_size": 64,
            "rejected": 0}  # fmt: skip


def live(state: str, in_flight: int, opens: int = 0) -> dict[str, Any]:
    circuit = {"state": state, "consecutive_failures": 0, "opens": opens, "held": 0,
               "retry_in_seconds": 0.0, "last_error": None}  # fmt: skip
    return {"a": {"circuit": circuit, "concurrency": concurrency(in_flight, 1), "health": None}}


def test_stats_add_up_every_workers_file(tmp_path: Path) -> None:
    mine = Telemetry(live=lambda: live("closed", 2))
    mine.share(tmp_path)
    for _ in range(3):
        mine.emit(record(tokens_in=10, tokens_out=5))
    mine.emit(record(ok=False))
    other = os.getppid()  # alive: its live state counts
    other_worker(
        tmp_path, other, [record(tokens_in=1, tokens_out=1) for _ in range(2)], live("open", 3, 1)
    )
    stats = mine.stats()
    assert stats["requests"]["total"] == 6 and stats["requests"]["ok"] == 5
    assert stats["requests"]["reasons"] == {"error": {"backend_unavailable": 1}}
    backend = stats["backends"]["a"]
    assert (backend["requests"], backend["successes"], backend["failures"]) == (6, 5, 1)
    assert (backend["tokens_in"], backend["tokens_out"]) == (32, 17)
    model = backend["models"]["m"]
    assert model["latency_ms"]["samples"] == 5 and model["latency_ms"]["p50"] == 200.0
    assert backend["concurrency"]["in_flight"] == 5 and backend["concurrency"]["queued"] == 2
    assert backend["concurrency"]["max_concurrency"] == 8  # each worker has its own slots
    assert backend["circuit"]["state"] == "open" and backend["circuit"]["opens"] == 1
    assert stats["worker"] == os.getpid()
    assert sorted((w["pid"], w["requests"]) for w in stats["workers"]) == sorted(
        [(os.getpid(), 4), (other, 2)]
    )
    assert stats["uptime_seconds"] >= 60  # since the first worker started
    assert (tmp_path / f"{os.getpid()}.json").exists()  # written for the others to read


def test_a_worker_that_exited_keeps_its_counts_but_not_its_live_state(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    gone = int(done.stdout)
    mine = Telemetry(live=lambda: live("closed", 0))
    mine.share(tmp_path)
    other_worker(tmp_path, gone, [record() for _ in range(3)], live("open", 7))
    (tmp_path / "99999999.json").write_bytes(b"{not json")  # a torn file is skipped
    stats = mine.stats()
    assert stats["requests"]["total"] == 3
    assert {w["pid"]: w["running"] for w in stats["workers"]} == {os.getpid(): True, gone: False}
    assert stats["backends"]["a"]["circuit"]["state"] == "closed"
    assert stats["backends"]["a"]["concurrency"]["in_flight"] == 0


def test_metrics_without_a_multiprocess_folder_show_this_process_and_the_live_sum(
    tmp_path: Path,
) -> None:
    mine = Telemetry(live=lambda: live("closed", 2))
    mine.share(tmp_path)
    mine.emit(record())
    other_worker(tmp_path, os.getppid(), [], live("closed", 3))
    text = mine.render_metrics().decode()
    assert 'turnout_requests_total{outcome="ok"} 1.0' in text
    assert 'turnout_backend_in_flight{backend="a"} 5.0' in text
    assert text.count("# TYPE turnout_backend_in_flight gauge") == 1


def test_live_health_is_the_latest_probe() -> None:
    early = {"a": {"health": {"ok": False, "checked_at": 1.0}}}
    late = {"a": {"health": {"ok": True, "checked_at": 2.0}}}
    assert merge_live([early, late])["a"]["health"]["ok"] is True
    assert merge_live([late, early])["a"]["health"]["ok"] is True
