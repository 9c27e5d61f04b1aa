"""The key cache: every live key's hash in a dict, refreshed in the background.

The request path looks a key up here and never waits on the database. A background task asks
the store every ``interval`` seconds (0.5 s) whether keys changed (one tiny query on a version
counter) and reloads them when they did; a revocation therefore applies within a second on every
instance, sooner where Redis carries it (`KeyCache.poke`). When the store cannot be read the
cache keeps what it had and says so in the log.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from collections.abc import Sequence
from typing import Protocol

from .keys import Credential, KeyRecord, hash_key

__all__ = ["KeyCache", "KeySource"]

log = logging.getLogger("turnout.access")


class KeySource(Protocol):
    async def key_version(self) -> int: ...

    async def load_keys(self) -> tuple[Sequence[KeyRecord], Sequence[Credential]]: ...


class KeyCache:
    def __init__(self, source: KeySource, interval: float = 0.5) -> None:
        self.source = source
        self.interval = interval
        self.version = -1
        self.keys: dict[str, KeyRecord] = {}  # by name
        self._by_hash: dict[str, Credential] = {}
        self._task: asyncio.Task[None] | None = None
        self._poked = asyncio.Event()
        self._failing = False

    @property
    def any_keys(self) -> bool:
        """Whether any key exists (revoked ones included: once keys are in use, auth stays on)."""
        return bool(self.keys)

    def lookup(self, raw: str, now: float | None = None) -> KeyRecord | None:
        """The live key ``raw`` opens, or None."""
        digest = hash_key(raw)
        credential = self._by_hash.get(digest)
        if credential is None or not hmac.compare_digest(credential.hash, digest):  # hex: ASCII
            return None
        now = time.time() if now is None else now
        record = self.keys.get(credential.name)
        if record is None or not credential.live(now) or not record.live(now):
            return None
        return record

    async def refresh(self, force: bool = False) -> bool:
        """Reload when the keys changed (or ``force``); whether it reloaded."""
        version = await self.source.key_version()
        if version == self.version and not force:
            return False
        records, credentials = await self.source.load_keys()
        self.keys = {record.name: record for record in records}
        self._by_hash = {c.hash: c for c in credentials}
        self.version = version
        return True

    def poke(self) -> None:
        """Reload now (a revocation announced by another instance)."""
        self._poked.set()

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="turnout-key-cache")

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def _run(self) -> None:
        while True:
            poked = False
            try:
                async with asyncio.timeout(self.interval):
                    await self._poked.wait()
                    poked = True
            except TimeoutError:
                pass
            self._poked.clear()
            try:
                await self.refresh(force=poked)
                if self._failing:
                    log.warning("key store readable again; key cache up to date")
                self._failing = False
            except Exception as exc:
                if not self._failing:
                    log.warning("cannot refresh gateway keys (%s); serving the cached ones", exc)
                self._failing = True
