"""Real PostgreSQL 15 and Redis for tests: a throwaway cluster made with ``initdb`` and run with
``pg_ctl`` in a temporary directory, and ``redis-server`` on a free port; both from Debian's
packages (scripts/test.sh installs them). As root, PostgreSQL runs as the ``postgres`` user (it
refuses to run as root)."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from tests.support.servers import free_port

__all__ = ["Postgres", "Redis", "pg_bin", "run_postgres", "run_redis"]


def pg_bin(tool: str) -> str:
    """A PostgreSQL server tool (initdb, pg_ctl): on PATH, else in Debian's versioned folder."""
    found = shutil.which(tool)
    if found:
        return found
    for folder in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (folder / tool).exists():
            return str(folder / tool)
    raise RuntimeError(f"{tool} not found: install PostgreSQL (scripts/test.sh does)")


def _as_owner(cmd: list[str], owner: str | None) -> list[str]:
    return ["runuser", "-u", owner, "--", *cmd] if owner else cmd


def _wait_port(port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


class Postgres:
    """One throwaway cluster; `stop` and `start` it to simulate an outage."""

    def __init__(self, root: Path, port: int, owner: str | None) -> None:
        self.root, self.port, self.owner = root, port, owner
        self.data = root / "data"
        self.log = root / "server.log"

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def _ctl(self, *args: str) -> None:
        cmd = _as_owner(
            [pg_bin("pg_ctl"), "-D", str(self.data), "-l", str(self.log), *args], self.owner
        )
        done = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=60)
        if done.returncode != 0:
            raise RuntimeError(f"pg_ctl {' '.join(args)} failed: {done.stderr}{self.tail()}")

    def tail(self) -> str:
        try:
            return self.log.read_text(errors="replace")[-2000:]
        except OSError:
            return ""

    def start(self) -> None:
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._ctl("-w", "-o", options, "start")
        _wait_port(self.port, 30)

    def stop(self) -> None:
        self._ctl("-w", "-m", "fast", "stop")

    def create_database(self, name: str) -> str:
        import psycopg

        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')  # a test's own name, not input
        return self.url(name)


@contextlib.contextmanager
def run_postgres() -> Iterator[Postgres]:
    owner = "postgres" if os.geteuid() == 0 else None
    root = Path(tempfile.mkdtemp(prefix="turnout-pg-"))
    if owner:
        shutil.chown(root, owner, owner)
    server = Postgres(root, free_port(), owner)
    init = _as_owner(
        [pg_bin("initdb"), "-D", str(server.data), "-U", "postgres", "--auth=trust", "-E", "UTF8"],
        owner,
    )
    done = subprocess.run(init, capture_output=True, text=True, check=False, timeout=120)
    if done.returncode != 0:
        raise RuntimeError(f"initdb failed: {done.stderr}")
    server.start()
    try:
        yield server
    finally:
        with contextlib.suppress(Exception):
            server.stop()
        shutil.rmtree(root, ignore_errors=True)


class Redis:
    def __init__(self, port: int) -> None:
        self.port = port

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"


@contextlib.contextmanager
def run_redis() -> Iterator[Redis]:
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("redis-server not found: install redis-server (scripts/test.sh does)")
    port = free_port()
    cmd = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_port(port, 30)
        yield Redis(port)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
