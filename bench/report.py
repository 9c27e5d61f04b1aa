"""Render bench/run.py's results (a JSON-able dict) as docs/benchmarks.md.

Every figure is the median over runs with the minimum and maximum beside it; every comparison
is a ratio against a baseline measured in the same run (paired run by run, then the median of
the per-run ratios, with their min and max), because absolute times drift on a shared machine.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from targets import BARE, DIRECT, LITELLM, TURNOUT

BENCH_DIR = Path(__file__).resolve().parent
NOTES = BENCH_DIR / "notes.md"
NA = "n/a"


def spread(values: Sequence[float], fmt: str = "{:.2f}") -> str:
    """`median (min–max)`."""
    if not values:
        return NA
    med = statistics.median(values)
    if len(values) == 1:
        return fmt.format(med)
    return f"{fmt.format(med)} ({fmt.format(min(values))}–{fmt.format(max(values))})"


def paired(
    rows: dict[str, list[dict[str, Any]]], a: str, b: str, f: Callable[[Any, Any], float]
) -> list[float]:
    """f(run of a, run of b) for every run both have."""
    if a not in rows or b not in rows:
        return []
    return [f(x, y) for x, y in zip(rows[a], rows[b], strict=False)]


def col(rows: dict[str, list[dict[str, Any]]], target: str, key: str) -> list[float]:
    return [r[key] for r in rows.get(target, [])]


def verdict(ok: bool | None) -> str:
    return NA if ok is None else ("**pass**" if ok else "**miss**")


def _arrows(rows: list[dict[str, Any]], key: str, fmt: str) -> str:
    """`start → end` of each run, e.g. `65.2 → 65.4` (runs separated by `; `)."""
    pairs = [(r.get(f"{key}_start"), r.get(f"{key}_end")) for r in rows]
    return "; ".join(
        NA if a is None or b is None else f"{fmt.format(a)} → {fmt.format(b)}" for a, b in pairs
    )


def _others(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per run, the open fds other than the kept-alive upstream connections, start and end."""
    return [
        {f"other_{e}": r[f"fds_{e}"] - r[f"pooled_{e}"] for e in ("start", "end")}
        if "pooled_start" in r
        else {}
        for r in rows
    ]


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


class Report:
    def __init__(self, results: dict[str, Any]) -> None:
        self.r = results
        self.targets: list[tuple[str, str, str, str]] = []  # what, measured, target, verdict
        self.lines: list[str] = []

    def add(self, *lines: str) -> None:
        self.lines.extend(lines)

    def target(self, what: str, measured: str, goal: str, ok: bool | None) -> None:
        self.targets.append((what, measured, goal, verdict(ok)))

    def nonstream(self, res: dict[str, Any]) -> None:
        c1, c64 = res["c1"], res["c64"]
        self.add(
            "## Non-streaming: latency at c=1, throughput at c=64",
            "",
            "wrk (`bench/chat.lua`) against nginx's fixed chat completion: `-t1 -c1` and "
            "`-t2 -c64`. CPU µs/req is the CPU time of the server's own processes per request "
            "(from /proc), a load-independent measure of its cost.",
            "",
            "| target | c=1 p50 ms | c=1 req/s | c=64 req/s | c=64 p99 ms | CPU µs/req (c=64) "
            "| errors |",
            "|---|---:|---:|---:|---:|---:|---|",
        )
        for t in c1:
            errors = sum(sum(r["errors"].values()) for r in c1[t] + c64[t])
            self.add(
                f"| {t} | {spread(col(c1, t, 'p50_ms'), '{:.3f}')} | "
                f"{spread(col(c1, t, 'rps'), '{:,.0f}')} | {spread(col(c64, t, 'rps'), '{:,.0f}')}"
                f" | {spread(col(c64, t, 'p99_ms'), '{:.1f}')} | "
                f"{spread(col(c64, t, 'cpu_us_per_req'), '{:.0f}')} | {errors} |"
            )

        def added(t: str) -> list[float]:
            return paired(c1, t, DIRECT, lambda x, d: x["p50_ms"] - d["p50_ms"])

        self.add(
            "",
            "| proxy | p50 added over direct at c=1 (ms) | added vs bare relay's | "
            "c=64 req/s vs bare relay | c=64 req/s vs LiteLLM |",
            "|---|---:|---:|---:|---:|",
        )
        for t in (BARE, TURNOUT, LITELLM):
            if t not in c1:
                continue
            vs_bare = [a / max(b, 1e-6) for a, b in zip(added(t), added(BARE), strict=False)]
            rps_bare = paired(c64, t, BARE, lambda x, b: x["rps"] / b["rps"])
            rps_ll = paired(c64, t, LITELLM, lambda x, b: x["rps"] / b["rps"])
            self.add(
                f"| {t} | {spread(added(t), '{:.3f}')} | {spread(vs_bare, '{:.2f}×')} | "
                f"{spread(rps_bare, '{:.2f}×')} | {spread(rps_ll, '{:.1f}×')} |"
            )
        self.add("")
        tu, bare, ll = _median(added(TURNOUT)), _median(added(BARE)), _median(added(LITELLM))
        # paired run by run, like every other ratio here
        vs_bare = [t / max(b, 1e-6) for t, b in zip(added(TURNOUT), added(BARE), strict=False)]
        vs_ll = [x / max(t, 1e-6) for t, x in zip(added(TURNOUT), added(LITELLM), strict=False)]
        if tu is not None and bare is not None:
            ratio = statistics.median(vs_bare)
            self.target(
                "c=1 p50 latency added over direct, vs the bare relay's",
                f"{ratio:.2f}× (medians: {tu:.3f} ms vs {bare:.3f} ms)",
                "≤ 2×",
                ratio <= 2,
            )
        if tu is not None and ll is not None:
            ratio = statistics.median(vs_ll)
            self.target(
                "c=1 p50 latency added over direct, vs LiteLLM's",
                f"1/{ratio:.1f} (medians: {tu:.3f} ms vs {ll:.3f} ms)",
                "≤ 1/20",
                ratio >= 20,
            )
        self._fronts(c1, c64, added)
        for base, goal, factor in ((BARE, "≥ 0.6×", 0.6), (LITELLM, "≥ 30×", 30.0)):
            ratios = paired(c64, TURNOUT, base, lambda x, b: x["rps"] / b["rps"])
            if ratios:
                ratio = statistics.median(ratios)
                self.target(
                    f"c=64 throughput vs {base}",
                    f"{ratio:.2f}× ({min(ratios):.2f}–{max(ratios):.2f})",
                    goal,
                    ratio >= factor,
                )

    def _fronts(self, c1: Any, c64: Any, added: Any) -> None:
        """turnout's Anthropic, Ollama and Responses fronts against its OpenAI front (issue 14:
        each within 1.3× of its cost): c=1 latency added over direct, c=64 throughput."""
        fronts = [t for t in c1 if t.startswith(TURNOUT + " ")]
        if not fronts:
            return
        self.add(
            "| front | c=1 added over direct (ms) | vs the OpenAI front's | c=64 req/s vs the "
            "OpenAI front |",
            "|---|---:|---:|---:|",
        )
        for t in fronts:
            cost = [a / max(b, 1e-6) for a, b in zip(added(t), added(TURNOUT), strict=False)]
            rps = paired(c64, TURNOUT, t, lambda x, f: x["rps"] / max(f["rps"], 1e-6))
            self.add(
                f"| {t} | {spread(added(t), '{:.3f}')} | {spread(cost, '{:.2f}×')} | "
                f"{spread([1 / r for r in rps], '{:.2f}×')} |"
            )
            if cost:
                ratio = statistics.median(cost)
                self.target(f"{t}: c=1 added latency vs the OpenAI front's", f"{ratio:.2f}×",
                            "≤ 1.3×", ratio <= 1.3)  # fmt: skip
        self.add("")

    def stream(self, res: dict[str, Any]) -> None:
        rows = res["targets"]
        self.add(
            "## Streaming: one stream at a time",
            "",
            f"`bench/stream_upstream.py` streams {res['chunks']} chunks {res['delay_ms']:g} ms "
            "apart, each stamped with its send time on the machine's monotonic clock; "
            "`bench/stream_client.py` (an asyncio client: wrk cannot time single chunks) times "
            "every chunk. Chunk delay = arrival − send; held back = chunks that arrived in the "
            "same socket read as the one before although sent at least half a spacing later.",
            "",
            "| target | TTFT ms | TTFT added ms | chunk delay ms | delay added ms | chunk delay "
            "p99 ms | arrival gap ms | held back / chunks |",
            "|---|---:|---:|---:|---:|---:|---:|---|",
        )
        for t in rows:
            ttft_added = paired(rows, t, DIRECT, lambda x, d: x["ttft_ms"] - d["ttft_ms"])
            delay_added = paired(rows, t, DIRECT, lambda x, d: x["delay_ms"] - d["delay_ms"])
            held = sum(r["held_back"] for r in rows[t])
            got = sum(r["chunks"] for r in rows[t])
            want = sum(r["expected_chunks"] for r in rows[t])
            self.add(
                f"| {t} | {spread(col(rows, t, 'ttft_ms'))} | {spread(ttft_added, '{:.3f}')} | "
                f"{spread(col(rows, t, 'delay_ms'), '{:.3f}')} | "
                f"{spread(delay_added, '{:.3f}')} | {spread(col(rows, t, 'delay_p99_ms'))} | "
                f"{spread(col(rows, t, 'gap_ms'))} | {held} / {got} (of {want}) |"
            )
        self.add("")
        added = _median(paired(rows, TURNOUT, DIRECT, lambda x, d: x["ttft_ms"] - d["ttft_ms"]))
        if added is not None:
            bare = _median(paired(rows, BARE, DIRECT, lambda x, d: x["ttft_ms"] - d["ttft_ms"]))
            self.target(
                "streaming: time to first token added over direct",
                f"{added:.3f} ms" + (f" (bare relay {bare:.3f} ms)" if bare is not None else ""),
                "≤ 1 ms",
                added <= 1.0,
            )
            held = sum(r["held_back"] for r in rows[TURNOUT])
            got = sum(r["chunks"] for r in rows[TURNOUT])
            want = sum(r["expected_chunks"] for r in rows[TURNOUT])
            floor = max(sum(r["held_back"] for r in rows.get(t, [])) for t in (DIRECT, BARE))
            self.target(
                "streaming: chunks held back (arrived coalesced) / missing",
                f"{held} held back ({held / max(got, 1):.2%}), {want - got} missing of {want}; "
                f"noise floor (direct, bare relay): {floor}",
                "none beyond the floor + 0.5% of chunks",
                held <= floor + 0.005 * got and got == want,
            )

    def streams1000(self, res: dict[str, Any]) -> None:
        rows = res["targets"]
        self.add(
            f"## {res['streams']:,} concurrent streams: memory",
            "",
            f"wrk holds {res['streams']:,} streams open (`-c{res['streams']}`), each "
            f"{res['chunks']} chunks {res['delay_ms']:g} ms apart; the server's RSS (VmRSS of its "
            "processes, /proc) is sampled every 50 ms; the same server serves every run, so "
            '"before" is idle only in the first. The direct row is the upstream itself.',
            "",
            "| target | RSS before MB | peak RSS MB | peak vs bare relay | streams completed | "
            "stream p50 s | errors |",
            "|---|---:|---:|---:|---:|---:|---|",
        )
        for t in rows:
            vs = paired(rows, t, BARE, lambda x, b: x["peak_rss_mb"] / b["peak_rss_mb"])
            errors: dict[str, int] = {}
            for r in rows[t]:
                for k, v in r["errors"].items():
                    errors[k] = errors.get(k, 0) + v
            self.add(
                f"| {t} | {spread(col(rows, t, 'idle_rss_mb'), '{:.0f}')} | "
                f"{spread(col(rows, t, 'peak_rss_mb'), '{:.0f}')} | {spread(vs, '{:.2f}×')} | "
                f"{spread(col(rows, t, 'completed'), '{:.0f}')} | "
                f"{spread([r['p50_ms'] / 1000 for r in rows[t]])} | "
                f"{', '.join(f'{k} {v}' for k, v in errors.items()) or 0} |"
            )
        self.add("")
        peak = _median(col(rows, TURNOUT, "peak_rss_mb"))
        if peak is not None:
            self.target(
                f"{res['streams']:,} concurrent streams: peak RSS",
                f"{peak:.0f} MB",
                "< 300 MB",
                peak < 300,
            )

    def soak(self, res: dict[str, Any]) -> None:
        rows = res["targets"]
        self.add(
            f"## Soak: {res['requests']:,} requests, streamed and not, some cut by the client",
            "",
            "A fresh server per run over `bench/stream_upstream.py` (streams of "
            f"{res.get('chunks', NA)} chunks {res.get('delay_ms', NA)} ms apart, the same text "
            "at once when not streamed; the streams to be cut ask for 100 times as many chunks, "
            "so that the cut comes in their middle). `bench/soak_client.py` (aiohttp) sends "
            f"{res.get('warmup', 0):,} requests to warm up, then the stated number, "
            f"{res.get('concurrency', 64)} at a time, in the mix {res.get('mix', NA)}: plain "
            "replies, streams read to their end marker, and streams the client cuts (it reads "
            "the first piece, then closes the connection). At rest, a second after each load's "
            "connections closed: RSS (VmRSS of the server's processes), open file descriptors "
            "(/proc/PID/fd; the upstream connections an idle pool keeps alive for a while "
            "counted apart, from /proc/net/tcp), other fds = the rest, and live asyncio tasks "
            "(turnout's `/stats`, `process.tasks`). "
            "Errors = a non-200, a stream without its end marker, a client-side failure; cut "
            "late = cut streams that had already ended; counted = what `/stats` recorded "
            "meanwhile. LiteLLM is left out: at its rate one soak takes many minutes.",
            "",
            "| target | requests | req/s | RSS start → end MB | growth | fds start → end | "
            "upstream connections | other fds | tasks start → end | errors | cut late | "
            "tracebacks in log | /stats counted |",
            "|---|---:|---:|---|---:|---|---|---|---|---|---:|---:|---|",
        )
        for t in rows:
            errors: dict[str, int] = {}
            for r in rows[t]:
                for k, v in r["errors"].items():
                    errors[k] = errors.get(k, 0) + v
            last = rows[t][-1]
            counted = last.get("counted")
            self.add(
                f"| {t} | {spread(col(rows, t, 'requests'), '{:,.0f}')} | "
                f"{spread(col(rows, t, 'rps'), '{:,.0f}')} | "
                f"{_arrows(rows[t], 'rss_mb', '{:.1f}')} | "
                f"{spread([100 * g for g in col(rows, t, 'growth')], '{:+.1f}%')} | "
                f"{_arrows(rows[t], 'fds', '{}')} | {_arrows(rows[t], 'pooled', '{}')} | "
                f"{_arrows(_others(rows[t]), 'other', '{}')} | "
                f"{_arrows(rows[t], 'tasks', '{}')} | "
                f"{', '.join(f'{k} {v}' for k, v in errors.items()) or 0} | "
                f"{sum(r.get('cut_late', 0) for r in rows[t])} | "
                f"{sum(r.get('log_tracebacks', 0) for r in rows[t])} | "
                f"{', '.join(f'{k} {v:,}' for k, v in counted.items()) if counted else NA} |"
            )
        self.add("")
        growth = col(rows, TURNOUT, "growth")
        if growth:
            self.target(
                f"soak of {res['requests']:,} requests: RSS growth",
                f"{100 * statistics.median(growth):+.1f}% (max {100 * max(growth):+.1f}%)",
                "< 5%",
                statistics.median(growth) < 0.05,
            )
        ours = rows.get(TURNOUT, [])
        if ours and "tasks_end" in ours[0]:
            errors_n = sum(sum(r["errors"].values()) for r in ours)
            traced = sum(r["log_tracebacks"] for r in ours)
            others = _others(ours)
            self.target(
                f"soak of {res['requests']:,} requests: asyncio tasks and open fds (other than "
                "kept-alive upstream connections) at rest, after vs before; errors; tracebacks "
                "in the log",
                f"tasks {_arrows(ours, 'tasks', '{}')}, fds {_arrows(others, 'other', '{}')}; "
                f"{errors_n} errors; {traced} tracebacks",
                "no more after; 0; 0",
                all(r["tasks_end"] <= r["tasks_start"] for r in ours)
                and all(o["other_end"] <= o["other_start"] for o in others)
                and errors_n == traced == 0,
            )
            counted = [r["counted"] or {} for r in ours]
            self.target(
                f"soak of {res['requests']:,} requests: `/stats` records each request once, "
                "each cut stream as cancelled",
                "; ".join(f"{c.get('total', 0):,} of {r['requests']:,}, {c.get('cancelled', 0):,} "
                          f"cancelled of {r['kinds'].get('cut', 0):,} cut"
                          for c, r in zip(counted, ours, strict=True)),
                "all, all",
                all(c.get("total") == r["requests"] and c.get("cancelled") == r["kinds"].get("cut")
                    for c, r in zip(counted, ours, strict=True)),
            )  # fmt: skip

    def fuzz(self, res: dict[str, Any]) -> None:
        fronts = res["fronts"]
        self.add(
            f"## Fuzzing: {res['per_front']:,} generated requests per front",
            "",
            "`bench/fuzz.py`, the generator of CI's `tests/integration/test_fuzz.py` (500 per "
            "front) imported from `tests/support/front_fuzz.py`: bodies from the request schemas "
            "of turnout's own `/openapi.json`, valid and broken the ways clients break them, "
            "derandomized"
            + (f" (seed {res['seed']})" if res.get("seed") else "")
            + ", one at a time on a kept-alive connection to `turnout serve` over the fast fake "
            "of `tests/fakes/fast.py`, which answers whatever it can parse: every 5xx is "
            "turnout's own. Other wrong = a refusal outside the front's error dialect or an "
            "internal error in the body; tracebacks = signs of an unhandled exception the "
            "front's requests left in the gateway's log.",
            "",
            "| front | requests | statuses | turnout's 5xx | other wrong | tracebacks in log | "
            "wall s | most frequent refusal |",
            "|---|---:|---|---:|---:|---:|---:|---|",
        )
        for path, r in fronts.items():
            statuses = ", ".join(f"{s}: {n:,}" for s, n in r["statuses"].items())
            top = next(iter(r["refusals"].items()), None)
            refused = f"{top[0].replace('|', '/')} ({top[1]:,})" if top else ""
            self.add(
                f"| `{path}` | {r['sent']:,} | {statuses} | {r['own_5xx']} | "
                f"{r['other_wrong']} | {r['log_tracebacks']} | {r['wall_s']:.0f} | {refused} |"
            )
        rows = list(fronts.values())
        sent = sum(r["sent"] for r in rows)
        five = sum(r["own_5xx"] for r in rows)
        other = sum(r["other_wrong"] for r in rows)
        self.add(
            "",
            f"{sent:,} requests in {res['wall_s'] / 60:.1f} min; the fake backend received "
            f"{res['backend_requests']:,} requests; the plain request of each front answered "
            f"{res['plain_ok']}/{len(fronts)}; the gateway's log: {res['log_bytes']:,} bytes, "
            f"{res['log_tracebacks']} signs of an unhandled exception.",
            "",
        )
        self.target(
            f"fuzzing, {res['per_front']:,} requests per front: turnout's 5xx, other wrong "
            "answers, tracebacks in the log",
            f"{five}, {other}, {res['log_tracebacks']} ({sent:,} requests)",
            "0, 0, 0",
            five == other == res["log_tracebacks"] == 0
            and all(r["sent"] >= res["per_front"] for r in rows),
        )

    def engine(self, res: dict[str, Any]) -> None:
        self.add(
            "## Embedded engine against raw llama-cpp-python",
            "",
            f"The Gemma 3 270M GGUF (Q4_K_M), {res['threads']} threads, n_ctx 2048, the same "
            f"prompt, greedy, `max_tokens` {res['max_tokens']}, streamed. Raw: "
            "`Llama.create_chat_completion` in its own process; turnout: `turnout serve` with "
            "an `embedded` provider, over HTTP. Tokens/s = completion tokens / time from request "
            "to end of stream (prompt evaluation included); decode tok/s = between first and "
            f"last token. Same text both sides: {res.get('same_text')}.",
            "",
            "| side | tok/s | decode tok/s | TTFT ms | tokens |",
            "|---|---:|---:|---:|---:|",
        )
        rows = {"raw llama-cpp-python": res["raw"], "turnout embedded": res["turnout"]}
        for name, runs in rows.items():
            self.add(
                f"| {name} | {spread([r['tok_s'] for r in runs], '{:.1f}')} | "
                f"{spread([r['decode_tok_s'] for r in runs], '{:.1f}')} | "
                f"{spread([r['ttft_ms'] for r in runs], '{:.0f}')} | {runs[0]['tokens']} |"
            )
        pairs = res.get("pairs") or [
            t["tok_s"] / r["tok_s"] for t, r in zip(res["turnout"], res["raw"], strict=False)
        ]
        others = res.get("other_cpu") or []
        self.add(
            "",
            "turnout / raw tokens per second, each turnout request against the raw one just "
            f"before it ({len(pairs)} pairs): {spread(pairs, '{:.3f}')}"
            + (f"; others used {spread(others, '{:.0%}')} of the CPU meanwhile" if others else ""),
            "",
        )
        self.target(
            "embedded engine tokens/s vs raw llama-cpp-python",
            f"{statistics.median(pairs):.3f}× "
            f"({len(pairs)} pairs, {min(pairs):.2f}–{max(pairs):.2f})",
            "≥ 0.95×",
            statistics.median(pairs) >= 0.95,
        )

    def affinity(self, res: dict[str, Any]) -> None:
        self.add("## Prefix-affinity against round-robin", "")
        if not res.get("available"):
            self.add(f"Not available in this build: {res.get('reason')}", "")
            self.target("prefix-affinity vs round-robin median TTFT", NA, "≥ 2× lower", None)
            return
        rr, pa = res["strategies"]["round_robin"], res["strategies"]["prefix_affinity"]
        self.add(
            "Two `llama_cpp.server` replicas on the Gemma GGUF behind one turnout route; "
            f"{res['requests']} streamed requests per run, one at a time, two ~500-token "
            f"documents in the order {res['order']}; time to first token through turnout.",
            "",
            "| strategy | median TTFT ms | replicas that served (last run) |",
            "|---|---:|---|",
            f"| round_robin | {spread([r['ttft_ms'] for r in rr], '{:.0f}')} | "
            f"{' '.join(rr[-1]['backends'])} |",
            f"| prefix_affinity | {spread([r['ttft_ms'] for r in pa], '{:.0f}')} | "
            f"{' '.join(pa[-1]['backends'])} |",
            "",
        )
        ratio = [r["ttft_ms"] / p["ttft_ms"] for r, p in zip(rr, pa, strict=False)]
        self.target(
            "prefix-affinity: round-robin median TTFT / prefix-affinity's",
            f"{statistics.median(ratio):.2f}× ({min(ratio):.2f}–{max(ratio):.2f})",
            "≥ 2×",
            statistics.median(ratio) >= 2,
        )

    def profile(self, res: dict[str, Any]) -> None:
        self.add(
            "## Where the time goes (py-spy)",
            "",
            f"py-spy samples turnout {res['rate']} times a second for {res['seconds']:g} s under "
            "each load (`--nonblocking`, busy samples only). Shares are of turnout's busy time.",
            "",
        )
        for label, prof in res.items():
            if not isinstance(prof, dict):
                continue
            self.add(f"### {label} ({prof['samples']} samples)", "")
            self.add("| component (self time) | share |", "|---|---:|")
            self.add(*(f"| {n} | {s:.1%} |" for n, s in prof["components"]), "")
            self.add("| function (self time) | share |", "|---|---:|")
            self.add(*(f"| `{n}` | {s:.1%} |" for n, s in prof["self"]), "")
            self.add("| turnout function (inclusive) | share |", "|---|---:|")
            self.add(*(f"| `{n}` | {s:.1%} |" for n, s in prof["turnout_inclusive"]), "")
            parts = [(n, s) for n, s in prof.get("parts", ()) if s > 0]
            if parts:
                self.add("| selected function (inclusive), for the notes below | share |")
                self.add("|---|---:|", *(f"| `{n}` | {s:.1%} |" for n, s in parts), "")


def render(results: dict[str, Any]) -> str:
    rep = Report(results)
    meta = results["meta"]
    for key in (
        "nonstream", "stream", "streams1000", "soak", "fuzz", "engine", "affinity", "profile"
    ):  # fmt: skip
        if key not in results:
            continue
        start = len(rep.lines)
        getattr(rep, key)({k: v for k, v in results[key].items() if k != "run"})
        run = results[key].get("run", {})
        if run and run.get("command") != meta["command"]:  # merged from an earlier run
            rep.lines.insert(
                start + 2,
                f"From a separate run, {run['date']}: `{run['command']}` (load average before "
                f"{run.get('load_before')}, after {run.get('load_after')}).",
            )
            rep.lines.insert(start + 3, "")
    head = [
        "# Benchmarks",
        "",
        "Generated by `bench/run.py` (issue 6); do not edit by hand: rerun it. "
        "Hand-written analysis comes from `bench/notes.md`.",
        "",
        f"- Command: `{meta['command']}` ({meta['mode']} mode, {meta['runs']} runs per "
        f"measurement, wall time {meta['wall_s'] / 60:.0f} min, {meta['date']})",
        f"- Machine: nproc {meta['nproc']}, `{meta['cpu']}`, {meta['memory']}, {meta['platform']}",
        f"- Load average (1, 5, 15 min) before: {meta['load_before']}; after: "
        f"{meta['load_after']}. The machine was shared with other work; each load records the "
        "share of CPU others used meanwhile (median "
        f"{meta.get('others_median', 0):.0%}, max {meta.get('others_max', 0):.0%}).",
        f"- Software: {meta['software']}",
        "- Targets: direct = the upstream itself; bare relay = `bench/relays.py` (aiohttp server + "
        "aiohttp client, the floor of any Python gateway); turnout = `python -m turnout serve` "
        "with its default configuration plus one `openai` provider at the upstream; LiteLLM = "
        "its proxy, one worker, one model at the same upstream, master key set. Everything on "
        "127.0.0.1, sharing the machine's cores with the load generator.",
        "",
        "## Targets (issue 6, item 4)",
        "",
        "| target | measured | goal | verdict |",
        "|---|---|---|---|",
        *(f"| {w} | {m} | {g} | {v} |" for w, m, g, v in rep.targets),
        "",
    ]
    notes = NOTES.read_text().strip() if NOTES.exists() else ""
    tail = ["## Analysis and suggestions", "", notes, ""] if notes else []
    return "\n".join(head + rep.lines + tail).rstrip() + "\n"
