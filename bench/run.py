"""turnout's benchmark (issue 6): the same workloads direct, through a bare relay, turnout, LiteLLM.

Usage: .venv/bin/python bench/run.py [--quick] [--only SCENARIO ...] [--runs N] [--out FILE]
                                     [--per-front N]
       .venv/bin/python bench/run.py --render   (rewrite the report from the saved results)

Scenarios: nonstream (c=1 and c=64), stream (one stream, every chunk timed), streams1000 (peak
RSS), soak (RSS, file descriptors and asyncio tasks before and after, streams cut by the client
among them), engine (embedded vs raw llama-cpp-python), affinity (prefix-affinity vs
round-robin), profile (py-spy), fuzz (every front, --per-front generated requests: bench/fuzz.py,
run once whatever --runs says). Without --only, all of them, in one run. The full mode writes
docs/benchmarks.md and bench/results/benchmarks.json; --quick (small sizes, for development)
writes under bench/.work/ unless --out says otherwise. With --only, the scenarios not run keep
their results from the JSON file beside the report, so the report stays whole.

Needs Debian's nginx and wrk (installed with apt-get when missing and running as root), the
packages of bench/requirements.txt in this Python, and creates LiteLLM's own virtual environment
under bench/.work/ the first time.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))

import affinity  # noqa: E402
import engines  # noqa: E402
import profiling  # noqa: E402
import report  # noqa: E402
import scenarios  # noqa: E402
import targets as T  # noqa: E402
from http_clients import NGINX  # noqa: E402
from loads import load_average  # noqa: E402

REPO = BENCH_DIR.parent
SCENARIOS = ["nonstream", "stream", "streams1000", "soak", "engine", "affinity", "profile", "fuzz"]


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def ensure_tools() -> None:
    """nginx and wrk from Debian; installed when missing (as root), else a clear message."""
    missing = [pkg for pkg, exe in (("nginx", NGINX), ("wrk", "wrk")) if not shutil.which(exe)]
    if not missing:
        return
    if os.geteuid() != 0:
        sys.exit(f"missing {', '.join(missing)}: sudo apt-get install -y {' '.join(missing)}")
    log(f"installing {', '.join(missing)} with apt-get")
    subprocess.run(["apt-get", "update", "-q"], check=True)
    subprocess.run(["apt-get", "install", "-y", "-q", *missing], check=True)


def machine(command: str, mode: str, runs: int) -> dict[str, Any]:
    cpu = next(
        (
            ln.split(":", 1)[1].strip()
            for ln in Path("/proc/cpuinfo").read_text().splitlines()
            if ln.startswith("model name")
        ),
        "unknown",
    )
    mem_kb = int(Path("/proc/meminfo").read_text().split()[1])
    nginx_v = subprocess.run([NGINX, "-v"], capture_output=True, text=True).stderr.strip()
    wrk_v = subprocess.run(["wrk", "-v"], capture_output=True, text=True).stdout.split("[")[0]
    software = [f"Python {platform.python_version()}"]
    software += [f"{k} {v}" for k, v in T.versions().items()]
    software += [nginx_v.removeprefix("nginx version: "), wrk_v.strip()]
    return {
        "command": command,
        "mode": mode,
        "runs": runs,
        "date": f"{datetime.now(UTC):%Y-%m-%d %H:%M UTC}",
        "nproc": len(os.sched_getaffinity(0)),
        "cpu": cpu,
        "memory": f"{mem_kb / 1024 / 1024:.1f} GiB RAM",
        "platform": platform.platform(),
        "software": ", ".join(software),
        "load_before": load_average(),
    }


def others(results: dict[str, Any]) -> list[float]:
    """Every recorded share of the CPU other processes used during a load."""
    shares = []
    for key in ("c1", "c64"):
        for rows in results.get("nonstream", {}).get(key, {}).values():
            shares += [r["other_cpu"] for r in rows]
    return shares


def run(args: argparse.Namespace) -> dict[str, Any]:
    params = scenarios.Params(**scenarios.QUICK if args.quick else scenarios.FULL)
    if args.runs:
        params = scenarios.Params(**{**params.__dict__, "runs": args.runs})
    if args.no_litellm:
        params = scenarios.Params(**{**params.__dict__, "litellm": False})
    chosen = args.only or SCENARIOS
    command = shlex.join(["python", "bench/run.py", *sys.argv[1:]])
    results: dict[str, Any] = {}
    meta = machine(command, "quick" if args.quick else "full", params.runs)
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="turnout-bench-") as tmp_dir:
        tmp = Path(tmp_dir)
        for name in chosen:
            log(f"== {name}")
            if name == "engine":
                results[name] = engines.engine(
                    tmp, params.runs, params.engine_requests, params.max_tokens, log
                )
            elif name == "affinity":
                results[name] = affinity.affinity(tmp, params.runs, params.affinity_requests, log)
            elif name == "profile":
                results[name] = profiling.profile(tmp, params.profile_s, log)
            elif name == "fuzz":  # imports turnout and the tests' support: only when asked
                import fuzz

                results[name] = fuzz.fuzz(tmp, args.per_front or params.fuzz_per_front, log)
            else:
                results[name] = getattr(scenarios, name)(tmp, params, log)
    meta["wall_s"] = time.monotonic() - start
    meta["load_after"] = load_average()
    for name in chosen:  # which run each scenario's figures come from, once results are merged
        results[name]["run"] = {
            k: meta[k] for k in ("date", "command", "load_before", "load_after")
        }
    shares = others(results)
    meta["others_median"] = statistics.median(shares) if shares else 0.0
    meta["others_max"] = max(shares) if shares else 0.0
    results["meta"] = meta
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, for development")
    parser.add_argument("--only", nargs="+", choices=SCENARIOS, help="run only these scenarios")
    parser.add_argument("--runs", type=int, help="repeat each measurement N times (full: 5)")
    parser.add_argument("--no-litellm", action="store_true", help="leave LiteLLM out")
    parser.add_argument(
        "--per-front", type=int, help="fuzz: generated requests per front (full: 5,000)"
    )
    parser.add_argument("--out", type=Path, help="the markdown report to write")
    parser.add_argument(
        "--render", action="store_true", help="only rewrite the report from the saved results"
    )
    args = parser.parse_args()
    out = args.out or (
        BENCH_DIR / ".work" / "benchmarks-quick.md" if args.quick else REPO / "docs/benchmarks.md"
    )
    data = (
        BENCH_DIR / ".work" / "benchmarks-quick.json"
        if args.quick and not args.out
        else BENCH_DIR / "results" / "benchmarks.json"
        if not args.out
        else out.with_suffix(".json")
    )
    if args.render:  # e.g. after editing bench/notes.md: no measurement
        out.write_text(report.render(json.loads(data.read_text())))
        log(f"written to {out} from {data}")
        return
    try:
        import turnout  # noqa: F401
    except ImportError:
        sys.exit("run with the Python that has turnout installed: .venv/bin/python bench/run.py")
    # wrk and the proxies hold thousands of sockets in the 1,000-stream scenario
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 65536)), hard))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the cleanup blocks on SIGTERM
    ensure_tools()
    results = run(args)
    if args.only and data.exists():  # keep the other scenarios' results of an earlier run
        earlier = json.loads(data.read_text())  # and its header: each rerun scenario says its run
        results = {**earlier, **results, "meta": earlier.get("meta", results["meta"])}
    data.parent.mkdir(parents=True, exist_ok=True)
    data.write_text(json.dumps(results, indent=1) + "\n")
    out.parent.mkdir(parents=True, exist_ok=True)
    text = report.render(results)
    out.write_text(text)
    print(text)
    log(f"written to {out} and {data}")


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit(130)
