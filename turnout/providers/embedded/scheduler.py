"""Which local models are in memory: loads on demand, LRU eviction, idle unload, a memory budget.

A request *leases* its model for as long as it runs. A model that is not loaded is loaded while
its requests wait in a queue (they never fail because the model was not ready); every request
waiting for a model is served by the same load, so queued requests go in batches per model rather
than swapping on each one (llama-swap#612). Models wait for room in arrival order. Room means fewer
than ``max_loaded`` models and their estimated memory within ``budget``; it is made by unloading
the least recently used idle model. A model with a request running is never unloaded: when only
busy models could make room, the least recently used one keeps taking new requests for
``swap_after`` seconds (counted from the oldest waiting request), then drains and goes. An idle
model is unloaded ``keep_alive`` seconds after its last request (the request's own ``keep_alive``
wins, Ollama-style). A load that every waiting request has given up on is cancelled.

GPUs are budgeted beside host memory: an estimate may be a `Need` with bytes on an accelerator
(any CUDA device, or one pinned like ``cuda:1``). Each device's budget is its free memory when the
scheduler first places a model on a GPU (``devices``: NVML, else torch; a simulated list in
tests). A model goes to the device with the most room; when none has room, idle models on the
device that can make it are evicted (least recently used first), and nothing elsewhere; a model
larger than any device's budget is refused at once, naming its size and each device's free
memory, instead of being loaded and evicted in a loop.

The scheduler knows nothing of engines: it calls ``load(name, progress, cancel)`` and
``unload(name, handle)``, asks ``estimate(name)`` for a model's bytes (an int: host memory only,
or a `Need`), and `device_of` says where it placed a model.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from ...errors import BackendError, BackendUnavailableError, GatewayError
from ...models.hardware import DeviceMemory

__all__ = ["Lease", "ModelTooLargeError", "Need", "Scheduler"]

_MB = 1024 * 1024

LoadFn = Callable[[str, Callable[[float], None], threading.Event], Awaitable[Any]]
UnloadFn = Callable[[str, Any], Awaitable[None]]


class ModelTooLargeError(BackendError):
    """The model's estimated memory exceeds what it may ever use here; waiting will not help."""

    status = 503
    code = "insufficient_memory"
    retryable = False  # another backend may still serve it (fallback stays on)


@dataclass(frozen=True, slots=True)
class Need:
    """What a model takes: ``host`` bytes of memory, and ``device`` bytes on an accelerator
    (0: none), on ``where`` (``cuda:N``), or on any CUDA device when ``where`` is None."""

    host: int
    device: int = 0
    where: str | None = None


@dataclass(eq=False)
class _Waiter:
    name: str
    future: asyncio.Future[Lease]
    since: float
    keep_alive: float | None


@dataclass(eq=False)
class _Resident:
    name: str
    state: str  # "loading" | "loaded" | "unloading"
    estimate: int
    keep_alive: float
    started: float
    device: str | None = None  # the accelerator it was placed on
    device_bytes: int = 0
    handle: Any = None
    active: int = 0
    progress: float = 0.0
    last_used: float = 0.0
    loaded_at: float | None = None
    expires: float | None = None
    draining: str | None = None  # "room" (evicted once idle) or "unload" (asked to)
    cancel: threading.Event = field(default_factory=threading.Event)
    idle: asyncio.Event = field(default_factory=asyncio.Event)
    timer: asyncio.TimerHandle | None = None


class Lease:
    """A loaded model held for one request; `release` (idempotent) lets it go."""

    def __init__(self, scheduler: Scheduler, resident: _Resident, keep_alive: float | None):
        self._scheduler = scheduler
        self._resident = resident
        self.name = resident.name
        self.handle = resident.handle
        self.keep_alive = keep_alive
        self.released = False

    def release(self) -> None:
        if not self.released:
            self.released = True
            self._scheduler._release(self._resident, self.keep_alive)


class Scheduler:
    def __init__(
        self,
        load: LoadFn,
        unload: UnloadFn,
        estimate: Callable[[str], int | Need],
        *,
        keep_alive: Callable[[str], float],
        max_loaded: int | None = None,
        budget: int | None = None,
        swap_after: float = 5.0,
        owner: str = "embedded",
        devices: Callable[[], list[DeviceMemory]] | None = None,
    ) -> None:
        self._load, self._unload, self._estimate = load, unload, estimate
        self._keep_alive = keep_alive
        self.max_loaded, self.budget, self.swap_after, self.owner = (
            max_loaded,
            budget,
            swap_after,
            owner,
        )
        self._devices = devices
        self._budgets: dict[str, DeviceMemory] | None = None  # read at the first GPU placement
        self._residents: dict[str, _Resident] = {}
        self._waiters: list[_Waiter] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._wake: asyncio.TimerHandle | None = None
        self._closed = False
        #: counters: loads, cancelled loads, failed loads, unloads by reason
        self.stats: dict[str, int] = dict.fromkeys(
            ("loads", "cancelled", "failed", "evicted", "idle", "unloaded"), 0
        )
        self.load_seconds: dict[str, float] = {}

    # Requests.

    async def acquire(self, name: str, keep_alive: float | None = None) -> Lease:
        """Wait until ``name`` is loaded and hold it; loads it (making room) if it is not."""
        if self._closed:
            raise BackendUnavailableError(f"provider '{self.owner}' is shutting down")
        resident = self._residents.get(name)
        if resident is not None and resident.state == "loaded" and resident.draining is None:
            return self._grant(resident, keep_alive)
        loop = asyncio.get_running_loop()
        waiter = _Waiter(name, loop.create_future(), loop.time(), keep_alive)
        self._waiters.append(waiter)
        self._schedule()
        try:
            return await waiter.future
        except asyncio.CancelledError:
            future = waiter.future
            if future.done() and not future.cancelled() and future.exception() is None:
                future.result().release()  # granted just as the request went away
            self._forget(waiter)
            raise

    def _grant(self, resident: _Resident, keep_alive: float | None) -> Lease:
        resident.active += 1
        resident.idle.clear()
        resident.last_used = time.monotonic()
        resident.expires = None
        if resident.timer is not None:
            resident.timer.cancel()
            resident.timer = None
        return Lease(self, resident, keep_alive)

    def _release(self, resident: _Resident, keep_alive: float | None) -> None:
        resident.active -= 1
        resident.last_used = time.monotonic()
        if resident.active == 0:
            resident.idle.set()
            ttl = self._keep_alive(resident.name) if keep_alive is None else keep_alive
            resident.keep_alive = ttl
            if resident.draining is None and ttl == 0:
                self._start_unload(resident, "idle")
            elif resident.draining is None and math.isfinite(ttl):
                resident.expires = time.time() + ttl
                resident.timer = asyncio.get_running_loop().call_later(ttl, self._expire, resident)
        self._schedule()

    def _forget(self, waiter: _Waiter) -> None:
        if waiter in self._waiters:
            self._waiters.remove(waiter)
        resident = self._residents.get(waiter.name)
        still_wanted = any(w.name == waiter.name for w in self._waiters)
        if resident is not None and resident.state == "loading" and not still_wanted:
            resident.cancel.set()  # nobody waits for this load any more
        self._schedule()

    # Administration.

    async def load(self, name: str, keep_alive: float | None = None) -> float:
        """Load ``name`` (waiting for room like a request); the seconds its load took."""
        lease = await self.acquire(name, keep_alive)
        lease.release()
        return self.load_seconds.get(name, 0.0)

    def fits(self, name: str) -> bool:
        """Whether ``name`` would load now without unloading anything (False when it never
        could: its requests are told why)."""
        try:
            need = self._need(name)
            placed = self._place(name, need) if need.device else None
        except GatewayError:
            return False
        if name in self._residents:
            return True
        return (placed is not None or not need.device) and self._fits(
            need.host, count_unloading=True
        )

    def device_of(self, name: str) -> str | None:
        """The accelerator ``name`` is placed on (while loading or loaded), or None."""
        resident = self._residents.get(name)
        return resident.device if resident is not None else None

    async def unload(self, name: str) -> bool:
        """Unload ``name`` once its running requests are done; False if it was not loaded."""
        resident = self._residents.get(name)
        while resident is not None and resident.state == "loading":
            await asyncio.sleep(0.05)
            resident = self._residents.get(name)
        if resident is None or resident.state == "unloading":
            return False
        resident.draining = "unload"
        if resident.active:
            await resident.idle.wait()
        if self._residents.get(name) is resident and resident.state == "loaded":
            await self._run_unload(resident, "unloaded")
        return True

    def status(self) -> list[dict[str, Any]]:
        """Every model loaded, loading, unloading or waiting for room, with its progress."""
        now, wall = asyncio.get_running_loop().time(), time.time()
        out: list[dict[str, Any]] = []
        for r in self._residents.values():
            waiting = [w for w in self._waiters if w.name == r.name]
            out.append(
                {
                    "name": r.name,
                    "state": "draining" if r.draining and r.state == "loaded" else r.state,
                    "progress": round(r.progress, 3),
                    "active": r.active,
                    "waiting": len(waiting),
                    "estimate_bytes": r.estimate,
                    "device": r.device,
                    "device_bytes": r.device_bytes,
                    "loaded_at": r.loaded_at,
                    "expires_at": r.expires,
                    "keep_alive": None if math.isinf(r.keep_alive) else r.keep_alive,
                    "load_seconds": self.load_seconds.get(r.name),
                    "since": wall - (now - r.started),
                }
            )
        for name in dict.fromkeys(w.name for w in self._waiters):
            if name not in self._residents:
                first = min(w.since for w in self._waiters if w.name == name)
                count = sum(1 for w in self._waiters if w.name == name)
                out.append(
                    {"name": name, "state": "queued", "progress": 0.0, "active": 0,
                     "waiting": count, "since": wall - (now - first)}
                )  # fmt: skip
        return out

    def is_loaded(self, name: str) -> bool:
        resident = self._residents.get(name)
        return resident is not None and resident.state == "loaded"

    async def close(self) -> None:
        """Refuse new requests, fail the waiting ones, unload everything."""
        self._closed = True
        if self._wake is not None:
            self._wake.cancel()
        for waiter in self._waiters:
            if not waiter.future.done():
                waiter.future.set_exception(
                    BackendUnavailableError(f"provider '{self.owner}' is shutting down")
                )
        self._waiters.clear()
        for resident in self._residents.values():
            resident.cancel.set()
            if resident.timer is not None:
                resident.timer.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        for resident in list(self._residents.values()):
            if resident.state == "loaded":
                await self._run_unload(resident, "unloaded")

    # The decisions.

    def _used(self, count_unloading: bool) -> tuple[int, int]:
        rs = [r for r in self._residents.values() if count_unloading or r.state != "unloading"]
        return len(rs), sum(r.estimate for r in rs)

    def _fits(self, need: int, *, count_unloading: bool) -> bool:
        count, memory = self._used(count_unloading)
        if self.max_loaded is not None and count >= self.max_loaded:
            return False
        return self.budget is None or memory + need <= self.budget

    def _need(self, name: str) -> Need:
        need = self._estimate(name)
        return need if isinstance(need, Need) else Need(need)

    def _schedule(self) -> None:
        if self._closed:
            return
        now = asyncio.get_running_loop().time()
        self._grant_ready()
        blocked = False
        for name in list(dict.fromkeys(w.name for w in self._waiters)):
            if name in self._residents:
                continue  # loading, unloading or draining: its waiters wait for that
            try:
                need = self._need(name)
                if self.budget is not None and need.host > self.budget:
                    raise self._too_large(name, need.host)
                device = self._place(name, need) if need.device else None
            except GatewayError as exc:
                self._fail(name, exc)
                continue
            placed = device is not None or not need.device
            if placed and self._fits(need.host, count_unloading=True):
                self._start_load(name, need, device)
                continue
            self._make_room(name, need, now)
            blocked = True
            break  # strict arrival order between models: nobody jumps the queue
        if not blocked:  # nobody needs room: a model draining for room may take requests again
            for resident in self._residents.values():
                if resident.draining == "room":
                    resident.draining = None
            self._grant_ready()

    def _grant_ready(self) -> None:
        """Serve every waiting request whose model is loaded and taking requests."""
        for waiter in list(self._waiters):
            resident = self._residents.get(waiter.name)
            if resident is None or resident.state != "loaded" or resident.draining is not None:
                continue
            self._waiters.remove(waiter)
            if not waiter.future.done():
                waiter.future.set_result(self._grant(resident, waiter.keep_alive))

    def _make_room(self, name: str, need: Need, now: float) -> None:
        """Unload idle models (least recently used first) until ``need`` fits once their unloads
        finish: for GPU memory, only models on the device chosen to make room on. With only busy
        models left, mark one to drain after ``swap_after``."""
        target = self._room_target(need) if need.device else None
        while not self._room_ok(need, target):
            host_short = not self._fits(need.host, count_unloading=False)
            loaded = [
                r for r in self._residents.values()
                if r.state == "loaded" and (host_short or r.device == target)
            ]  # fmt: skip
            idle = sorted((r for r in loaded if r.active == 0), key=lambda r: r.last_used)
            if idle:
                self._start_unload(idle[0], "evicted")
                continue
            if any(r.draining for r in loaded):
                return  # one is draining already; room comes when it is done
            busy = sorted(loaded, key=lambda r: r.last_used)
            if not busy:
                return  # everything is loading or unloading: wait for it
            oldest = min(w.since for w in self._waiters if w.name == name)
            due = oldest + self.swap_after
            if now >= due:
                busy[0].draining = "room"  # no new requests; unloaded when its last one ends
            else:
                self._wake_at(due)
            return

    # GPU placement.

    def _device_budgets(self) -> dict[str, DeviceMemory]:
        if self._budgets is None:
            found = self._devices() if self._devices is not None else []
            self._budgets = {d.device: d for d in found}
        return self._budgets

    def _on_device(self, device: str, count_unloading: bool = True) -> int:
        return sum(
            r.device_bytes for r in self._residents.values()
            if r.device == device and (count_unloading or r.state != "unloading")
        )  # fmt: skip

    def _candidates(self, name: str, need: Need) -> list[DeviceMemory]:
        """The devices ``need`` may go to; an error when it can never fit on any of them."""
        budgets = self._device_budgets()
        pinned = need.where not in (None, "cuda")
        found = [budgets[need.where]] if pinned and need.where in budgets else []
        if not pinned:
            found = [d for d in budgets.values() if d.device.startswith("cuda")]
        if not found or max(d.free for d in found) < need.device:
            raise self._too_large_for_gpu(name, need, list(budgets.values()))
        return found

    def _place(self, name: str, need: Need) -> str | None:
        """The device with the most room that holds ``need`` now (counting models still
        unloading), or None when every candidate is full."""
        roomy = [
            (d.free - self._on_device(d.device), d.device)
            for d in self._candidates(name, need)
        ]  # fmt: skip
        room, device = max(roomy)
        return device if room >= need.device else None

    def _room_target(self, need: Need) -> str | None:
        """The device to make room on: the one where unloading the idle models frees most."""
        best: tuple[int, str] | None = None
        for d in self._budgets.values() if self._budgets else ():
            if need.where not in (None, "cuda") and d.device != need.where:
                continue
            busy = sum(
                r.device_bytes for r in self._residents.values()
                if r.device == d.device and (r.active or r.state == "loading")
            )  # fmt: skip
            if best is None or d.free - busy > best[0]:
                best = (d.free - busy, d.device)
        return best[1] if best else None

    def _room_ok(self, need: Need, target: str | None) -> bool:
        if not self._fits(need.host, count_unloading=False):
            return False
        if not need.device or target is None or self._budgets is None:
            return True
        return self._on_device(target, False) + need.device <= self._budgets[target].free

    def _too_large_for_gpu(
        self, name: str, need: Need, devices: list[DeviceMemory]
    ) -> ModelTooLargeError:
        seen = "; ".join(
            f"{d.device} ({d.name}) {d.free // _MB} MB free of {d.total // _MB} MB" for d in devices
        )
        where = need.where if need.where not in (None, "cuda") else "any GPU"
        return ModelTooLargeError(
            f"model '{name}' of provider '{self.owner}' needs about {need.device // _MB} MB of "
            f"GPU memory (weights, KV cache and batch buffers), more than {where} here has "
            f"free: {seen or 'no CUDA GPU found'}",
            backend=self.owner,
        )

    def _wake_at(self, when: float) -> None:
        loop = asyncio.get_running_loop()
        if self._wake is not None and self._wake.when() <= when:
            return
        if self._wake is not None:
            self._wake.cancel()
        self._wake = loop.call_at(when, self._woken)

    def _woken(self) -> None:
        self._wake = None
        self._schedule()

    def _expire(self, resident: _Resident) -> None:
        resident.timer = None
        current = self._residents.get(resident.name) is resident
        if current and resident.state == "loaded" and resident.active == 0:
            self._start_unload(resident, "idle")

    def _fail(self, name: str, exc: GatewayError) -> None:
        for waiter in [w for w in self._waiters if w.name == name]:
            self._waiters.remove(waiter)
            if not waiter.future.done():
                waiter.future.set_exception(exc)

    def _too_large(self, name: str, need: int) -> ModelTooLargeError:
        mb = need // (1024 * 1024)
        return ModelTooLargeError(
            f"model '{name}' of provider '{self.owner}' needs about {mb} MB (weights, context "
            f"and KV cache), more than providers.{self.owner}.max_memory_mb allows "
            f"({(self.budget or 0) // (1024 * 1024)} MB)",
            backend=self.owner,
        )

    # Loading and unloading.

    def _spawn(self, work: Awaitable[None]) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _start_load(self, name: str, need: Need, device: str | None) -> None:
        loop = asyncio.get_running_loop()
        resident = _Resident(
            name, "loading", need.host, self._keep_alive(name), loop.time(), device,
            need.device if device else 0,
        )  # fmt: skip
        resident.idle.set()
        self._residents[name] = resident
        self._spawn(self._run_load(resident))

    async def _run_load(self, resident: _Resident) -> None:
        loop = asyncio.get_running_loop()

        def progress(fraction: float) -> None:  # called from the loading thread
            loop.call_soon_threadsafe(setattr, resident, "progress", fraction)

        started = time.perf_counter()
        try:
            handle = await self._load(resident.name, progress, resident.cancel)
        except Exception as exc:
            del self._residents[resident.name]
            if resident.cancel.is_set():
                self.stats["cancelled"] += 1
            else:
                self.stats["failed"] += 1
                error = exc if isinstance(exc, GatewayError) else self._load_error(resident, exc)
                error.retryable = (
                    False  # loading again at once fails again; another backend may not
                )
                self._fail(resident.name, error)
            self._schedule()
            return
        resident.handle = handle
        if resident.cancel.is_set() or self._closed:  # finished, but nobody wants it now
            self.stats["cancelled"] += 1
            await self._run_unload(resident, None)
            return
        self.stats["loads"] += 1
        self.load_seconds[resident.name] = time.perf_counter() - started
        resident.state, resident.progress = "loaded", 1.0
        resident.loaded_at = time.time()
        resident.last_used = time.monotonic()
        self._schedule()
        if resident.active == 0 and resident.state == "loaded" and resident.draining is None:
            self._release_idle(resident)

    def _release_idle(self, resident: _Resident) -> None:
        """A model loaded for nobody in particular (a preload) starts its idle clock."""
        resident.active += 1
        self._release(resident, None)

    def _load_error(self, resident: _Resident, exc: Exception) -> BackendError:
        return BackendError(
            f"provider '{self.owner}' could not load model '{resident.name}': "
            f"{type(exc).__name__}: {str(exc)[:300]}",
            backend=self.owner,
        )

    def _start_unload(self, resident: _Resident, reason: str) -> None:
        resident.state = "unloading"
        if resident.timer is not None:
            resident.timer.cancel()
            resident.timer = None
        self._spawn(self._run_unload(resident, reason))

    async def _run_unload(self, resident: _Resident, reason: str | None) -> None:
        resident.state = "unloading"
        try:
            with contextlib.suppress(Exception):  # a failed close must not wedge the scheduler
                await self._unload(resident.name, resident.handle)
        finally:
            if self._residents.get(resident.name) is resident:
                del self._residents[resident.name]
            if reason is not None:
                self.stats[reason] += 1
            self._schedule()
