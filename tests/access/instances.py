"""Gateway instances as processes of their own (``python -m turnout serve``), for the tests that
need several instances, a SIGTERM, or a refusal to start."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from tests.support.servers import free_port, wait_http

__all__ = ["Instance", "run_instance", "write_config"]


def write_config(path: Path, config: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(config))
    return path


class Instance:
    def __init__(self, proc: subprocess.Popen[bytes], port: int, log: Path) -> None:
        self.proc, self.port, self.log = proc, port, log
        self.url = f"http://127.0.0.1:{port}"

    def terminate(self, timeout: float = 60) -> int:
        """SIGTERM, then wait for the exit; the exit status."""
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=timeout)

    def output(self) -> str:
        return self.log.read_text(errors="replace")


@contextlib.contextmanager
def run_instance(config: Path, *extra: str) -> Iterator[Instance]:
    port = free_port()
    log = Path(tempfile.mkstemp(prefix="turnout-instance-", suffix=".log")[1])
    cmd = [sys.executable, "-m", "turnout", "serve", "-c", str(config), "--port", str(port), *extra]
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(root)}
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
    instance = Instance(proc, port, log)
    try:
        wait_http(f"{instance.url}/health", timeout=60, proc=proc)
        yield instance
    except BaseException:
        sys.stderr.write(instance.output()[-4000:])
        raise
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
