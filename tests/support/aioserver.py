"""Serve an aiohttp app for a test: on its own event loop in a daemon thread, on ports the OS
picked, so sync and async clients alike can reach it. The fakes of services that cannot run here
(tests/fakes/) and the Hugging Face Hub stand-in use it."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from collections.abc import Iterator

from aiohttp import web

__all__ = ["serve_app"]


class _AppThread:
    def __init__(self, app: web.Application, name: str, ports: int) -> None:
        self.app = app
        self.name = name
        self.loop = asyncio.new_event_loop()
        self.socks = [socket.socket() for _ in range(ports)]
        for sock in self.socks:
            sock.bind(("127.0.0.1", 0))
        self.thread = threading.Thread(target=self._run, name=f"fake-{name}", daemon=True)
        self.started = threading.Event()
        self.error: BaseException | None = None

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        runner = web.AppRunner(self.app, shutdown_timeout=1.0, access_log=None)
        try:
            self.loop.run_until_complete(runner.setup())
            for sock in self.socks:
                self.loop.run_until_complete(web.SockSite(runner, sock).start())
        except BaseException as exc:  # reported to the test by start()
            self.error = exc
            return
        finally:
            self.started.set()
        self.loop.run_forever()
        self.loop.run_until_complete(runner.cleanup())
        self.loop.close()

    def start(self) -> list[str]:
        self.thread.start()
        if not self.started.wait(10) or self.error is not None:
            raise RuntimeError(f"the {self.name} server did not start: {self.error!r}")
        return [f"http://127.0.0.1:{sock.getsockname()[1]}" for sock in self.socks]

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)


@contextlib.contextmanager
def serve_app(app: web.Application, name: str, ports: int = 1) -> Iterator[list[str]]:
    """Serve ``app`` for the duration of the block; yield the base URL of each port."""
    server = _AppThread(app, name, ports)
    urls = server.start()
    try:
        yield urls
    finally:
        server.stop()
