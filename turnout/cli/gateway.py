"""Commands about the gateway itself: serve, demo, chat, config check, version."""

from __future__ import annotations

import asyncio
import enum
import re
import time
from typing import Annotated, Any

import typer
from rich.markup import escape

from .. import __version__
from ..config import Config
from ..errors import ConfigError
from ..telemetry.logs import RequestLog, configure as configure_logs
from .common import ConfigOption, UrlOption, app, console, err_console, load


class LogFormat(enum.StrEnum):
    """``turnout serve --log-format`` (turnout/telemetry/logs.py)."""

    text = "text"
    json = "json"


config_app = typer.Typer(help="Check and show the configuration.", no_args_is_help=True)
app.add_typer(config_app, name="config")

#: header names whose values are credentials, masked like api_key when configuration is shown
_SECRET_HEADER = re.compile(r"authorization|key|token|secret|cookie|password", re.IGNORECASE)


def _uvicorn_server(cfg: Config, log_level: str | None = None) -> Any:
    """uvicorn, serving the gateway with turnout's connection deadlines and graceful shutdown
    (turnout/server/serving.py)."""
    from ..gateway import Gateway
    from ..server.serving import Server

    try:
        gateway = Gateway(cfg)
    except ConfigError as exc:
        err_console.print(f"[red]{escape(str(exc))}[/red]", soft_wrap=True)
        raise typer.Exit(2) from None
    host = cfg.server.host
    gateway.address = f"http://{f'[{host}]' if ':' in host else host}:{cfg.server.port}"
    server = Server(gateway, log_level)
    _redact_logs()  # after uvicorn.Config (made by Server): it installs its own handlers
    return server


def _redact_logs() -> None:
    from ..server.serving import redact_logs

    redact_logs()


@app.command()
def serve(
    config: ConfigOption = None,
    host: Annotated[str | None, typer.Option(help="Interface to listen on.")] = None,
    port: Annotated[int | None, typer.Option(help="Port to listen on.")] = None,
    log_format: Annotated[
        LogFormat,
        typer.Option(help="Log lines as readable text, or as one JSON object a line (json)."),
    ] = LogFormat.text,
    database_url: Annotated[
        str | None, typer.Option("--database-url", help="Keys and ledger (storage.database_url).")
    ] = None,
    allow_unauthenticated: Annotated[
        bool,
        typer.Option("--allow-unauthenticated", help="Serve beyond loopback without gateway keys."),
    ] = False,
    workers: Annotated[
        int | None,
        typer.Option(min=1, max=256, help="Gateway processes on the port (server.workers; Linux)."),
    ] = None,
) -> None:
    """Start the gateway (127.0.0.1:8400 unless told otherwise). On SIGTERM or SIGINT it stops
    taking requests, lets those in flight finish for server.shutdown_grace_seconds, ends the rest
    with an error, and exits 0; a second signal stops it at once. With --workers N, N processes
    share the port, the keys, limits (with storage.redis_url) and ledger, and /stats and
    /metrics add them up."""
    cfg = load(config, host, port)
    if database_url:
        cfg = cfg.model_copy(
            update={"storage": cfg.storage.model_copy(update={"database_url": database_url})}
        )
    server_updates: dict[str, Any] = {}
    if allow_unauthenticated:
        server_updates["allow_unauthenticated"] = True
    if workers is not None:
        server_updates["workers"] = workers
    if server_updates:
        cfg = cfg.model_copy(update={"server": cfg.server.model_copy(update=server_updates)})
    if cfg.server.workers > 1:
        from ..server.workers import serve_workers

        configure_logs(log_format.value, cfg.server.log_level)
        raise typer.Exit(serve_workers(cfg, log_format.value))
    server = _uvicorn_server(cfg)
    server.gateway.telemetry.add_sink(RequestLog())  # one log line a request, from the drain
    # after uvicorn.Config (made by Server), which installs its own handlers: uvicorn's records
    # go through turnout's handler, in the format asked for
    configure_logs(log_format.value, cfg.server.log_level)
    _redact_logs()
    server.run()
    if not server.started:  # the lifespan refused (it logged why): say so with the exit status
        raise typer.Exit(1)


@app.command()
def demo(
    prompt: Annotated[
        str, typer.Argument(help="What to ask.")
    ] = "Write one sentence about the sea.",
    config: ConfigOption = None,
    port: Annotated[int | None, typer.Option(help="Port for the gateway.")] = None,
    max_tokens: Annotated[int, typer.Option(help="Longest answer, in tokens.")] = 48,
    keep_serving: Annotated[
        bool, typer.Option(help="Keep the gateway running afterwards.")
    ] = False,
) -> None:
    """Start the gateway, send it one real chat request over HTTP, print the answer."""
    cfg = load(config, port=port)
    asyncio.run(_demo(cfg, prompt, max_tokens, keep_serving))


async def _demo(cfg: Config, prompt: str, max_tokens: int, keep_serving: bool) -> None:
    import aiohttp

    server = _uvicorn_server(cfg, log_level="warning")
    task = asyncio.create_task(server.serve())
    started = time.perf_counter()
    with console.status("Starting the gateway and loading the model..."):
        while not server.started:
            if task.done():
                raise typer.Exit(1)
            await asyncio.sleep(0.1)
    base = f"http://{cfg.server.host}:{cfg.server.port}"
    console.print(
        f"[green]turnout is serving on {base}[/green] ({time.perf_counter() - started:.1f}s)"
    )
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{base}/v1/models") as resp:
            models = [m["id"] for m in (await resp.json())["data"]]
        model = models[0] if models else "gemma-3-270m"
        body = {
            "model": model,
            "max_tokens": max_tokens,
            "messages": [{"role": "user", "content": prompt}],
        }
        console.print(f"[bold]POST {base}/v1/chat/completions[/bold] model={model}")
        console.print(f"[bold]>[/bold] {prompt}")
        t0 = time.perf_counter()
        async with http.post(f"{base}/v1/chat/completions", json=body) as resp:
            reply = await resp.json()
    if "error" in reply:
        err_console.print(f"[red]error: {reply['error']['message']}[/red]")
        server.should_exit = True
        await task
        raise typer.Exit(1)
    answer = reply["choices"][0]["message"]["content"]
    usage = reply.get("usage", {})
    console.print(f"[cyan]{answer.strip()}[/cyan]")
    console.print(
        f"[dim]{usage.get('prompt_tokens')} prompt + {usage.get('completion_tokens')} completion "
        f"tokens in {time.perf_counter() - t0:.2f}s from {reply.get('model')}[/dim]"
    )
    if not keep_serving:
        server.should_exit = True
    await task


@app.command()
def chat(
    prompt: Annotated[str, typer.Argument(help="What to ask.")],
    model: Annotated[
        str | None, typer.Option("--model", "-m", help="Model (default: first listed).")
    ] = None,
    url: UrlOption = "http://127.0.0.1:8400",
    max_tokens: Annotated[int, typer.Option(help="Longest answer, in tokens.")] = 128,
    stream: Annotated[bool, typer.Option(help="Print tokens as they arrive.")] = True,
) -> None:
    """Send one chat request to a running gateway and print the answer."""
    import aiohttp

    base = url.rstrip("/")
    try:
        asyncio.run(_chat(base, prompt, model, max_tokens, stream))
    except aiohttp.ClientConnectionError as exc:
        why = getattr(exc, "os_error", None) or exc
        err_console.print(
            f"[red]cannot reach a gateway at {escape(base)} ({escape(str(why))}); start one with "
            "`turnout serve`, or name another with --url[/red]",
            soft_wrap=True,
        )
        raise typer.Exit(1) from None
    except aiohttp.ClientError as exc:  # something answered, but not as a gateway does
        err_console.print(f"[red]{escape(base)}: {escape(str(exc))}[/red]", soft_wrap=True)
        raise typer.Exit(1) from None


async def _chat(base: str, prompt: str, model: str | None, max_tokens: int, stream: bool) -> None:
    import aiohttp
    import orjson

    async with aiohttp.ClientSession() as http:
        if model is None:
            async with http.get(f"{base}/v1/models") as resp:
                data = (await resp.json())["data"]
            if not data:
                err_console.print("[red]the gateway lists no models[/red]")
                raise typer.Exit(1)
            model = data[0]["id"]
        body = {
            "model": model,
            "max_tokens": max_tokens,
            "stream": stream,
            "messages": [{"role": "user", "content": prompt}],
        }
        async with http.post(f"{base}/v1/chat/completions", json=body) as resp:
            if resp.status != 200:
                err_console.print(
                    f"[red]HTTP {resp.status}: {(await resp.json())['error']['message']}[/red]"
                )
                raise typer.Exit(1)
            if not stream:
                reply = await resp.json()
                console.print(reply["choices"][0]["message"]["content"])
                return
            async for line in resp.content:
                if not line.startswith(b"data: ") or line.startswith(b"data: [DONE]"):
                    continue
                event = orjson.loads(line[6:])
                if "error" in event:
                    err_console.print(f"\n[red]{event['error']['message']}[/red]")
                    raise typer.Exit(1)
                for choice in event.get("choices", ()):
                    console.print(choice["delta"].get("content") or "", end="")
            console.print()


@config_app.command("check")
def config_check(config: ConfigOption = None) -> None:
    """Validate the configuration (file plus environment) and print what turnout will use."""
    cfg = load(config)
    shown = cfg.model_dump(mode="json", exclude_defaults=False)
    for provider in shown.get("providers", {}).values():
        if provider.get("api_key"):
            provider["api_key"] = "***"
        for header in provider.get("headers") or {}:
            if _SECRET_HEADER.search(header):
                provider["headers"][header] = "***"
    from ..store import safe_url

    for url in ("database_url", "redis_url"):  # their passwords, if any
        if shown["storage"].get(url):
            shown["storage"][url] = safe_url(shown["storage"][url])
    import yaml

    # soft_wrap: a wrapped line would no longer be the YAML it shows
    text = yaml.safe_dump(shown, sort_keys=False)
    console.print(text, end="", markup=False, highlight=False, soft_wrap=True)
    console.print("[green]configuration is valid[/green]")


@app.command()
def version() -> None:
    """Print turnout's version."""
    console.print(__version__)
