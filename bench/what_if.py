"""What a suggested change to turnout's hot path would buy, measured without editing turnout.

Usage: .venv/bin/python bench/what_if.py [--runs 3] [--seconds 5]

Starts turnout as bench/run.py does (nginx upstream, default configuration) once as it is and
once per variant below, each variant being a function of `turnout.server.fronts.base` replaced
at start-up in that process only, and loads each with wrk at c=64, interleaved run by run. It
prints req/s and the server's CPU µs per request for each. The variants are experiments for the
notes in docs/benchmarks.md, not changes to turnout.

- lean-disconnect: a non-streaming request is awaited in its own task with one watcher task that
  cancels it if the client leaves (today: the work in a second task, a watcher task and
  `asyncio.wait` on both, per request). Same behaviour for the client.
- delayed-watch: the request awaited in its own task; the watcher task is started only if the
  reply takes longer than 50 ms (a timer, cancelled when a fast reply comes first).
- no-disconnect-watch: no watcher at all (the lower bound; loses "a client that leaves cancels
  its backend call", so it only shows what the watching costs).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))

import targets as T  # noqa: E402
from loads import wrk  # noqa: E402

LEAN = """
import asyncio
from turnout.server.fronts import base as front
from turnout.server.stream import disconnected

async def _while_connected(request, work):
    me = asyncio.current_task()
    gone = False

    async def watch():
        nonlocal gone
        await disconnected(request.receive)
        gone = True
        me.cancel()

    watcher = asyncio.ensure_future(watch())
    try:
        return await work
    except asyncio.CancelledError:
        if gone:
            raise front.ClientGone from None
        raise
    finally:
        watcher.cancel()

front.while_connected = _while_connected
"""
NONE = """
from turnout.server.fronts import base as front

async def _while_connected(request, work):
    return await work

front.while_connected = _while_connected
"""
DELAYED = """
import asyncio
from turnout.server.fronts import base as front
from turnout.server.stream import disconnected

async def _while_connected(request, work):
    me = asyncio.current_task()
    state = {"watcher": None, "gone": False}

    async def watch():
        await disconnected(request.receive)
        state["gone"] = True
        me.cancel()

    def start():
        state["watcher"] = asyncio.ensure_future(watch())

    handle = asyncio.get_running_loop().call_later(0.05, start)
    try:
        return await work
    except asyncio.CancelledError:
        if state["gone"]:
            raise front.ClientGone from None
        raise
    finally:
        handle.cancel()
        if state["watcher"] is not None:
            state["watcher"].cancel()

front.while_connected = _while_connected
"""
VARIANTS = {
    "as is": None,
    "lean-disconnect": LEAN,
    "delayed-watch": DELAYED,
    "no-disconnect-watch": NONE,
}


def launcher(tmp: Path, name: str, patch: str | None) -> Path | None:
    """A sitecustomize.py that applies the patch when turnout's process starts."""
    if patch is None:
        return None
    folder = tmp / name
    folder.mkdir()
    (folder / "sitecustomize.py").write_text(patch)
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5)
    args = parser.parse_args()
    rows: dict[str, list[tuple[float, float]]] = {name: [] for name in VARIANTS}
    with tempfile.TemporaryDirectory(prefix="turnout-what-if-") as tmp_dir:
        tmp = Path(tmp_dir)
        with T.nginx_upstream(tmp) as upstream:
            folders = {name: launcher(tmp, name, patch) for name, patch in VARIANTS.items()}
            for run in range(args.runs):
                for name, folder in folders.items():
                    env = T.repo_env()
                    if folder is not None:
                        env["PYTHONPATH"] = f"{folder}:{env['PYTHONPATH']}"
                    with T.turnout(tmp, upstream, env=env) as gw:
                        wrk(gw, connections=64, threads=2, seconds=2)
                        load = wrk(gw, connections=64, threads=2, seconds=args.seconds)
                    rows[name].append((load.rps, load.cpu_us_per_req))
                    print(
                        f"run {run + 1}/{args.runs} {name:20} {load.rps:7.0f} req/s  "
                        f"{load.cpu_us_per_req:4.0f} µs/req  errors {load.errors or 0}",
                        flush=True,
                    )
    print("\n| variant | c=64 req/s | CPU µs/req |\n|---|---:|---:|")
    for name, values in rows.items():
        rps = statistics.median(v[0] for v in values)
        cpu = statistics.median(v[1] for v in values)
        print(f"| {name} | {rps:,.0f} | {cpu:.0f} |")


if __name__ == "__main__":
    main()
