"""Benchmark httpx.AsyncClient vs aiohttp.ClientSession as turnout's upstream client.

Usage: python bench/http_clients.py [--duration 10] [--runs 5] [--out bench/results/http_clients.md]

Starts nginx as a fixed chat.completion upstream, then each relay in
bench/relays.py in turn, loads every target with wrk (bench/post_chat.lua)
at concurrency 1 and 64, and writes a markdown table of the results.
Runs during which other processes (a compiler, a test suite) used the CPU are redone.
Needs Debian's nginx and wrk, and starlette, uvicorn[standard], httpx and
aiohttp in the running Python (see bench/requirements.txt).
"""

from __future__ import annotations

import argparse
import http.client
import os
import platform
import re
import resource
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
LUA_SCRIPT = BENCH_DIR / "post_chat.lua"
NGINX = "/usr/sbin/nginx"
HOST = "127.0.0.1"
PATH = "/v1/chat/completions"
WARMUP_S = 2
WRK_TIMEOUT = "5s"
SCENARIOS = {1: 1, 64: 2}  # concurrency -> wrk threads
DIRECT = "direct nginx"
BARE = "aiohttp bare relay"
RELAYS = {
    "starlette+httpx": "starlette-httpx",
    "starlette+aiohttp": "starlette-aiohttp",
    BARE: "aiohttp-bare",
}
LIBRARIES = [  # versions recorded in the report
    *("starlette", "uvicorn", "uvloop", "httptools"),
    *("httpx", "httpcore", "anyio", "sniffio", "aiohttp"),
]
UPSTREAM_BODY = (
    '{"id":"chatcmpl-bench0001","object":"chat.completion","created":1700000000,'
    '"model":"gpt-4o-mini","choices":[{"index":0,"message":{"role":"assistant",'
    '"content":"Hello! This is a fixed reply from the benchmark upstream."},'
    '"logprobs":null,"finish_reason":"stop"}],'
    '"usage":{"prompt_tokens":14,"completion_tokens":12,"total_tokens":26}}'
)
NGINX_CONF = """\
daemon off;
worker_processes 1;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    keepalive_requests 100000000;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    server {{
        listen {host}:{port};
        location = {path} {{
            default_type application/json;
            return 200 '{body}';
        }}
    }}
}}
"""
MAX_OTHER = 0.05  # largest share of the machine's CPU that others may use during a run
CLK_TCK = os.sysconf("SC_CLK_TCK")
UNIT_MS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}


@dataclass
class WrkRun:
    """One wrk measurement."""

    rps: float
    p50_ms: float
    p99_ms: float
    errors: Counter[str] = field(default_factory=Counter)
    other_cpu: float = 0.0  # share of the machine's CPU used by other processes meanwhile


def parse_wrk(out: str) -> WrkRun:
    """Extract req/s, p50/p99 latency and error counts from `wrk --latency` output."""

    def latency(pct: str) -> float:
        m = re.search(rf"^\s*{pct}%\s+([\d.]+)(us|ms|s|m|h)\s*$", out, re.MULTILINE)
        if not m:
            raise ValueError(f"no {pct}% latency in wrk output:\n{out}")
        return float(m[1]) * UNIT_MS[m[2]]

    rps = re.search(r"^Requests/sec:\s+([\d.]+)", out, re.MULTILINE)
    if not rps:
        raise ValueError(f"no Requests/sec in wrk output:\n{out}")
    errors: Counter[str] = Counter()
    if sock := re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out
    ):
        kinds = ["connect", "read", "write", "timeout"]
        errors.update(dict(zip(kinds, map(int, sock.groups()), strict=True)))
    if status := re.search(r"Non-2xx or 3xx responses: (\d+)", out):
        errors["non-2xx/3xx"] = int(status[1])
    return WrkRun(float(rps[1]), latency("50"), latency("99"), +errors)


def wrk(url: str, concurrency: int, seconds: int) -> WrkRun:
    """Run wrk against url and return its parsed result."""
    cmd = ["wrk", f"-t{SCENARIOS[concurrency]}", f"-c{concurrency}", f"-d{seconds}s", "--latency"]
    cmd += ["--timeout", WRK_TIMEOUT, "-s", str(LUA_SCRIPT), url]
    return parse_wrk(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)


def free_port() -> int:
    """Return a currently unused TCP port on HOST."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


@contextmanager
def running(
    cmd: list[str], log: Path, env: dict[str, str] | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    """Run cmd in its own process group for the duration of the block, then kill the group."""
    with log.open("wb") as fh:
        proc = subprocess.Popen(
            cmd, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True, env=env
        )
    try:
        yield proc
    finally:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(proc.pid, sig)
                proc.wait(5)
                break
            except ProcessLookupError:
                break
            except subprocess.TimeoutExpired:
                continue


def wait_ready(port: int, proc: subprocess.Popen[bytes], log: Path, timeout_s: float = 30) -> None:
    """POST a chat request to port until it returns the upstream body, or fail."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(
                f"process {proc.pid} exited with {proc.returncode}:\n{log.read_text()}"
            )
        conn = http.client.HTTPConnection(HOST, port, timeout=5)
        try:
            conn.request(
                "POST",
                PATH,
                body=b'{"messages":[]}',
                headers={"Content-Type": "application/json"},
            )
            resp = conn.getresponse()
            body = resp.read().decode()
            if resp.status == 200 and body == UPSTREAM_BODY:
                return
            raise RuntimeError(f"port {port} answered {resp.status}: {body[:200]!r}")
        except OSError:
            time.sleep(0.2)
        finally:
            conn.close()
    raise RuntimeError(f"port {port} not ready after {timeout_s} s:\n{log.read_text()}")


def compiler_running() -> bool:
    """Tell whether a C++ compiler (e.g. a llama.cpp build) is running."""
    pgrep = subprocess.run(["pgrep", "-f", "cc1plus"], check=False, capture_output=True)
    return pgrep.returncode == 0


def cpu_snapshot(pgids: set[int]) -> tuple[float, float, float]:
    """Return CPU seconds so far: (machine busy, machine total, ours).

    Busy is all CPUs' time less idle, iowait and steal; ours is this process, its waited
    children (wrk) and every process in the process groups pgids (nginx, the relay).
    """
    # user nice system idle iowait irq softirq steal
    ticks = [int(v) for v in Path("/proc/stat").read_text().split()[1:9]]
    ours = sum(
        sum(resource.getrusage(who)[:2]) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
    )
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # the process has ended
            continue
        if int(fields[2]) in pgids:  # fields: state ppid pgrp ... utime(11) stime(12)
            ours += (int(fields[11]) + int(fields[12])) / CLK_TCK
    total = sum(ticks)
    return (total - ticks[3] - ticks[4] - ticks[7]) / CLK_TCK, total / CLK_TCK, ours


def other_share(before: tuple[float, float, float], after: tuple[float, float, float]) -> float:
    """Return the share of the machine's CPU time between two snapshots used by others."""
    busy, total, ours = (a - b for a, b in zip(after, before, strict=True))
    return max(busy - ours, 0.0) / max(total, 1e-9)


def wait_until_quiet(pgids: set[int]) -> None:
    """Block while a compiler runs or other processes use more than MAX_OTHER of the CPU."""
    while True:
        before = cpu_snapshot(pgids)
        time.sleep(1)
        other = other_share(before, cpu_snapshot(pgids))
        if compiler_running():
            print("waiting: a compiler (cc1plus) is running; checking again in 15 s", flush=True)
        elif other > MAX_OTHER:
            print(f"waiting: others use {other:.0%} of the CPU; checking again in 15 s", flush=True)
        else:
            return
        time.sleep(15)


def measure(
    name: str, url: str, pgids: set[int], duration: int, runs: int
) -> tuple[dict[int, list[WrkRun]], int]:
    """Warm up and run every scenario against url `runs` times; also return the discarded runs.

    A run during which other processes used more than MAX_OTHER of the CPU is redone.
    """
    results: dict[int, list[WrkRun]] = {}
    discarded = 0
    for conc in SCENARIOS:
        wait_until_quiet(pgids)
        wrk(url, conc, WARMUP_S)
        results[conc] = []
        while len(results[conc]) < runs:
            before = cpu_snapshot(pgids)
            r = wrk(url, conc, duration)
            r.other_cpu = other_share(before, cpu_snapshot(pgids))
            line = f"{name:20} c={conc:<3} other CPU {r.other_cpu:4.0%}: "
            if r.other_cpu > MAX_OTHER:
                discarded += 1
                print(line + "run discarded", flush=True)
                wait_until_quiet(pgids)
                continue
            results[conc].append(r)
            print(
                line + f"run {len(results[conc])}/{runs}: {r.rps:9.0f} req/s  "
                f"p50 {r.p50_ms:.3f} ms  p99 {r.p99_ms:.3f} ms  errors {dict(r.errors)}",
                flush=True,
            )
    return results, discarded


def installed(package: str) -> str:
    """Return the installed version of package, or "not installed"."""
    try:
        return version(package)
    except PackageNotFoundError:
        return "not installed"


def environment(command: str) -> list[str]:
    """Describe the machine and software the numbers came from."""
    cpu = next(
        (
            ln.split(":", 1)[1].strip()
            for ln in Path("/proc/cpuinfo").read_text().splitlines()
            if ln.startswith("model name")
        ),
        "unknown",
    )
    nginx_v = subprocess.run(
        [NGINX, "-v"], check=False, capture_output=True, text=True
    ).stderr.strip()
    wrk_v = (
        subprocess.run(["wrk", "-v"], check=False, capture_output=True, text=True)
        .stdout.split("[")[0]
        .strip()
    )
    libs = ", ".join(f"{lib} {installed(lib)}" for lib in LIBRARIES)
    return [
        f"- Date: {datetime.now(UTC):%Y-%m-%d %H:%M UTC}",
        f"- Command: `{command}`",
        f"- Machine: nproc {len(os.sched_getaffinity(0))}, CPU `{cpu}`, {platform.platform()}",
        f"- Software: Python {platform.python_version()}; {libs}; "
        f"{nginx_v.removeprefix('nginx version: ')}; {wrk_v}",
    ]


def report(
    results: dict[str, dict[int, list[WrkRun]]],
    args: argparse.Namespace,
    command: str,
    wall_s: float,
    discarded: int,
) -> str:
    """Render the results as markdown."""

    max_other = max(r.other_cpu for t in results.values() for runs in t.values() for r in runs)

    def med(target: str, conc: int, attr: str) -> float:
        return float(statistics.median(getattr(r, attr) for r in results[target][conc]))

    lines = [
        "# Upstream HTTP client benchmark: httpx vs aiohttp",
        "",
        *environment(command),
        f"- Wall time: {wall_s:.0f} s; runs redone because other processes used over "
        f"{MAX_OTHER:.0%} of the CPU: {discarded}; at most in a kept run: {max_other:.1%}",
        "",
        (
            f"Upstream: nginx (`worker_processes 1`) returning a fixed {len(UPSTREAM_BODY)}-byte "
            f"chat.completion JSON for `POST {PATH}`; its `keepalive_requests` is raised so "
            "upstream connections are not recycled mid-run. Each relay is one process (uvloop, "
            "one event loop) with one shared upstream client (pool limit 1000, keep-alive); the "
            "Starlette relays run on uvicorn with httptools and no access log. Load: wrk with "
            "`bench/post_chat.lua`, `-t1 -c1` and `-t2 -c64`, "
            f"`--timeout {WRK_TIMEOUT}`, {WARMUP_S} s warm-up, then {args.runs} runs of "
            f"{args.duration} s per scenario. wrk, nginx and the relay share the machine's cores. "
            "Each scenario waits until no compiler runs and other processes use at most "
            f"{MAX_OTHER:.0%} of the CPU; a run during which they used more is redone."
        ),
        "",
        "| target | c | req/s median (min–max) | p50 ms | p99 ms | errors (all runs) |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for target, by_conc in results.items():
        for conc, runs in by_conc.items():
            rps = [r.rps for r in runs]
            errors = sum((r.errors for r in runs), Counter[str]())
            err = ", ".join(f"{k} {v}" for k, v in sorted(errors.items())) or "0"
            lines.append(
                f"| {target} | {conc} | {statistics.median(rps):,.0f} "
                f"({min(rps):,.0f}–{max(rps):,.0f}) | {med(target, conc, 'p50_ms'):.3f} | "
                f"{med(target, conc, 'p99_ms'):.3f} | {err} |"
            )
    lines += [
        "",
        f"| relay | c=64 req/s vs {BARE} | p50 added over direct at c=1 (ms) |",
        "|---|---:|---:|",
    ]
    for relay in RELAYS:
        ratio = med(relay, 64, "rps") / med(BARE, 64, "rps")
        added = med(relay, 1, "p50_ms") - med(DIRECT, 1, "p50_ms")
        lines.append(f"| {relay} | {ratio:.2f}× | {added:.3f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    """Run the whole benchmark and write the markdown report."""
    parser = argparse.ArgumentParser(description="httpx vs aiohttp upstream-client benchmark.")
    parser.add_argument("--duration", type=int, default=10, help="seconds per wrk run")
    parser.add_argument("--runs", type=int, default=5, help="wrk runs per target and concurrency")
    parser.add_argument("--out", type=Path, default=BENCH_DIR / "results" / "http_clients.md")
    args = parser.parse_args()
    command = shlex.join(["python", *sys.argv])
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the cleanup blocks on SIGTERM too
    start = time.monotonic()
    results: dict[str, dict[int, list[WrkRun]]] = {}
    with tempfile.TemporaryDirectory(prefix="turnout-bench-") as tmp_dir:
        tmp = Path(tmp_dir)
        port = free_port()
        conf = tmp / "nginx.conf"
        conf.write_text(
            NGINX_CONF.format(tmp=tmp, host=HOST, port=port, path=PATH, body=UPSTREAM_BODY)
        )
        upstream = f"http://{HOST}:{port}{PATH}"
        nginx_cmd = [NGINX, "-p", str(tmp), "-e", str(tmp / "error.log"), "-c", str(conf)]
        with running(nginx_cmd, tmp / "nginx.out") as nginx:
            wait_ready(port, nginx, tmp / "error.log")
            pgids = {nginx.pid}
            results[DIRECT], discarded = measure(DIRECT, upstream, pgids, args.duration, args.runs)
            for name, kind in RELAYS.items():
                relay_port = free_port()
                cmd = [sys.executable, str(BENCH_DIR / "relays.py"), kind]
                cmd += ["--port", str(relay_port), "--upstream", upstream]
                log = tmp / f"{kind}.log"
                with running(cmd, log) as relay:
                    url = f"http://{HOST}:{relay_port}{PATH}"
                    wait_ready(relay_port, relay, log)
                    results[name], n = measure(
                        name, url, pgids | {relay.pid}, args.duration, args.runs
                    )
                    discarded += n
    text = report(results, args, command, time.monotonic() - start, discarded)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(f"\n{text}\nwritten to {args.out}")


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit(130)
