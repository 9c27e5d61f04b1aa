"""Fuzzing of every front at the benchmark harness's size (issue 15, item 5): 5,000 generated
requests per front, where CI runs 500 (tests/integration/test_fuzz.py).

Usage: .venv/bin/python bench/fuzz.py [--per-front N] [--seed S] [--front PATH ...] [--out FILE]
       .venv/bin/python bench/run.py --only fuzz   (the same, into docs/benchmarks.md)

The same generator as CI's test, imported from tests/support/front_fuzz.py: bodies from the
request schemas of turnout's own ``/openapi.json`` (valid, and broken the ways clients break
them), sent one at a time on a kept-alive connection to a real ``turnout serve`` over the fast
fake backend of tests/fakes/fast.py, which answers anything it can parse. Per front it reports
the requests sent, the statuses, the 5xx (all of them turnout's own: the fake never fails), other
wrong answers (a refusal outside the front's error dialect, an internal error in the body), the
signs of an unhandled exception in the gateway's log, the most frequent refusals and the wall
time. Unlike the test it does not stop at the first wrong answer: it counts them, and keeps the
first few bodies that got one (to be made regression tests).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import warnings
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
if str(REPO) not in sys.path:  # tests.support is imported from this checkout
    sys.path.insert(0, str(REPO))

from tests.fakes.fast import run_fast  # noqa: E402
from tests.support.front_fuzz import (  # noqa: E402
    FRONTS,
    PLAIN,
    Gateway,
    fuzz_config,
    log_problems,
    problem,
    run_front,
)
from tests.support.gateway_process import serve_process  # noqa: E402

Log = Callable[[str], None]
#: Hypothesis warns when it builds the repr of a large lazy strategy (the recursive schemas): noise
warnings.filterwarnings("ignore", message="Generating overly large repr")
#: bodies kept per front for each kind of wrong answer
KEEP = 3


def refusal(raw: bytes) -> str:
    """The message of a refusal, shortened to its kind (numbers and quoted values dropped)."""
    try:
        error = orjson.loads(raw)["error"]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return "(not JSON)"
    message = error if isinstance(error, str) else str(error.get("message", ""))
    return message.split(":")[0][:80]


def fuzz_front(gateway: Gateway, path: str, n: int, seed: int) -> dict[str, Any]:
    statuses: Counter[int] = Counter()
    refusals: Counter[str] = Counter()
    wrong: Counter[str] = Counter()
    kept: list[dict[str, Any]] = []
    sent0 = gateway.sent
    start = time.monotonic()

    def each(body: Any) -> None:
        status, raw = gateway.post(path, body)
        statuses[status] += 1
        if 400 <= status < 500:
            refusals[refusal(raw)] += 1
        what = problem(path, status, raw)
        if what is not None:
            wrong[what] += 1
            if sum(1 for k in kept if k["problem"] == what) < KEEP:
                answer = raw[:500].decode(errors="replace")
                kept.append({"problem": what, "body": body, "answer": answer})

    run_front(path, n, each, seed)
    five = sum(count for status, count in statuses.items() if status >= 500)
    return {
        "sent": gateway.sent - sent0,
        "statuses": {str(s): c for s, c in sorted(statuses.items())},
        "own_5xx": five,
        "other_wrong": sum(wrong.values()) - five,
        "wrong": dict(wrong),
        "refusals": dict(refusals.most_common(3)),
        "kept": kept,
        "wall_s": time.monotonic() - start,
    }


def _config(backend: str, tmp: Path) -> dict[str, Any]:
    """The test's configuration, with the usage ledger in a file of its own rather than the
    user's default database (bench/targets.py does the same for every turnout it starts)."""
    return {**fuzz_config(backend), "storage": {"database_url": f"sqlite:///{tmp / 'fuzz.db'}"}}


def fuzz(
    tmp: Path, per_front: int, log: Log, seed: int = 0, fronts: list[str] | None = None
) -> dict[str, Any]:
    """Every front (or those named), ``per_front`` generated requests each, against one gateway;
    the log's signs of an unhandled exception counted per front."""
    out: dict[str, Any] = {"per_front": per_front, "seed": seed, "fronts": {}}
    start = time.monotonic()
    with run_fast() as fast, serve_process(tmp, _config(fast.url, tmp)) as served:
        gateway = Gateway(served.url)
        seen = 0  # signs in the log before this front
        for path in fronts or list(FRONTS):
            row = fuzz_front(gateway, path, per_front, seed)
            signs = log_problems(served.log_text())
            row["log_tracebacks"] = signs - seen
            seen = signs
            out["fronts"][path] = row
            log(
                f"fuzz {path:22} {row['sent']:,} requests in {row['wall_s']:.0f} s: "
                f"{row['statuses']}  5xx {row['own_5xx']}  other wrong {row['other_wrong']}  "
                f"tracebacks {row['log_tracebacks']}"
            )
        out["plain_ok"] = sum(gateway.post(path, body)[0] == 200 for path, body in PLAIN.items())
        gateway.close()
        out["backend_requests"] = fast.requests
        out["log_tracebacks"] = log_problems(served.log_text())
        out["log_bytes"] = len(served.log_text())
    out["wall_s"] = time.monotonic() - start
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--per-front", type=int, default=5000, help="requests per front")
    parser.add_argument("--seed", type=int, default=0, help="0: derandomized (a fixed seed)")
    parser.add_argument("--front", nargs="+", choices=list(FRONTS), help="only these fronts")
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    args = parser.parse_args()

    def log(message: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)

    with tempfile.TemporaryDirectory(prefix="turnout-fuzz-") as tmp:
        res = fuzz(Path(tmp), args.per_front, log, args.seed, args.front)
    if args.out:
        args.out.write_text(json.dumps(res, indent=1, default=repr) + "\n")
    rows = res["fronts"].values()
    five = sum(r["own_5xx"] for r in rows)
    other = sum(r["other_wrong"] for r in rows)
    log(
        f"{sum(r['sent'] for r in rows):,} requests in {res['wall_s']:.0f} s; turnout's 5xx "
        f"{five}, other wrong answers {other}, tracebacks in the log {res['log_tracebacks']}, "
        f"plain requests answered {res['plain_ok']}/{len(PLAIN)}"
    )
    sys.exit(1 if five or other or res["log_tracebacks"] else 0)


if __name__ == "__main__":
    main()
