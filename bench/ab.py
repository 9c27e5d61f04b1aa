"""A/B: turnout as it is against variants of itself, under the same c=64 non-streaming load,
alternating run by run in one session (the machine is shared; only paired figures compare).

Usage: .venv/bin/python bench/ab.py [--runs 4] [--seconds 5] [--connections 64] [--relay]
       [--key [--redis]] [VARIANT ...]

A variant is a file ``bench/variants/NAME.py``, run as the ``sitecustomize`` of its turnout
process (so it patches turnout at start-up, in that process only, without editing turnout):
most put back how a part worked before a change (what the change saved), some take a part away
(what it costs). Each target is `python -m turnout serve` on bench/run.py's configuration (one
`openai` provider at nginx's fixed reply, a fresh ledger file each); ``--relay`` adds the bare
aiohttp relay. ``--key``: every turnout target serves with a gateway key (limits and budget on,
as bench/keys.py's), ``--redis`` with the limits in Redis too, and turnout without a key is
measured beside them ("no key"). Prints each run and a table of medians: req/s, the CPU time of
the target's processes per request (µs; the figure that throughput on a saturated machine
follows) and the median latency (ms; the figure to read with ``--connections 1``).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from contextlib import ExitStack
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))

import keys as K  # noqa: E402
import targets as T  # noqa: E402
from loads import wrk  # noqa: E402

VARIANTS = BENCH_DIR / "variants"
AS_IS, RELAY, NO_KEY = "as is", "bare relay", "no key"


def variant_env(tmp: Path, name: str) -> dict[str, str]:
    """The environment of a turnout process patched by ``variants/NAME.py``."""
    env = T.repo_env()
    source = VARIANTS / f"{name}.py"
    if not source.is_file():
        known = ", ".join(sorted(p.stem for p in VARIANTS.glob("*.py")))
        raise SystemExit(f"no variant {name!r} (bench/variants/ has: {known})")
    folder = tmp / "variants" / name
    folder.mkdir(parents=True)
    (folder / "sitecustomize.py").write_text(source.read_text())
    env["PYTHONPATH"] = f"{folder}:{env['PYTHONPATH']}"
    return env


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--relay", action="store_true", help="measure the bare relay too")
    parser.add_argument("--connections", type=int, default=64, help="wrk's connections")
    parser.add_argument("--key", action="store_true", help="turnout targets serve with a key")
    parser.add_argument("--redis", action="store_true", help="with --key: limits in Redis")
    parser.add_argument("variants", nargs="*", help="names of files in bench/variants/")
    args = parser.parse_args()
    rows: dict[str, list[tuple[float, float, float]]] = {}
    with tempfile.TemporaryDirectory(prefix="turnout-ab-") as tmp_dir, ExitStack() as stack:
        tmp = Path(tmp_dir)
        upstream = stack.enter_context(T.nginx_upstream(tmp))
        servers = []
        if args.relay:
            servers.append((RELAY, stack.enter_context(T.bare_relay(tmp, upstream))))
        redis_url = stack.enter_context(K.redis_server()) if args.redis else None

        def target(name: str, env: dict[str, str] | None = None) -> T.Server:
            if args.key:
                return stack.enter_context(K.keyed(tmp, upstream, name, redis_url, env=env))
            return stack.enter_context(T.turnout(tmp, upstream, env=env))

        if args.key:
            servers.append((NO_KEY, stack.enter_context(T.turnout(tmp, upstream))))
        servers.append((AS_IS, target(AS_IS)))
        for name in args.variants:
            servers.append((name, target(name, variant_env(tmp, name))))
        ours = {server.pgid for _, server in servers}
        for _, server in servers:  # warm up: connections, caches, the JIT-less interpreter's
            wrk(server, connections=64, threads=2, seconds=2)
        for run in range(args.runs):
            for name, server in servers:
                load = wrk(server, connections=args.connections, threads=min(2, args.connections),
                           seconds=args.seconds, ours=ours)  # fmt: skip
                rows.setdefault(name, []).append((load.rps, load.cpu_us_per_req, load.p50_ms))
                print(
                    f"run {run + 1}/{args.runs} {name:22} {load.rps:7.0f} req/s "
                    f"{load.cpu_us_per_req:5.0f} µs/req  p50 {load.p50_ms:.3f} ms  "
                    f"others {load.other_cpu:.0%}  "
                    f"errors {load.errors or 0}",
                    flush=True,
                )
    base = statistics.median(v[0] for v in rows[AS_IS])
    c = args.connections
    print(f"\n| target | c={c} req/s | vs as is | CPU µs/req | p50 ms |\n|---|---:|---:|---:|---:|")
    for name, values in rows.items():
        rps, cpu, p50 = (statistics.median(v[i] for v in values) for i in range(3))
        print(f"| {name} | {rps:,.0f} | {rps / base:.2f}x | {cpu:.0f} | {p50:.3f} |")


if __name__ == "__main__":
    main()
