"""Instructions a request costs turnout, counted by valgrind's callgrind: a measure that does not
move with the machine's load, for changes too small for this shared machine's clocks.

Each target is turnout serving nginx's fixed chat completion (as bench/ab.py's), started under
callgrind; after 300 requests to warm it up the counts are zeroed, N requests are sent by 16
aiohttp clients, and the counts dumped: every thread's user-space instructions (Ir) over the N
requests, divided by N. System calls and cache misses are not in it (bench/ab.py measures time).
The machine is about 50 times slower under callgrind, so work done once a second (the key
cache's poll, the ledger's batches) weighs more a request than it does at full speed.

A target is ``nokey`` or ``key`` (a gateway key with bench/keys.py's limits and budget), with
``:VARIANT`` to run it patched by ``bench/variants/VARIANT.py`` (bench/ab.py's variants):

    python bench/instructions.py [--requests 2000] nokey key key:checked-headers

Needs valgrind (``apt-get install valgrind``) and nginx.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import signal
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

import aiohttp

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))

import targets as T  # noqa: E402
from ab import variant_env  # noqa: E402
from keys import make_key  # noqa: E402

BODY = (
    b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Say hello in one short '
    b'sentence."}],"max_tokens":16}'
)


async def send(url: str, headers: dict[str, str], count: int, clients: int = 16) -> None:
    left = count

    async def client(http: aiohttp.ClientSession) -> None:
        nonlocal left
        while left > 0:
            left -= 1
            async with http.post(url, data=BODY, headers=headers) as resp:
                await resp.read()
                assert resp.status == 200, resp.status

    async with aiohttp.ClientSession() as http:
        await asyncio.gather(*(client(http) for _ in range(clients)))


def measure(tmp: Path, upstream: T.Server, target: str, requests: int) -> float:
    kind, _, variant = target.partition(":")
    if kind not in ("nokey", "key"):
        raise SystemExit(f"a target is nokey or key (with :VARIANT), not {target!r}")
    here = tmp / f"{len(list(tmp.iterdir()))}-{kind}"
    here.mkdir()
    database = f"sqlite:///{here / 'turnout.db'}"
    headers = {"content-type": "application/json"}
    if kind == "key":
        headers["authorization"] = f"Bearer {make_key(database)}"
    config = here / "turnout.yaml"
    config.write_text(T.turnout_config(upstream))
    env = variant_env(here, variant) if variant else T.repo_env()
    env["TURNOUT_STORAGE__DATABASE_URL"] = database
    port = T.free_port()
    out = here / "callgrind.out"
    cmd = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", "--dump-instr=no",
           sys.executable, "-m", "turnout", "serve", "--config", str(config),
           "--port", str(port)]  # fmt: skip
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/v1/chat/completions"
    try:
        deadline = time.monotonic() + 600
        while True:  # under callgrind the start takes a minute or more
            try:
                asyncio.run(send(url, headers, 1, 1))
                break
            except aiohttp.ClientError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise
                time.sleep(2)
        asyncio.run(send(url, headers, 300))
        subprocess.run(["callgrind_control", "-z", str(proc.pid)], check=True, capture_output=True)
        asyncio.run(send(url, headers, requests))
        subprocess.run(["callgrind_control", "-d", str(proc.pid)], check=True, capture_output=True)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=300)
    dumps = sorted(here.glob("callgrind.out.*"), key=lambda p: p.stat().st_mtime)
    total = re.search(r"^(?:summary|totals): (\d+)", dumps[0].read_text(), re.M)
    assert total, dumps[0]
    return int(total.group(1)) / requests


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("targets", nargs="+", help="nokey or key, each with :VARIANT or not")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as name, ExitStack() as stack:
        tmp = Path(name)
        upstream = stack.enter_context(T.nginx_upstream(tmp))
        first = None
        print("| target | instructions a request | vs the first |\n|---|---:|---:|", flush=True)
        for target in args.targets:
            count = measure(tmp, upstream, target, args.requests)
            first = first or count
            print(f"| {target} | {count:,.0f} | {first / count:.3f}× |", flush=True)


if __name__ == "__main__":
    main()
