"""bench/run.py's profile: py-spy samples turnout under the c=64 non-streaming load and under
concurrent streams; the collapsed stacks become "where the time goes" tables.

py-spy samples the running process from outside (`--nonblocking`: without pausing it, so the
load is not slowed by the sampling), 100 times a second, only while a thread is on the CPU
(idle samples are dropped), and writes one line per distinct stack: `frame;frame;... count`.
Shares below are of the samples taken, i.e. of turnout's busy time.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import targets as T
from loads import wrk

Log = Callable[[str], None]
RATE = 100
#: how a frame's file maps to a component, first match wins
COMPONENTS = (
    ("turnout/", "turnout"),
    ("site-packages/aiohttp/", "aiohttp (upstream client)"),
    ("site-packages/starlette/", "starlette"),
    ("site-packages/uvicorn/", "uvicorn"),
    ("site-packages/httptools/", "httptools"),
    ("site-packages/uvloop/", "uvloop"),
    ("site-packages/orjson", "orjson"),
    ("site-packages/prometheus_client/", "prometheus-client"),
    ("site-packages/pydantic", "pydantic"),
    ("lib/python3", "Python standard library (asyncio...)"),
)


#: functions whose inclusive share bench/notes.md reasons about (matched on `Class.function`)
PARTS = (
    "HttpProvider.request",
    "TraceMiddleware.__call__.<locals>.send_with_overhead",
    "RequestResponseCycle.send",
    "Router._route",
    "OpenAICompatProvider.complete",
    "_while_connected",
    "Telemetry._drain",
    "Telemetry.flush",
    "Telemetry._add",
    "read_json",
    "OpenAICompatProvider.payload",
    "json_response",
    "validate_chat",
    "_conform",
    "Gateway.open_stream",
    "EventStream._pump",
    "_frames",
    "Gateway._metered",
    "Committed.__anext__",
    "OpenAICompatProvider.stream",
    "SSEDecoder.feed",
    "OpenAICompatProvider._chunk",
)


def py_spy() -> str:
    exe = Path(sys.executable).parent / "py-spy"
    found = str(exe) if exe.exists() else shutil.which("py-spy")
    if found is None:
        raise RuntimeError("py-spy is not installed: pip install -r bench/requirements.txt")
    return found


def record(pid: int, seconds: float, out: Path) -> subprocess.Popen[bytes]:
    cmd = [py_spy(), "record", "--nonblocking", "--full-filenames", "--format", "raw"]
    cmd += ["--rate", str(RATE)]
    cmd += ["--duration", str(int(seconds)), "--pid", str(pid), "--output", str(out)]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def frame_name(frame: str) -> str:
    """`send (/…/site-packages/uvicorn/x.py:400)` -> `send (uvicorn/x.py)`: no line, short path."""
    name, _, where = frame.partition(" (")
    path = where.rstrip(")").rsplit(":", 1)[0]
    for marker in ("site-packages/", "lib/python3.11/", "/work/main/"):
        if marker in path:
            path = path.split(marker, 1)[1]
    return f"{name} ({path})" if path else name


def component(frame: str) -> str:
    for marker, name in COMPONENTS:
        if marker in frame:
            return name
    return "other (C extensions, interpreter)"


def analyse(collapsed: Path, top: int = 12) -> dict[str, Any]:
    """Self time by function, inclusive time by function, and self time by component."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    components: Counter[str] = Counter()
    total = 0
    for line in collapsed.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack:
            continue
        count = int(count_text)
        frames = [f for f in stack.split(";") if not f.startswith(("process ", "thread "))]
        if not frames:
            continue
        total += count
        own[frame_name(frames[-1])] += count
        components[component(frames[-1])] += count
        for name in {frame_name(f) for f in frames}:
            inclusive[name] += count

    def shares(counter: Counter[str], n: int) -> list[tuple[str, float]]:
        return [(name, c / max(total, 1)) for name, c in counter.most_common(n)]

    turnout_inclusive = Counter(
        {k: v for k, v in inclusive.items() if "turnout/" in k and "turnout/cli/" not in k}
    )
    turnout_inclusive.pop("<module> (turnout/__main__.py)", None)
    by_function: Counter[str] = Counter()
    for name, count in inclusive.items():
        by_function[name.split(" (")[0]] += count
    return {
        "parts": [(part, by_function[part] / max(total, 1)) for part in PARTS],
        "samples": total,
        "self": shares(own, top),
        "components": shares(components, len(COMPONENTS) + 1),
        "turnout_inclusive": shares(turnout_inclusive, top),
    }


def profile(tmp: Path, seconds: float, log: Log) -> dict[str, Any]:
    """Profile turnout under c=64 non-streaming load and under 64 concurrent streams."""
    out: dict[str, Any] = {"rate": RATE, "seconds": seconds}
    loads = {
        "non-streaming, c=64": False,
        "streaming, 64 concurrent streams of 100 chunks 5 ms apart": True,
    }
    for label, stream in loads.items():
        with ExitStack() as stack:
            if stream:
                upstream = stack.enter_context(T.stream_upstream(tmp, 100, 5))
            else:
                upstream = stack.enter_context(T.nginx_upstream(tmp))
            gw = stack.enter_context(T.turnout(tmp, upstream))
            pid = T.main_pid(gw.pgid, "turnout")
            wrk(gw, connections=64, threads=2, seconds=2, stream=stream)  # warm-up
            path = tmp / f"profile-{'stream' if stream else 'nonstream'}.txt"
            spy = record(pid, seconds, path)
            loader = threading.Thread(
                target=wrk,
                kwargs=dict(
                    server=gw, connections=64, threads=2, seconds=seconds + 2, stream=stream
                ),
            )
            loader.start()
            _, err = spy.communicate(timeout=seconds + 60)
            loader.join()
            if spy.returncode != 0 or not path.exists():
                raise RuntimeError(f"py-spy failed ({spy.returncode}): {err.decode()[-2000:]}")
            out[label] = analyse(path)
            log(f"profiled {label}: {out[label]['samples']} samples")
    return out
