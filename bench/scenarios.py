"""bench/run.py's proxy scenarios: the same load direct, through the bare relay, turnout, LiteLLM.

Each scenario starts its servers once, then repeats its measurement `runs` times, measuring every
target back to back inside each run, so that drift in the machine's load (it is shared) falls on
all targets alike. Results are plain dicts (saved as JSON, rendered by bench/report.py).
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import soak_client
import targets as T
from loads import RssSampler, group_cpu_s, open_fds, wrk
from stream_client import timed_streams

Log = Callable[[str], None]


@dataclass(frozen=True)
class Params:
    """Sizes of every scenario; `--quick` shrinks them for development."""

    runs: int
    duration_s: float  # one wrk run of the non-streaming scenario
    warmup_s: float
    streams: int  # timed streams per run
    chunks: int
    chunk_delay_ms: float
    conc_streams: int
    conc_chunks: int
    conc_chunk_delay_ms: float  # slow enough that the Python upstream keeps up with 1,000 streams
    conc_duration_s: float
    soak_requests: int
    soak_warmup: int  # requests before the "before" figures
    soak_concurrency: int
    soak_chunks: int  # per stream
    soak_chunk_delay_ms: float  # long enough that a cut stream is cut in the middle
    engine_requests: int
    max_tokens: int
    affinity_requests: int
    profile_s: float
    litellm: bool
    fuzz_per_front: int


FULL = dict(
    runs=5, duration_s=5, warmup_s=2, streams=10, chunks=100, chunk_delay_ms=5,
    conc_streams=1000, conc_chunks=20, conc_chunk_delay_ms=100, conc_duration_s=12,
    soak_requests=100_000, soak_warmup=10_000, soak_concurrency=64, soak_chunks=10,
    soak_chunk_delay_ms=1,
    engine_requests=6, max_tokens=16, affinity_requests=8, profile_s=20,
    litellm=True, fuzz_per_front=5000,
)  # fmt: skip
QUICK = dict(
    runs=2, duration_s=2, warmup_s=1, streams=3, chunks=100, chunk_delay_ms=5,
    conc_streams=1000, conc_chunks=20, conc_chunk_delay_ms=100, conc_duration_s=8,
    soak_requests=10_000, soak_warmup=2_000, soak_concurrency=64, soak_chunks=10,
    soak_chunk_delay_ms=1,
    engine_requests=2, max_tokens=16, affinity_requests=4, profile_s=4,
    litellm=True, fuzz_per_front=200,
)  # fmt: skip


@contextmanager
def proxies(
    tmp: Path, upstream: T.Server, p: Params, relay_kind: str, log: Log
) -> Iterator[list[T.Server]]:
    """The upstream itself plus every proxy in front of it, all started, in measuring order."""
    with ExitStack() as stack:
        servers = [upstream]
        log("starting the bare relay and turnout")
        servers.append(stack.enter_context(T.bare_relay(tmp, upstream, relay_kind)))
        servers.append(stack.enter_context(T.turnout(tmp, upstream)))
        servers.extend(T.fronts(servers[-1]))  # its Anthropic, Ollama and Responses fronts
        if p.litellm:
            log(f"starting LiteLLM {T.LITELLM_PIN.split('==')[1]} (one worker)")
            servers.append(stack.enter_context(T.litellm(tmp, upstream)))
        yield servers


def _ours(servers: list[T.Server]) -> set[int]:
    return {s.pgid for s in servers}


def nonstream(tmp: Path, p: Params, log: Log) -> dict[str, Any]:
    """wrk at c=1 (one thread) and c=64 (two threads) against nginx's fixed chat completion."""
    out: dict[str, Any] = {"c1": {}, "c64": {}}
    with T.nginx_upstream(tmp) as upstream, proxies(tmp, upstream, p, "aiohttp-bare", log) as all_:
        for server in all_:
            wrk(server, connections=64, threads=2, seconds=p.warmup_s)
        for run in range(p.runs):
            for server in all_:
                for conc, threads in ((1, 1), (64, 2)):
                    load = wrk(
                        server,
                        connections=conc,
                        threads=threads,
                        seconds=p.duration_s,
                        ours=_ours(all_),
                    )
                    out[f"c{conc}"].setdefault(server.name, []).append(load.row())
                    log(
                        f"run {run + 1}/{p.runs} {server.name:10} c={conc:<3} {load.rps:8.0f} req/s"
                        f"  p50 {load.p50_ms:.3f} ms  p99 {load.p99_ms:.2f} ms  "
                        f"CPU {load.cpu_us_per_req:.0f} µs/req  errors {load.errors or 0}  "
                        f"others {load.other_cpu:.0%}"
                    )
    return out


def stream(tmp: Path, p: Params, log: Log) -> dict[str, Any]:
    """One stream at a time of `chunks` chunks `chunk_delay_ms` apart; every chunk timed."""
    out: dict[str, Any] = {"chunks": p.chunks, "delay_ms": p.chunk_delay_ms, "targets": {}}
    with (
        T.stream_upstream(tmp, p.chunks, p.chunk_delay_ms) as upstream,
        proxies(tmp, upstream, p, "aiohttp-stream", log) as all_,
    ):
        for server in all_:  # warm-up: connections, imports, caches
            asyncio.run(_streams(server, 2, p))
        for run in range(p.runs):
            for server in all_:
                timings = asyncio.run(_streams(server, p.streams, p))
                delays = [d for t in timings for d in t.delays_ms]
                gaps = [g for t in timings for g in t.gaps_ms]
                row = {
                    "ttft_ms": statistics.median(t.ttft_ms for t in timings),
                    "delay_ms": statistics.median(delays),
                    "delay_p99_ms": _pct(delays, 99),
                    "gap_ms": statistics.median(gaps),
                    "sent_gap_ms": statistics.median(g for t in timings for g in t.sent_gaps_ms),
                    "held_back": sum(t.held_back for t in timings),
                    "chunks": sum(t.chunks for t in timings),
                    "expected_chunks": p.streams * p.chunks,
                }
                out["targets"].setdefault(server.name, []).append(row)
                log(
                    f"run {run + 1}/{p.runs} {server.name:10} TTFT {row['ttft_ms']:.2f} ms  "
                    f"chunk delay {row['delay_ms']:.3f} ms (p99 {row['delay_p99_ms']:.2f})  "
                    f"gap {row['gap_ms']:.2f} ms  held back {row['held_back']}/{row['chunks']}"
                )
    return out


async def _streams(server: T.Server, n: int, p: Params) -> list[Any]:
    """n timed streams in the server's dialect (turnout's fronts as well as OpenAI's)."""
    body = None if server.dialect == "openai" else server.body(True, 128)
    return await timed_streams(
        server.url, n, server.headers, T.MODEL, p.chunk_delay_ms,
        path=server.path, body=body, end=server.stream_end,
    )  # fmt: skip


def streams1000(tmp: Path, p: Params, log: Log) -> dict[str, Any]:
    """`conc_streams` streams open at once (wrk keeps them open), peak RSS of each proxy."""
    out: dict[str, Any] = {
        "streams": p.conc_streams,
        "chunks": p.conc_chunks,
        "delay_ms": p.conc_chunk_delay_ms,
        "targets": {},
    }
    stream_s = p.conc_chunks * p.conc_chunk_delay_ms / 1000
    with (
        T.stream_upstream(tmp, p.conc_chunks, p.conc_chunk_delay_ms) as upstream,
        proxies(tmp, upstream, p, "aiohttp-stream", log) as all_,
    ):
        for run in range(p.runs):
            for server in all_:
                idle = T.rss_mb(server.pgid)
                with RssSampler(server) as sampler:
                    load = wrk(
                        server,
                        connections=p.conc_streams,
                        threads=2,
                        seconds=p.conc_duration_s,
                        stream=True,
                        timeout_s=int(stream_s * 4 + 10),
                        ours=_ours(all_),
                    )
                row = {
                    "idle_rss_mb": idle,
                    "peak_rss_mb": sampler.peak,
                    "completed": load.requests,
                    "errors": load.errors,
                    "p50_ms": load.p50_ms,
                    "p99_ms": load.p99_ms,
                    "cpu_us_per_req": load.cpu_us_per_req,
                }
                out["targets"].setdefault(server.name, []).append(row)
                log(
                    f"run {run + 1}/{p.runs} {server.name:10} {p.conc_streams} streams: peak RSS "
                    f"{sampler.peak:.0f} MB (idle {idle:.0f})  {load.requests} streams done, "
                    f"p50 {load.p50_ms / 1000:.2f} s (alone {stream_s:.1f} s)  "
                    f"errors {load.errors or 0}"
                )
    return out


def soak(tmp: Path, p: Params, log: Log) -> dict[str, Any]:
    """`soak_requests` requests through a fresh proxy per run, a mix of plain ones, streams read
    to the end and streams the client cuts (bench/soak_client.py), `soak_concurrency` at a time,
    over bench/stream_upstream.py: RSS, open file descriptors and (turnout's /stats) asyncio
    tasks at rest after a warm-up and after the soak. LiteLLM is left out: at its rate 100,000
    requests take many minutes per run."""
    out: dict[str, Any] = {
        "requests": p.soak_requests,
        "warmup": p.soak_warmup,
        "concurrency": p.soak_concurrency,
        "mix": soak_client.mix_text(),
        "chunks": p.soak_chunks,
        "delay_ms": p.soak_chunk_delay_ms,
        "targets": {},
    }
    starters = {
        T.BARE: lambda tmp, up: T.bare_relay(tmp, up, "aiohttp-stream"),
        T.TURNOUT: T.turnout,
    }
    with T.stream_upstream(tmp, p.soak_chunks, p.soak_chunk_delay_ms, True) as upstream:
        for run in range(p.runs):
            for name, start in starters.items():
                with start(tmp, upstream) as server:
                    _soak_load(server, p.soak_warmup, p.soak_concurrency, p.soak_chunks)
                    before = _at_rest(server, upstream.port)
                    cpu0 = group_cpu_s(server.pgid)
                    load = _soak_load(server, p.soak_requests, p.soak_concurrency, p.soak_chunks)
                    cpu_s = group_cpu_s(server.pgid) - cpu0
                    after = _at_rest(server, upstream.port)
                    tracebacks = server.log.read_text(errors="replace").count("Traceback")
                row = {
                    **{f"{k}_start": v for k, v in before.items() if k != "counted"},
                    **{f"{k}_end": v for k, v in after.items() if k != "counted"},
                    "growth": after["rss_mb"] / before["rss_mb"] - 1,
                    **load.row(),
                    "counted": _delta(before["counted"], after["counted"]),
                    "log_tracebacks": tracebacks,
                    "cpu_s": cpu_s,
                }
                out["targets"].setdefault(name, []).append(row)
                log(
                    f"run {run + 1}/{p.runs} {name:10} soak {load.requests} requests "
                    f"({load.kinds}) at {load.rps:.0f} req/s: RSS {before['rss_mb']:.1f} -> "
                    f"{after['rss_mb']:.1f} MB ({row['growth']:+.1%}), fds {before['fds']} -> "
                    f"{after['fds']} (upstream connections {before['pooled']} -> "
                    f"{after['pooled']}), tasks {before['tasks']} -> {after['tasks']}, "
                    f"errors {load.errors or 0}, cut late {load.cut_late}, "
                    f"tracebacks {tracebacks}, /stats counted {row['counted']}"
                )
    return out


def _soak_load(server: T.Server, n: int, concurrency: int, chunks: int) -> soak_client.SoakLoad:
    """The upstream sends as many chunks as max_tokens: `chunks` for plain replies and streams
    read to the end, 100 times as many (cut in their middle) for the streams the client cuts."""
    bodies = {
        "plain": server.body(False, chunks),
        "stream": server.body(True, chunks),
        "cut": server.body(True, chunks * 100),
    }
    return asyncio.run(
        soak_client.soak_load(
            server.url + server.path, bodies, n,
            concurrency=concurrency, headers=server.headers, end=server.stream_end,
        )
    )  # fmt: skip


def _at_rest(server: T.Server, upstream_port: int, settle_s: float = 1.0) -> dict[str, Any]:
    """The server at rest, `settle_s` after the client closed its connections: RSS, open file
    descriptors (and the upstream connections its pool keeps alive among them), and from /stats
    (turnout only) its asyncio tasks and the requests counted."""
    time.sleep(settle_s)
    fds, pooled = open_fds(server.pgid, upstream_port)  # before /stats, whose connection counts
    rss = T.rss_mb(server.pgid)
    tasks, counted = None, None
    status, raw = T.get(server.url, "/stats", server.headers)
    if status == 200:
        stats = json.loads(raw)
        tasks = stats["process"]["tasks"]
        counted = {k: v for k, v in stats["requests"].items() if isinstance(v, int)}
    return {"rss_mb": rss, "fds": fds, "pooled": pooled, "tasks": tasks, "counted": counted}


def _delta(before: dict[str, int] | None, after: dict[str, int] | None) -> dict[str, int] | None:
    if before is None or after is None:
        return None
    return {k: after[k] - before.get(k, 0) for k in after if after[k] - before.get(k, 0)}


def _pct(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * pct / 100))]
