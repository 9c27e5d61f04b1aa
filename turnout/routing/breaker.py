"""A per-backend circuit breaker: stop sending requests to a backend that keeps failing.

Closed: requests flow; failures are counted. Open: after ``failures`` failures in a row, or when
``failure_ratio`` of the last ``window`` calls failed, no request is sent for ``cooldown``
seconds. Half-open: when the cooldown is over, one request is let through as a trial; its success
closes the circuit, its failure opens it again for twice as long (up to ``max_cooldown``). A
backend that answered 429 with ``Retry-After`` is left alone that long without being counted as
failing (it is alive, only busy).

Everything here runs on the event loop thread, in O(1), without locks.
"""

from __future__ import annotations

import enum
import time
from collections import deque
from collections.abc import Callable

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
        self._recent: deque[bool] = deque(maxlen=config.window)  # True: a failure
        self._recent_failures = 0
        self.state = CircuitState.CLOSED
        self.consecutive = 0
        self.open_until = 0.0
        self.cool_until = 0.0
        self.trial = False
        self.streak = 0  # failed trials in a row: each doubles the cooldown
        self.opens = 0
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

    def success(self, trial: bool = False) -> None:
        self.consecutive = 0
        self._push(False)
        if trial or self.state is CircuitState.HALF_OPEN:
            self.state = CircuitState.CLOSED
            self.trial = False
            self.streak = 0
            self._recent.clear()  # a recovered backend starts with a clean slate
            self._recent_failures = 0

    def failure(self, message: str, trial: bool = False) -> None:
        self.consecutive += 1
        self.last_error = message
        self._push(True)
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

    def _push(self, failed: bool) -> None:
        recent = self._recent
        if len(recent) == recent.maxlen and recent[0]:
            self._recent_failures -= 1
        recent.append(failed)
        self._recent_failures += failed

    def snapshot(self) -> dict[str, object]:
        return {
            "state": self.state.value,
            "consecutive_failures": self.consecutive,
            "opens": self.opens,
            "retry_in_seconds": round(self.retry_in(), 3),
            "last_error": self.last_error or None,
        }
