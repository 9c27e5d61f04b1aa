"""`turnout bench`: measure a model through a running gateway or any OpenAI-compatible server."""

from __future__ import annotations

import asyncio
import math
import statistics
import time
from dataclasses import dataclass
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from .common import UrlOption, app, console, err_console

__all__ = ["Sample", "Summary", "percentile", "run_bench", "summarise"]

DEFAULT_PROMPT = "Write a short paragraph about the sea."


@dataclass(slots=True)
class Sample:
    """One request as the client saw it; ``error`` is set instead of the timings on failure."""

    latency_s: float = 0.0
    ttft_s: float | None = None
    tokens: int | None = None  # completion tokens: the reply's usage, else content chunks counted
    tokens_counted: bool = False  # True when counted from chunks (no usage in the reply)
    decode_s: float | None = None  # first to last content chunk
    error: str | None = None


@dataclass(slots=True)
class Summary:
    requests: int
    failed: int
    wall_s: float
    latency_s: list[float]
    ttft_s: list[float]
    tok_s: list[float]  # per request: completion tokens / latency
    decode_tok_s: list[float]  # per request: tokens after the first / time between them
    tokens: int
    tokens_counted: bool
    errors: list[str]

    @property
    def throughput_tok_s(self) -> float:
        return self.tokens / self.wall_s if self.wall_s > 0 else 0.0

    @property
    def requests_s(self) -> float:
        return (self.requests - self.failed) / self.wall_s if self.wall_s > 0 else 0.0


def percentile(values: list[float], pct: float) -> float:
    """The pct-th percentile by linear interpolation between closest ranks (NaN if empty)."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = (len(ordered) - 1) * pct / 100
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def summarise(samples: list[Sample], wall_s: float) -> Summary:
    ok = [s for s in samples if s.error is None]
    return Summary(
        requests=len(samples),
        failed=len(samples) - len(ok),
        wall_s=wall_s,
        latency_s=[s.latency_s for s in ok],
        ttft_s=[s.ttft_s for s in ok if s.ttft_s is not None],
        tok_s=[s.tokens / s.latency_s for s in ok if s.tokens and s.latency_s > 0],
        decode_tok_s=[
            (s.tokens - 1) / s.decode_s for s in ok if s.tokens and s.tokens > 1 and s.decode_s
        ],
        tokens=sum(s.tokens or 0 for s in ok),
        tokens_counted=any(s.tokens_counted for s in ok),
        errors=[s.error for s in samples if s.error is not None],
    )


async def _one(http: Any, url: str, body: dict[str, Any]) -> Sample:
    import orjson

    start = time.perf_counter()
    async with http.post(url, data=orjson.dumps(body)) as resp:
        if resp.status != 200:
            raw = await resp.read()
            try:
                message = orjson.loads(raw)["error"]["message"]
            except (orjson.JSONDecodeError, KeyError, TypeError):
                message = raw[:200].decode("utf-8", "replace")
            return Sample(error=f"HTTP {resp.status}: {message}")
        if not body["stream"]:
            reply = orjson.loads(await resp.read())
            latency = time.perf_counter() - start
            tokens = (reply.get("usage") or {}).get("completion_tokens")
            return Sample(latency_s=latency, tokens=tokens)
        first = last = None
        chunks = 0
        usage: int | None = None
        async for line in resp.content:
            if not line.startswith(b"data: {"):
                continue
            event = orjson.loads(line[6:])
            if "error" in event:
                return Sample(error=f"stream error: {event['error'].get('message')}")
            if event.get("usage"):
                usage = event["usage"].get("completion_tokens")
            for choice in event.get("choices") or ():
                delta = choice.get("delta") or {}
                if delta.get("content") or choice.get("text") or delta.get("tool_calls"):
                    last = time.perf_counter()
                    first = first if first is not None else last
                    chunks += 1
        latency = time.perf_counter() - start
    return Sample(
        latency_s=latency,
        ttft_s=None if first is None else first - start,
        tokens=usage if usage is not None else chunks,
        tokens_counted=usage is None,
        decode_s=None if first is None or last is None else last - first,
    )


async def run_bench(
    base: str,
    model: str | None,
    requests: int,
    concurrency: int,
    max_tokens: int,
    stream: bool,
    prompt: str,
    api_key: str | None = None,
    progress: Progress | None = None,
) -> tuple[str, Summary]:
    """Send ``requests`` chat completions, ``concurrency`` at a time; return the model used and
    the summary. Raises `ConnectionError` if the server cannot be reached at all."""
    import aiohttp

    headers = {"Content-Type": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    timeout = aiohttp.ClientTimeout(total=None, connect=10, sock_read=600)
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(headers=headers, timeout=timeout, connector=connector) as http:
        try:
            if model is None:
                async with http.get(f"{base}/v1/models") as resp:
                    data = (await resp.json()).get("data") or []
                if not data:
                    raise ValueError(f"{base}/v1/models lists no models; pass --model")
                model = str(data[0]["id"])
            body: dict[str, Any] = {
                "model": model,
                "messages": [{"role": "user", "content": prompt}],
                "max_tokens": max_tokens,
                "stream": stream,
            }
            if stream:
                body["stream_options"] = {"include_usage": True}
            url = f"{base}/v1/chat/completions"
            task = progress.add_task(f"{model}: requests", total=requests) if progress else None
            pending = iter(range(requests))
            samples: list[Sample] = []

            async def worker() -> None:
                for _ in pending:
                    try:
                        sample = await _one(http, url, body)
                    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
                        sample = Sample(error=f"{type(exc).__name__}: {exc}")
                    samples.append(sample)
                    if progress is not None and task is not None:
                        progress.advance(task)

            start = time.perf_counter()
            await asyncio.gather(*(worker() for _ in range(min(concurrency, requests))))
            wall = time.perf_counter() - start
        except aiohttp.ClientConnectorError as exc:
            raise ConnectionError(f"cannot reach {base}: {exc.os_error or exc}") from None
    if samples and all(s.error and s.error.startswith("ClientConnector") for s in samples):
        raise ConnectionError(f"cannot reach {base}: {samples[0].error}")
    return model, summarise(samples, wall)


def _ms(value: float) -> str:
    return "–" if math.isnan(value) else f"{value * 1000:,.1f}"


def _rate(value: float) -> str:
    return "–" if math.isnan(value) else f"{value:,.1f}"


def table(model: str, summary: Summary, stream: bool) -> Table:
    """The results as a Rich table: one row per measure, percentiles across requests."""
    out = Table(title=f"turnout bench: {model}", title_justify="left")
    out.add_column("measure")
    for name in ("p50", "p90", "p99", "mean", "min", "max"):
        out.add_column(name, justify="right")

    def row(label: str, values: list[float], fmt: Any) -> None:
        mean = statistics.fmean(values) if values else math.nan
        low, high = (min(values), max(values)) if values else (math.nan, math.nan)
        cells = [percentile(values, p) for p in (50, 90, 99)] + [mean, low, high]
        out.add_row(label, *(fmt(v) for v in cells))

    row("latency (ms)", summary.latency_s, _ms)
    if stream:
        row("time to first token (ms)", summary.ttft_s, _ms)
        row("decode tokens/s (per request)", summary.decode_tok_s, _rate)
    row("tokens/s (per request)", summary.tok_s, _rate)
    return out


@app.command()
def bench(
    url: UrlOption = "http://127.0.0.1:8400",
    model: Annotated[
        str | None, typer.Option("--model", "-m", help="Model (default: first listed).")
    ] = None,
    requests: Annotated[
        int, typer.Option("--requests", "-n", min=1, help="Requests to send.")
    ] = 20,
    concurrency: Annotated[
        int, typer.Option("--concurrency", "-c", min=1, help="Requests in flight at once.")
    ] = 1,
    max_tokens: Annotated[int, typer.Option(min=1, help="Longest answer, in tokens.")] = 64,
    stream: Annotated[bool, typer.Option(help="Stream (measures time to first token).")] = True,
    prompt: Annotated[str, typer.Option(help="What to ask.")] = DEFAULT_PROMPT,
    api_key: Annotated[
        str | None, typer.Option(envvar="TURNOUT_BENCH_API_KEY", help="Bearer token to send.")
    ] = None,
) -> None:
    """Measure tokens/s, time to first token and latency percentiles of a model, through a
    running gateway or any OpenAI-compatible server (--url)."""
    base = url.rstrip("/").removesuffix("/v1")
    columns = (
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    try:
        with Progress(*columns, console=console, transient=True) as progress:
            used, summary = asyncio.run(
                run_bench(
                    base, model, requests, concurrency, max_tokens, stream, prompt, api_key,
                    progress,
                )
            )  # fmt: skip
    except (ConnectionError, ValueError) as exc:
        err_console.print(f"[red]{escape(str(exc))}[/red]", soft_wrap=True)
        raise typer.Exit(1) from None
    console.print(table(used, summary, stream))
    counted = " (counted as content chunks: the server sent no usage)" * summary.tokens_counted
    console.print(
        f"{summary.requests - summary.failed}/{summary.requests} requests succeeded in "
        f"{summary.wall_s:.2f} s at concurrency {concurrency}: {summary.requests_s:.2f} req/s, "
        f"{summary.throughput_tok_s:,.1f} completion tokens/s overall, "
        f"{summary.tokens} tokens{counted}"
    )
    if summary.errors:
        err_console.print(
            f"[red]{summary.failed} failed; first error: {escape(summary.errors[0])}[/red]",
            soft_wrap=True,
        )
        raise typer.Exit(1)
