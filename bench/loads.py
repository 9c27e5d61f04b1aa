"""Load and observation helpers for bench/run.py: wrk runs, CPU and memory of server processes."""

from __future__ import annotations

import json
import os
import re
import subprocess
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from http_clients import CLK_TCK, cpu_snapshot, other_share, parse_wrk
from targets import Server, group_pids, rss_mb

BENCH_DIR = Path(__file__).resolve().parent
LUA = BENCH_DIR / "chat.lua"


@dataclass
class Load:
    """One wrk run against one server."""

    rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    errors: dict[str, int]
    other_cpu: float  # share of the machine's CPU others used meanwhile
    cpu_us_per_req: float  # CPU time of the server's processes per request

    def row(self) -> dict[str, Any]:
        return asdict(self)


def group_cpu_s(pgid: int) -> float:
    """CPU seconds (user + system) used so far by the processes of group pgid."""
    total = 0
    for pid in group_pids(pgid):
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / CLK_TCK


def open_fds(pgid: int, peer_port: int | None = None) -> tuple[int, int]:
    """Open file descriptors of the processes of group pgid (/proc/PID/fd), and how many of them
    are TCP connections to `peer_port` (/proc/net/tcp: e.g. kept-alive connections to an
    upstream, which an idle pool keeps for a while)."""
    total, sockets = 0, set()
    for pid in group_pids(pgid):
        try:
            links = [os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")]
        except OSError:
            continue
        total += len(links)
        sockets |= {link[8:-1] for link in links if link.startswith("socket:[")}
    if peer_port is None:
        return total, 0
    to_peer = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if int(fields[2].rsplit(":", 1)[1], 16) == peer_port and fields[9] in sockets:
                to_peer += 1
    return total, to_peer


def wrk(
    server: Server,
    *,
    connections: int,
    threads: int,
    seconds: float,
    stream: bool = False,
    timeout_s: int = 10,
    ours: set[int] | None = None,
) -> Load:
    """Run wrk (bench/chat.lua) against server and measure it and the machine meanwhile."""
    cmd = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{int(seconds)}s", "--latency"]
    cmd += ["--timeout", f"{timeout_s}s", "-s", str(LUA), server.url + server.path]
    env = {**os.environ, "BENCH_STREAM": "1" if stream else "0", "BENCH_AUTH": server.auth}
    if server.dialect != "openai":
        env["BENCH_BODY"] = json.dumps(server.body(stream), separators=(",", ":"))
    pgids = (ours or set()) | {server.pgid}
    before, cpu0 = cpu_snapshot(pgids), group_cpu_s(server.pgid)
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout
    after, cpu1 = cpu_snapshot(pgids), group_cpu_s(server.pgid)
    parsed = parse_wrk(out)
    total = re.search(r"^\s*(\d+) requests in", out, re.MULTILINE)
    requests = int(total[1]) if total else 0
    return Load(
        rps=parsed.rps,
        p50_ms=parsed.p50_ms,
        p99_ms=parsed.p99_ms,
        requests=requests,
        errors=dict(parsed.errors),
        other_cpu=other_share(before, after),
        cpu_us_per_req=(cpu1 - cpu0) / max(requests, 1) * 1e6,
    )


class RssSampler:
    """Sample a server's RSS every `interval` seconds in a thread; keep the peak."""

    def __init__(self, server: Server, interval: float = 0.05) -> None:
        self.server = server
        self.interval = interval
        self.peak = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_mb(self.server.pgid))
            time.sleep(self.interval)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_mb(self.server.pgid))


def load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])
