"""A per-backend circuit breaker: stop sending requests to a backend that keeps failing.

Closed: requests flow; failures are counted. Open: after ``failures`` failures in a row, or when
``failure_ratio`` of the last ``window`` calls failed, no request is sent for ``cooldown``
seconds. Half-open: when the cooldown is over, one request is let through as a trial; its success
closes the circuit, its failure opens it again for twice as long (up to ``max_cooldown``). A
backend that answered 429 with ``Retry-After`` is left alone that long without being counted as
failing (it is alive, only busy).

One client cannot open it for all (issue 15). Only failures that say something about the
backend's health are counted (the router's ``COUNTED`` classes: connection refused or reset,
the backend's own 5xx, timeouts, malformed answers; not a client that left, a request the
backend refused, a 429). Each is counted with its source (the client's key, else its address).
When a threshold above is reached, the circuit opens only if the failures are the backend's
for everyone: they came from more than one source, or no other source succeeded in the window
(a backend that only one client uses behaves as it always did). Otherwise the failures are held
(``held`` counts them), and the circuit opens only if a health probe then fails (`probe_failed`):
a client that provokes failures (prompts that crash the backend, that time it out) while the
others are served cannot take the backend away from them.

Everything here runs on the event loop thread, in O(1), without locks.
"""

from __future__ import annotations

import enum
import time
from collections import deque
from collections.abc import Callable, Hashable

from ..config import BreakerConfig

__all__ = ["Admission", "Breaker", "CircuitState"]


class CircuitState(enum.Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class Admission(enum.IntEnum):
    REFUSED = 0
    ADMITTED = 1
    TRIAL = 2  # the one request a half-open circuit lets through


class Breaker:
    __slots__ = (
        "_clock",
        "_cooldown",
        "_failures",
        "_max_cooldown",
        "_ratio",
        "_recent",
        "_recent_failures",
        "consecutive",
        "cool_until",
        "held",
        "last_error",
        "open_until",
        "opens",
        "state",
        "streak",
        "trial",
    )

    def __init__(self, config: BreakerConfig, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._failures = config.failures
        self._ratio = config.failure_ratio
        self._cooldown = config.cooldown
        self._max_cooldown = max(config.max_cooldown, config.cooldown)
        #: (failed, source) of the last ``window`` calls
        self._recent: deque[tuple[bool, Hashable]] = deque(maxlen=config.window)
        self._recent_failures = 0
        self.state = CircuitState.CLOSED
        self.consecutive = 0
        self.open_until = 0.0
        self.cool_until = 0.0
        self.trial = False
        self.streak = 0  # failed trials in a row: each doubles the cooldown
        self.opens = 0
        self.held = 0  # thresholds reached by one client's failures alone, not opened
        self.last_error = ""

    def admit(self) -> Admission:
        """Whether a new request may be sent now; a half-open circuit admits one trial."""
        now = self._clock()
        if now < self.cool_until:
            return Admission.REFUSED
        if self.state is CircuitState.CLOSED:
            return Admission.ADMITTED
        if self.state is CircuitState.OPEN:
            if now < self.open_until:
                return Admission.REFUSED
            self.state = CircuitState.HALF_OPEN
            self.trial = False
        if self.trial:
            return Admission.REFUSED
        self.trial = True
        return Admission.TRIAL

    @property
    def closed(self) -> bool:
        return self.state is CircuitState.CLOSED

    def retry_in(self) -> float:
        """Seconds until `admit` may say yes (a short poll while a trial is in flight)."""
        now = self._clock()
        wait = self.cool_until - now
        if self.state is CircuitState.OPEN:
            wait = max(wait, self.open_until - now)
        elif self.state is CircuitState.HALF_OPEN and self.trial:
            wait = max(wait, 0.05)
        return max(0.0, wait)

    def success(self, trial: bool = False, source: Hashable = None) -> None:
        self.consecutive = 0
        self._push(False, source)
        if trial or self.state is CircuitState.HALF_OPEN:
            self.state = CircuitState.CLOSED
            self.trial = False
            self.streak = 0
            self._recent.clear()  # a recovered backend starts with a clean slate
            self._recent_failures = 0
            self.held = 0

    def failure(self, message: str, trial: bool = False, source: Hashable = None) -> None:
        self.consecutive += 1
        self.last_error = message
        self._push(True, source)
        if trial or self.state is CircuitState.HALF_OPEN:
            self.streak += 1
            self._open()
        elif self.state is CircuitState.CLOSED and (
            self.consecutive >= self._failures
            or (
                len(self._recent) == self._recent.maxlen
                and self._recent_failures >= self._ratio * len(self._recent)
            )
        ):
            if self._for_everyone():
                self.streak = 0
                self._open()
            else:
                self.held += 1

    def _for_everyone(self) -> bool:
        """Whether the recent failures are the backend's, not one client's: they came from
        more than one source, or no other source succeeded (O(window), at a threshold only)."""
        failing = {source for failed, source in self._recent if failed}
        if len(failing) > 1:
            return True
        return not any(not failed and source not in failing for failed, source in self._recent)

    def probe_failed(self) -> None:
        """The health monitor could not reach the backend: failures held as one client's are
        confirmed as the backend's, and the circuit opens."""
        if self.state is CircuitState.CLOSED and self.held and self._recent_failures:
            self.streak = 0
            self._open()

    def abandon(self, trial: bool) -> None:
        """A trial that ended without a verdict (the client left): let the next one try."""
        if trial and self.state is CircuitState.HALF_OPEN:
            self.trial = False

    def cool(self, seconds: float) -> None:
        """Leave the backend alone for ``seconds`` (its Retry-After), without counting a failure."""
        self.cool_until = max(self.cool_until, self._clock() + seconds)

    def probe_ok(self) -> None:
        """The health monitor reached the backend: an open circuit may try a request now."""
        if self.state is CircuitState.OPEN:
            self.open_until = min(self.open_until, self._clock())

    def _open(self) -> None:
        cooldown = min(self._cooldown * 2.0**self.streak, self._max_cooldown)
        self.state = CircuitState.OPEN
        self.open_until = self._clock() + cooldown
        self.trial = False
        self.opens += 1

    def _push(self, failed: bool, source: Hashable) -> None:
        recent = self._recent
        if len(recent) == recent.maxlen and recent[0][0]:
            self._recent_failures -= 1
        recent.append((failed, source))
        self._recent_failures += failed

    def snapshot(self) -> dict[str, object]:
        return {
            "state": self.state.value,
            "consecutive_failures": self.consecutive,
            "opens": self.opens,
            "held": self.held,
            "retry_in_seconds": round(self.retry_in(), 3),
            "last_error": self.last_error or None,
        }
