"""``turnout serve --workers N`` (``server.workers``): N gateway processes on one port.

The parent process checks what several workers cannot serve honestly (`check`), runs the
database's migrations once, reserves the port, makes a private folder for the workers' shared
statistics and Prometheus files, then starts N workers (Python's *spawn*: each a fresh
interpreter, so each has its own ledger ids and prometheus-client's multiprocess mode from the
start) and supervises them. Each worker is the single-process gateway, unchanged
(turnout/server/serving.py), listening on its own socket bound with ``SO_REUSEPORT``: Linux
spreads new connections over the workers' sockets, where one shared socket lets whichever worker
wakes first take a whole burst of connections. Keys, limits, budgets and the usage ledger are
shared the way separate instances share them: the database, and Redis when
``storage.redis_url`` is set; ``/stats`` and ``/metrics`` add up every worker
(turnout/telemetry/workers.py).

SIGTERM or SIGINT to the parent is passed to every worker, which drains as one process does
(a second signal, a second later or more, cuts what is left); the parent exits 0 once every
worker has exited 0. A worker that dies after it started serving is replaced; one that dies
before it ever served stops them all (exit 1). A worker whose parent is gone (killed) stops by
itself within a second.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import signal
import socket
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from ..config import Config
from ..errors import ConfigError

__all__ = ["WorkersRefused", "check", "serve_workers"]

log = logging.getLogger("turnout.server")


class WorkersRefused(Exception):
    """What several workers cannot serve honestly; the message says what to do instead."""


@dataclass(frozen=True)
class _Spec:
    """What a worker gets from its parent (pickled: spawn)."""

    config: Config
    log_format: str
    state: str  # the parent's folder: stats/ (turnout/telemetry/workers.py) and metrics/
    parent: int
    ready: Any  # a multiprocessing Event, set once the worker serves


def check(cfg: Config) -> list[str]:
    """Raise `WorkersRefused` for a configuration several workers would serve wrongly; run the
    database's migrations (once, before the workers); the warnings to log otherwise."""
    n = cfg.server.workers
    if sys.platform != "linux":
        raise WorkersRefused(
            f"--workers {n} (server.workers) needs Linux: the workers share the port with "
            "SO_REUSEPORT, which only Linux spreads across processes. Serve one worker."
        )
    _refuse_in_process(cfg)
    keys = asyncio.run(_keys(cfg))
    warnings = []
    if not cfg.storage.redis_url:
        limited = [k.name for k in keys if k.live(time.time()) and _limited(k)]
        user = cfg.limits.user_rpm is not None or cfg.limits.user_tpm is not None
        if limited or user:
            what = f"key(s) {', '.join(map(repr, limited))}" if limited else "limits.user_*"
            raise WorkersRefused(
                f"--workers {n} without storage.redis_url: {what} set rate limits or budgets, "
                f"and each worker would count them on its own (up to {n}x each limit). Set "
                "storage.redis_url (TURNOUT_STORAGE__REDIS_URL) to share them, or serve one "
                "worker."
            )
        warnings.append(
            f"{n} workers without storage.redis_url: each worker counts rate limits and "
            f"budgets on its own, so a key given limits while serving gets up to {n}x them; "
            "set storage.redis_url to share them"
        )
    if any(p.max_concurrency is not None for p in cfg.providers.values()):
        warnings.append(
            "each worker has its own backend slots and fair queue: a provider's "
            f"max_concurrency applies per worker (up to {n}x it in all)"
        )
    return warnings


def _limited(key: Any) -> bool:
    return key.rpm is not None or key.tpm is not None or key.budget is not None


def _refuse_in_process(cfg: Config) -> None:
    """No embedded provider: each worker would load the model again (and start its own model
    servers), N copies in memory competing for the same cores or GPU."""
    from ..gateway import Gateway, served_configs

    embedded = [
        name for name, p in served_configs(cfg).items() if p.enabled and p.dialect == "embedded"
    ]
    if embedded:
        default = "embedded" in embedded and "embedded" not in cfg.providers
        where = (
            "the built-in embedded model (served because `embedded` is unset or true)"
            if default
            else f"providers.{embedded[0]} (type embedded)"
        )
        raise WorkersRefused(
            f"--workers {cfg.server.workers}: {where} runs its model inside the gateway "
            "process, and each worker would load its own copy. Serve local models from one "
            "`turnout serve` and list it as an `openai` provider of the gateway with workers"
            + (", or set `embedded: false` (TURNOUT_EMBEDDED=false)." if default else ".")
        )
    try:
        Gateway(cfg)  # a provider's configuration error, told once by the parent
    except ConfigError as exc:
        raise WorkersRefused(str(exc)) from None


async def _keys(cfg: Config) -> list[Any]:
    from ..store import open_store
    from ..store.sql import StoreError

    store = open_store(cfg.storage.database_url)
    try:
        await store.open()  # the migrations, once: the workers find them done
        keys, _ = await store.load_keys()
    except StoreError as exc:
        raise WorkersRefused(f"the key store cannot be opened: {exc}") from None
    finally:
        await store.close()
    return keys


def bind(host: str, port: int) -> socket.socket:
    """A socket bound to the port with ``SO_REUSEPORT`` (the parent's reservation, or a
    worker's listener)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


def serve_workers(cfg: Config, log_format: str) -> int:
    """Run ``server.workers`` gateway processes until a signal stops them; the exit status."""
    try:
        for warning in check(cfg):
            log.warning("%s", warning)
    except WorkersRefused as exc:
        log.error("%s", exc)
        return 2
    try:
        reserved = bind(cfg.server.host, cfg.server.port)  # not listening: no connection waits
    except OSError as exc:
        log.error("cannot listen on %s:%d: %s", cfg.server.host, cfg.server.port, exc)
        return 1
    with reserved, tempfile.TemporaryDirectory(prefix="turnout-workers-") as state:
        for folder in ("stats", "metrics"):
            os.mkdir(os.path.join(state, folder), 0o700)
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = os.path.join(state, "metrics")
        try:
            return _Supervisor(cfg, log_format, state).run()
        finally:
            os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)


class _Supervisor:
    def __init__(self, cfg: Config, log_format: str, state: str) -> None:
        self.cfg, self.log_format, self.state = cfg, log_format, state
        self.ctx = multiprocessing.get_context("spawn")
        self.workers: list[tuple[Any, Any]] = []  # (process, ready event)
        self.signals = 0
        self._told: set[int] = set()  # the pids the stop has been passed on to

    def _start(self, slot: int) -> tuple[Any, Any]:
        ready = self.ctx.Event()
        spec = _Spec(self.cfg, self.log_format, self.state, os.getpid(), ready)
        process = self.ctx.Process(target=run_worker, args=(spec,), name=f"turnout-{slot}")
        process.start()
        return process, ready

    def run(self) -> int:
        handlers = {s: signal.signal(s, self._signal) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            for slot in range(self.cfg.server.workers):
                self.workers.append(self._start(slot))
            served = self._supervise()
            self._pass_on()  # any worker started as the signal came
            return 0 if self._wait() and served else 1
        finally:
            for sig, handler in handlers.items():
                signal.signal(sig, handler)

    def _supervise(self) -> bool:
        """Until a signal: replace a worker that dies once serving; False if one dies before."""
        serving = False
        while not self.signals:
            for slot, (process, ready) in enumerate(self.workers):
                if process.exitcode is None or self.signals:
                    continue
                if not ready.is_set():
                    log.error(
                        "a worker (pid %d) exited with status %s before it served: stopping",
                        process.pid, process.exitcode,
                    )  # fmt: skip
                    return False
                log.warning(
                    "a worker (pid %d) exited with status %s: starting another",
                    process.pid, process.exitcode,
                )  # fmt: skip
                self.workers[slot] = self._start(slot)
            if not serving and all(ready.is_set() for _, ready in self.workers):
                serving = True
                pids = ", ".join(str(p.pid) for p, _ in self.workers)
                log.info("%d workers serving (pids %s)", len(self.workers), pids)
            time.sleep(0.1)
        return True

    def _signal(self, sig: int, frame: FrameType | None) -> None:
        self.signals += 1
        self._pass_on(again=self.signals > 1)  # a second signal: the workers cut what is left

    def _pass_on(self, again: bool = False) -> None:
        """SIGTERM to each running worker not told yet (``again``: to each running worker)."""
        for process, _ in self.workers:
            pid = process.pid
            if process.exitcode is None and pid is not None and (again or pid not in self._told):
                self._told.add(pid)
                try:
                    os.kill(pid, signal.SIGTERM)
                except ProcessLookupError:  # pragma: no cover - exited meanwhile
                    pass

    def _wait(self) -> bool:
        """Wait for every worker; whether each exited 0."""
        for process, _ in self.workers:
            process.join()
        statuses = [p.exitcode for p, _ in self.workers]
        log.info("every worker has stopped (exit statuses %s)", statuses)
        return all(status == 0 for status in statuses)


def run_worker(spec: _Spec) -> None:
    """A worker: the single-process gateway on its own ``SO_REUSEPORT`` socket."""
    _watch_parent(spec.parent)
    from ..gateway import Gateway
    from ..telemetry.logs import RequestLog, configure as configure_logs
    from .serving import Server, redact_logs

    cfg = spec.config
    gateway = Gateway(cfg)
    host = cfg.server.host
    gateway.address = f"http://{f'[{host}]' if ':' in host else host}:{cfg.server.port}"
    server = Server(gateway)
    server.repeat_window = 1.0  # the parent passes on a signal the worker may have had too
    server.on_ready = spec.ready.set
    gateway.telemetry.share(Path(spec.state) / "stats")
    gateway.telemetry.add_sink(RequestLog())
    configure_logs(spec.log_format, cfg.server.log_level)  # after uvicorn.Config, as `serve`
    redact_logs()
    server.run(sockets=[bind(host, cfg.server.port)])
    if not server.started:
        sys.exit(1)


def _watch_parent(parent: int) -> None:
    """Stop (drain, as on SIGTERM) once the parent is gone."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="turnout-parent-watch", daemon=True).start()
