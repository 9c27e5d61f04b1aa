"""The servers bench/run.py measures and measures through: upstreams, relays, turnout, LiteLLM.

Every server listens on 127.0.0.1 only, runs in its own process group under coreutils `timeout`
(so it dies by itself even if the harness is killed without cleaning up), and is stopped when
its context manager exits, also on Ctrl-C or an exception.
"""

from __future__ import annotations

import dataclasses
import http.client
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from http_clients import HOST, NGINX, UPSTREAM_BODY, free_port, installed, running

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
WORK = BENCH_DIR / ".work"
LITELLM_VENV = WORK / "litellm-venv"
LITELLM_PIN = "litellm[proxy]==1.106.2"
LITELLM_KEY = "sk-turnout-bench"
MODEL = "gpt-4o-mini"
CHAT = "/v1/chat/completions"
#: no server the harness starts outlives this, whatever happens to the harness
SERVER_MAX_S = 3 * 3600

DIRECT, BARE, TURNOUT, LITELLM = "direct", "bare relay", "turnout", "LiteLLM"

NGINX_CONF = """\
daemon off;
worker_processes 1;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log warn;
events {{ worker_connections 8192; }}
http {{
    access_log off;
    keepalive_requests 100000000;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    server {{
        listen {host}:{port} backlog=4096;
        location = /v1/chat/completions {{
            default_type application/json;
            return 200 '{body}';
        }}
        location = /v1/models {{
            default_type application/json;
            return 200 '{models}';
        }}
    }}
}}
"""
MODELS_BODY = json.dumps(
    {"object": "list", "data": [{"id": MODEL, "object": "model", "owned_by": "bench"}]},
    separators=(",", ":"),
)


@dataclass
class Server:
    """A running server: where to reach it, its process group and what to send it."""

    name: str
    url: str  # base URL, no trailing slash
    proc: subprocess.Popen[bytes]
    log: Path
    headers: dict[str, str] = field(default_factory=dict)
    #: the client dialect the load speaks to it (FRONTS): path, request body, stream end marker
    dialect: str = "openai"

    @property
    def path(self) -> str:
        return FRONTS[self.dialect][0]

    def body(self, stream: bool, max_tokens: int = 16) -> dict[str, object]:
        """The request the load sends, in the server's dialect."""
        return FRONTS[self.dialect][1](stream, max_tokens)

    @property
    def stream_end(self) -> bytes:
        return FRONTS[self.dialect][2]

    @property
    def pgid(self) -> int:
        return self.proc.pid

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    @property
    def auth(self) -> str:
        return self.headers.get("Authorization", "").removeprefix("Bearer ")


_ASK = "Say hello in one short sentence."


def _openai(stream: bool, n: int) -> dict[str, object]:
    body: dict[str, object] = {"model": MODEL, "messages": [{"role": "user", "content": _ASK}]}
    return {**body, "max_tokens": n, **({"stream": True} if stream else {})}


def _anthropic(stream: bool, n: int) -> dict[str, object]:
    return _openai(stream, n)  # the same fields: model, messages, max_tokens, stream


def _ollama(stream: bool, n: int) -> dict[str, object]:
    body: dict[str, object] = {"model": MODEL, "messages": [{"role": "user", "content": _ASK}]}
    return {**body, "stream": stream, "options": {"num_predict": n}}


def _responses(stream: bool, n: int) -> dict[str, object]:
    body: dict[str, object] = {"model": MODEL, "input": _ASK, "max_output_tokens": n}
    return {**body, **({"stream": True} if stream else {})}


#: dialect -> (path, body(stream, max_tokens), what ends a stream)
Body = Callable[[bool, int], dict[str, object]]
FRONTS: dict[str, tuple[str, Body, bytes]] = {
    "openai": (CHAT, _openai, b"[DONE]"),
    "anthropic": ("/v1/messages", _anthropic, b"message_stop"),
    "ollama": ("/api/chat", _ollama, b'"done":true'),
    "responses": ("/v1/responses", _responses, b"response.completed"),
}


def fronts(server: Server) -> list[Server]:
    """turnout's other fronts, as targets of their own: the same process, another dialect."""
    return [
        dataclasses.replace(server, name=f"{server.name} {dialect}", dialect=dialect)
        for dialect in FRONTS
        if dialect != "openai"
    ]


def bounded(cmd: list[str]) -> list[str]:
    """cmd, killed by coreutils timeout after SERVER_MAX_S at the latest."""
    return ["timeout", "--kill-after=10", str(SERVER_MAX_S), *cmd]


def group_pids(pgid: int) -> list[int]:
    """The processes of process group pgid, except coreutils `timeout` itself."""
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        comm = text[text.index("(") + 1 : text.rindex(")")]
        fields = text.rsplit(")", 1)[1].split()
        if int(fields[2]) == pgid and comm != "timeout":
            pids.append(int(stat.parent.name))
    return sorted(pids)


def rss_mb(pgid: int) -> float:
    """Resident memory of the server's processes (VmRSS summed over its group), in MB."""
    total_kb = 0
    for pid in group_pids(pgid):
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total_kb += int(line.split()[1])
        except OSError:
            continue
    return total_kb / 1024


def main_pid(pgid: int, needle: str) -> int:
    """The pid in group pgid whose command line contains needle (the process to profile)."""
    for pid in group_pids(pgid):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if needle in cmdline:
            return pid
    raise RuntimeError(f"no process of group {pgid} runs {needle!r}")


def post_json(
    url: str, body: dict[str, object], headers: dict[str, str], timeout: float = 10
) -> tuple[int, bytes]:
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
    try:
        conn.request(
            "POST",
            CHAT,
            body=json.dumps(body),
            headers={"Content-Type": "application/json", **headers},
        )
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def get(url: str, path: str, headers: dict[str, str], timeout: float = 10) -> tuple[int, bytes]:
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
    try:
        conn.request("GET", path, headers=headers)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def wait_ready(server: Server, timeout_s: float = 120, model: str = MODEL) -> None:
    """POST a chat request until it is answered with a chat completion, or fail."""
    deadline = time.monotonic() + timeout_s
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    last = ""
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            raise RuntimeError(
                f"{server.name} exited with {server.proc.returncode}:\n{tail(server.log)}"
            )
        try:
            status, reply = post_json(server.url, body, server.headers)
        except OSError as exc:
            last = repr(exc)
            time.sleep(0.3)
            continue
        if status == 200 and b'"choices"' in reply:
            return
        last = f"HTTP {status}: {reply[:300]!r}"
        time.sleep(0.5)
    raise RuntimeError(f"{server.name} not ready after {timeout_s} s ({last}):\n{tail(server.log)}")


def tail(log: Path, chars: int = 3000) -> str:
    try:
        return log.read_text(errors="replace")[-chars:]
    except OSError:
        return "(no log)"


@contextmanager
def serve(
    name: str, cmd: list[str], port: int, tmp: Path, *, env: dict[str, str] | None = None,
    headers: dict[str, str] | None = None, ready_s: float = 120, ready_model: str = MODEL,
) -> Iterator[Server]:  # fmt: skip
    log = tmp / f"{name.replace(' ', '-')}-{port}.log"
    with running(bounded(cmd), log, env=env) as proc:
        server = Server(name, f"http://{HOST}:{port}", proc, log, headers or {})
        wait_ready(server, ready_s, ready_model)
        yield server


@contextmanager
def nginx_upstream(tmp: Path) -> Iterator[Server]:
    """nginx (one worker) answering every chat request with the same fixed chat completion."""
    port = free_port()
    conf = tmp / f"nginx-{port}.conf"
    conf.write_text(
        NGINX_CONF.format(tmp=tmp, host=HOST, port=port, body=UPSTREAM_BODY, models=MODELS_BODY)
    )
    cmd = [NGINX, "-p", str(tmp), "-e", str(tmp / "error.log"), "-c", str(conf)]
    with serve(DIRECT, cmd, port, tmp) as server:
        yield server


@contextmanager
def stream_upstream(
    tmp: Path, chunks: int, delay_ms: float, max_tokens_chunks: bool = False
) -> Iterator[Server]:
    """bench/stream_upstream.py: every request streamed as `chunks` paced SSE chunks (or as
    many as its max_tokens, with `max_tokens_chunks`)."""
    port = free_port()
    cmd = [sys.executable, str(BENCH_DIR / "stream_upstream.py"), "--port", str(port)]
    cmd += ["--chunks", str(chunks), "--delay-ms", str(delay_ms)]
    cmd += ["--max-tokens-chunks"] if max_tokens_chunks else []
    with serve(DIRECT, cmd, port, tmp) as server:
        yield server


@contextmanager
def bare_relay(tmp: Path, upstream: Server, kind: str = "aiohttp-bare") -> Iterator[Server]:
    """bench/relays.py's aiohttp server + aiohttp client relay: the floor of a Python gateway."""
    port = free_port()
    cmd = [sys.executable, str(BENCH_DIR / "relays.py"), kind, "--port", str(port)]
    cmd += ["--upstream", upstream.url + CHAT]
    with serve(BARE, cmd, port, tmp) as server:
        yield server


def turnout_config(upstream: Server) -> str:
    """turnout's default configuration plus one `openai` provider at the upstream (YAML),
    without the embedded default's model beside it (the relay is what is measured)."""
    return (
        "embedded: false\n"
        "providers:\n"
        "  bench:\n"
        "    type: openai\n"
        f"    endpoint: {upstream.url}\n"
        f"    models: [{MODEL}]\n"
    )


@contextmanager
def turnout(
    tmp: Path,
    upstream: Server | None,
    config: str | None = None,
    ready_model: str = MODEL,
    env: dict[str, str] | None = None,
) -> Iterator[Server]:
    """`python -m turnout serve` on a generated configuration file, in its own process."""
    port = free_port()
    path = tmp / f"turnout-{port}.yaml"
    if config is None:
        assert upstream is not None, "turnout needs an upstream or a configuration"
        config = turnout_config(upstream)
    path.write_text(config)
    cmd = [sys.executable, "-m", "turnout", "serve", "--config", str(path), "--port", str(port)]
    env = {**(env or repo_env())}
    # Its usage ledger in a fresh file of its own: the user's default database holds every row
    # any earlier run wrote (it grew to 669 MB of bench rows here), and a big ledger makes each
    # insert dearer, so figures would depend on what ran before.
    env.setdefault("TURNOUT_STORAGE__DATABASE_URL", f"sqlite:///{tmp / f'turnout-{port}.db'}")
    with serve(TURNOUT, cmd, port, tmp, env=env, ready_model=ready_model) as server:
        yield server


def repo_env() -> dict[str, str]:
    """The environment for processes that import turnout from this checkout."""
    return {**os.environ, "PYTHONPATH": str(REPO)}


def ensure_litellm() -> Path:
    """LiteLLM's proxy in its own virtual environment under bench/.work (created if missing)."""
    exe = LITELLM_VENV / "bin" / "litellm"
    python = LITELLM_VENV / "bin" / "python"
    if exe.exists() and litellm_version() == LITELLM_PIN.split("==")[1]:
        return exe
    print(f"installing {LITELLM_PIN} into {LITELLM_VENV} (once; a few minutes)", flush=True)
    if not python.exists():
        base = shutil.which("python3") or sys.executable
        subprocess.run([base, "-m", "venv", str(LITELLM_VENV)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "-q", LITELLM_PIN], check=True)
    return exe


def litellm_version() -> str:
    python = LITELLM_VENV / "bin" / "python"
    if not python.exists():
        return "not installed"
    out = subprocess.run(
        [str(python), "-c", "import importlib.metadata as m; print(m.version('litellm'))"],
        capture_output=True,
        text=True,
        check=False,
    )
    return out.stdout.strip() or "not installed"


@contextmanager
def litellm(tmp: Path, upstream: Server) -> Iterator[Server]:
    """LiteLLM's proxy, one worker, one model at the upstream, with a master key."""
    exe = ensure_litellm()
    port = free_port()
    path = tmp / f"litellm-{port}.yaml"
    path.write_text(
        "model_list:\n"
        f"  - model_name: {MODEL}\n"
        "    litellm_params:\n"
        f"      model: openai/{MODEL}\n"
        f"      api_base: {upstream.url}/v1\n"
        "      api_key: sk-upstream-unused\n"
        "general_settings:\n"
        f"  master_key: {LITELLM_KEY}\n"
    )
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))},
        "LITELLM_MASTER_KEY": LITELLM_KEY,
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
        "LITELLM_LOG": "ERROR",
    }
    cmd = [str(exe), "--config", str(path), "--host", HOST, "--port", str(port)]
    cmd += ["--num_workers", "1"]
    headers = {"Authorization": f"Bearer {LITELLM_KEY}"}
    with serve(LITELLM, cmd, port, tmp, env=env, headers=headers, ready_s=240) as server:
        yield server


def versions() -> dict[str, str]:
    """Versions of what the figures depend on."""
    libs = ["aiohttp", "starlette", "uvicorn", "uvloop", "httptools", "orjson", "llama_cpp_python"]
    out = {lib: installed(lib) for lib in libs}
    out["turnout"] = installed("turnout")
    out["litellm"] = litellm_version()
    return out
