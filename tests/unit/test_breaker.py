"""The circuit breaker on a hand-driven clock: opening, cooldown, half-open trial, Retry-After."""

from __future__ import annotations

import pytest

from turnout.config import BreakerConfig
from turnout.routing.breaker import Admission, Breaker, CircuitState


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def breaker(clock: Clock, **settings: float) -> Breaker:
    return Breaker(BreakerConfig.model_validate(settings), clock)


def test_opens_after_consecutive_failures_only() -> None:
    clock = Clock()
    b = breaker(clock, failures=3, window=100)
    for _ in range(2):
        b.failure("down")
    b.success()  # the run is broken: counting starts again
    for _ in range(2):
        b.failure("down")
    assert b.state is CircuitState.CLOSED and b.admit() is Admission.ADMITTED
    b.failure("refused")
    assert b.state is CircuitState.OPEN
    assert (b.opens, b.consecutive, b.last_error) == (1, 3, "refused")
    assert b.admit() is Admission.REFUSED


def test_opens_on_the_failure_ratio_of_a_full_window() -> None:
    clock = Clock()
    b = breaker(clock, failures=100, failure_ratio=0.5, window=10)
    for i in range(9):  # alternating, never 2 failures in a row: 4 of 9 failed
        if i % 2:
            b.failure("x")
        else:
            b.success()
    assert b.state is CircuitState.CLOSED  # the window is not full yet
    b.failure("x")  # 10 calls, 5 failed: half
    assert b.state is CircuitState.OPEN


def test_a_window_of_mostly_successes_stays_closed() -> None:
    clock = Clock()
    b = breaker(clock, failures=100, failure_ratio=0.5, window=10)
    for i in range(100):  # a third fail
        if i % 3 == 0:
            b.failure("x")
        else:
            b.success()
    assert b.state is CircuitState.CLOSED


def test_cooldown_then_one_trial_whose_success_closes() -> None:
    clock = Clock()
    b = breaker(clock, failures=1, cooldown=5)
    b.failure("down")
    clock.now += 4.9
    assert b.admit() is Admission.REFUSED
    assert b.retry_in() == pytest.approx(0.1)
    clock.now += 0.1
    assert b.admit() is Admission.TRIAL
    assert b.state is CircuitState.HALF_OPEN
    assert b.admit() is Admission.REFUSED  # one trial at a time
    assert b.retry_in() == pytest.approx(0.05)  # poll while the trial runs
    b.success(trial=True)
    assert b.state is CircuitState.CLOSED
    assert b.admit() is Admission.ADMITTED


def test_failed_trials_double_the_cooldown_up_to_the_cap() -> None:
    clock = Clock()
    b = breaker(clock, failures=1, cooldown=2, max_cooldown=10)
    b.failure("down")
    waits = []
    for _ in range(5):
        waits.append(b.retry_in())
        clock.now += b.retry_in()
        assert b.admit() is Admission.TRIAL
        b.failure("still down", trial=True)
    assert waits == [2, 4, 8, 10, 10]
    assert b.opens == 6
    clock.now += 10
    assert b.admit() is Admission.TRIAL
    b.success(trial=True)
    b.failure("again")  # a fresh run after recovery: the cooldown starts over
    assert b.retry_in() == 2


def test_an_abandoned_trial_lets_the_next_request_try() -> None:
    clock = Clock()
    b = breaker(clock, failures=1, cooldown=1)
    b.failure("down")
    clock.now += 1
    assert b.admit() is Admission.TRIAL
    b.abandon(trial=True)  # the client left before the backend answered
    assert b.admit() is Admission.TRIAL


def test_retry_after_cools_without_counting_a_failure() -> None:
    clock = Clock()
    b = breaker(clock, failures=1)
    b.cool(3)
    assert b.admit() is Admission.REFUSED
    assert b.retry_in() == 3
    assert (b.state, b.consecutive) == (CircuitState.CLOSED, 0)
    clock.now += 3
    assert b.admit() is Admission.ADMITTED


def test_a_successful_probe_ends_the_cooldown_early() -> None:
    clock = Clock()
    b = breaker(clock, failures=1, cooldown=30)
    b.failure("down")
    b.probe_ok()
    assert b.admit() is Admission.TRIAL


def test_snapshot() -> None:
    clock = Clock()
    b = breaker(clock, failures=2, cooldown=5)
    b.failure("a")
    b.failure("backend 'x' is unreachable")
    assert b.snapshot() == {
        "state": "open",
        "consecutive_failures": 2,
        "opens": 1,
        "held": 0,
        "retry_in_seconds": 5.0,
        "last_error": "backend 'x' is unreachable",
    }


# One client cannot open it for all (issue 15): failures count as the backend's only when they come
# from more than one source, or no other source succeeds meanwhile, or a probe confirms them.


def test_one_clients_failures_do_not_open_it_while_others_succeed() -> None:
    clock = Clock()
    b = breaker(clock, failures=3, failure_ratio=0.5, window=10)
    for _ in range(20):  # the attacker fails three times for each success of the victim
        b.success(source="victim")
        for _ in range(3):
            b.failure("HTTP 500", source="attacker")
    assert b.state is CircuitState.CLOSED and b.admit() is Admission.ADMITTED
    assert b.held > 0 and b.opens == 0


def test_the_same_failures_from_one_source_open_it_as_before() -> None:
    clock = Clock()
    b = breaker(clock, failures=3, failure_ratio=0.5, window=10)
    b.success(source="victim")
    b.failure("HTTP 500", source="victim")
    b.failure("HTTP 500", source="victim")
    assert b.state is CircuitState.CLOSED
    b.failure("HTTP 500", source="victim")  # the same count as before the rule: the third
    assert b.state is CircuitState.OPEN


def test_a_backend_that_dies_for_everyone_opens_at_the_same_failure() -> None:
    clock = Clock()
    b = breaker(clock, failures=3, window=10)
    for _ in range(5):
        b.success(source="a")
        b.success(source="b")
    b.failure("refused", source="a")
    b.failure("refused", source="b")
    assert b.state is CircuitState.CLOSED
    b.failure("refused", source="a")  # the third in a row, from two clients
    assert b.state is CircuitState.OPEN and b.held == 0


def test_a_failing_probe_confirms_held_failures() -> None:
    clock = Clock()
    b = breaker(clock, failures=2, window=10)
    b.success(source="victim")
    b.failure("timeout", source="attacker")
    b.failure("timeout", source="attacker")
    assert b.state is CircuitState.CLOSED and b.held == 1
    b.probe_failed()
    assert b.state is CircuitState.OPEN


def test_a_failing_probe_alone_does_not_open_a_healthy_circuit() -> None:
    clock = Clock()
    b = breaker(clock, failures=2, window=10)
    b.success(source="victim")
    b.probe_failed()
    assert b.state is CircuitState.CLOSED
