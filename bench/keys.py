"""What gateway keys cost (issue 12): wrk against nginx's fixed chat completion, through the bare
relay, turnout without keys, turnout with a key (limits and budget on, the SQLite ledger), and
turnout with the same key and Redis-shared limits; each target measured back to back in each run,
nginx itself (direct) too: the c=1 figure the issue sets a goal for is the latency each target
adds over direct, as a ratio of what turnout without keys adds. The c=64 ratios are given twice:
of the medians of each target's runs, and run by run (each run's ratio; their median and range).

Usage: .venv/bin/python bench/keys.py [--runs N] [--duration S]   (needs nginx, wrk, redis-server)
Prints a markdown table and writes bench/results/keys.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))

import targets as T  # noqa: E402
from loads import wrk  # noqa: E402

KEYED, SHARED = "turnout + key", "turnout + key + Redis"


@contextmanager
def redis_server() -> Any:
    port = T.free_port()
    binary = shutil.which("redis-server")
    assert binary, "redis-server is needed (apt-get install redis-server)"
    cmd = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.5)
    try:
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def make_key(database_url: str) -> str:
    cmd = [sys.executable, "-m", "turnout", "keys", "create", "bench", "--rpm", "100000000",
           "--tpm", "1000000000", "--budget", "1000000",
           "--database-url", database_url]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, check=True, env=T.repo_env())
    return done.stdout.strip()


@contextmanager
def keyed(
    tmp: Path,
    upstream: T.Server,
    name: str,
    redis_url: str | None,
    env: dict[str, str] | None = None,
) -> Any:
    """turnout with a key (limits and budget on, the SQLite ledger; Redis-shared limits with
    ``redis_url``); wrk sends the key. ``env``: the process's environment (bench/ab.py's)."""
    database_url = f"sqlite:///{tmp / (name.replace(' ', '') + '.db')}"
    key = make_key(database_url)
    config = T.turnout_config(upstream) + f"storage:\n  database_url: {database_url}\n"
    if redis_url:
        config += f"  redis_url: {redis_url}\n"
    port = T.free_port()
    path = tmp / f"turnout-{port}.yaml"
    path.write_text(config)
    cmd = [sys.executable, "-m", "turnout", "serve", "--config", str(path), "--port", str(port)]
    headers = {"Authorization": f"Bearer {key}"}
    with T.serve(name, cmd, port, tmp, env=env or T.repo_env(), headers=headers) as server:
        yield server


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--duration", type=float, default=5)
    args = parser.parse_args()
    out: dict[str, dict[str, list[dict[str, Any]]]] = {"c1": {}, "c64": {}}
    with tempfile.TemporaryDirectory(prefix="turnout-bench-keys-") as name, ExitStack() as stack:
        tmp = Path(name)
        upstream = stack.enter_context(T.nginx_upstream(tmp))
        redis_url = stack.enter_context(redis_server())
        servers = [
            upstream,  # direct: what the c=1 latency each target adds is measured from
            stack.enter_context(T.bare_relay(tmp, upstream)),
            stack.enter_context(T.turnout(tmp, upstream)),
            stack.enter_context(keyed(tmp, upstream, KEYED, None)),
            stack.enter_context(keyed(tmp, upstream, SHARED, redis_url)),
        ]
        ours = {s.pgid for s in servers}
        for server in servers:
            wrk(server, connections=64, threads=2, seconds=2)
        for run in range(args.runs):
            for server in servers:
                for conc, threads in ((1, 1), (64, 2)):
                    load = wrk(server, connections=conc, threads=threads,
                               seconds=args.duration, ours=ours)  # fmt: skip
                    out[f"c{conc}"].setdefault(server.name, []).append(load.row())
                    print(f"run {run + 1} {server.name:24} c={conc:<3} {load.rps:8.0f} req/s "
                          f"p50 {load.p50_ms:.3f} ms errors {load.errors or 0} "
                          f"others {load.other_cpu:.0%}", flush=True)  # fmt: skip
    (BENCH_DIR / "results").mkdir(exist_ok=True)
    (BENCH_DIR / "results" / "keys.json").write_text(json.dumps(out, indent=2))
    med = {
        c: {n: (statistics.median(r["rps"] for r in rows),
                statistics.median(r["p50_ms"] for r in rows)) for n, rows in by.items()}
        for c, by in out.items()
    }  # fmt: skip
    direct = med["c1"][T.DIRECT][1]
    base = med["c64"][T.TURNOUT][0], med["c1"][T.TURNOUT][1] - direct
    # Each run measures every target within a minute or so: the ratio of two targets' req/s in
    # one run shares that run's load on the machine, the ratio of medians taken apart does not.
    paired = {
        n: sorted(r["rps"] / t["rps"] for r, t in zip(rows, out["c64"][T.TURNOUT], strict=True))
        for n, rows in out["c64"].items()
    }
    print("\n| target | c=64 req/s | vs turnout | run by run (median, range) | c=1 p50 ms "
          "| added over direct | vs turnout |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---:|---:|")
    for n in med["c64"]:
        rps, p50 = med["c64"][n][0], med["c1"][n][1]
        ratios = paired[n]
        runs = f"{statistics.median(ratios):.2f}x ({ratios[0]:.2f}–{ratios[-1]:.2f})"
        added = f"{p50 - direct:.3f} | {(p50 - direct) / base[1]:.2f}x" if n != T.DIRECT else "|"
        print(f"| {n} | {rps:,.0f} | {rps / base[0]:.2f}x | {runs} | {p50:.3f} | {added} |")


if __name__ == "__main__":
    main()
