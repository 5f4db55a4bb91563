"""The breaker's state machine, on a fake clock (no sleeping)."""

from __future__ import annotations

from speech_router.config.models import BreakerConfig
from speech_router.router.breaker import Breaker, BreakerState


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make(**cfg) -> tuple[Breaker, Clock, list[tuple[str, str]]]:
    clock = Clock()
    moves: list[tuple[str, str]] = []
    breaker = Breaker(BreakerConfig(**cfg), clock, on_change=lambda b, old, new: moves.append((old.value, new.value)))
    return breaker, clock, moves


def test_consecutive_failures_trip_then_half_open_probe_then_close():
    b, clock, moves = make(consecutive_failures=3, base_ejection=5)
    for _ in range(2):
        b.failure()
    assert b.state == BreakerState.CLOSED and b.allow()
    b.failure()
    assert b.state == BreakerState.OPEN and not b.allow() and b.ejected
    assert b.retry_after() == 5
    clock.now += 4.9
    assert not b.allow()
    clock.now += 0.2
    assert b.allow()  # the one probe
    assert b.state == BreakerState.HALF_OPEN
    assert not b.allow()  # only half_open_probes at once
    b.success()
    assert b.state == BreakerState.CLOSED and b.allow()
    assert moves == [("closed", "open"), ("open", "half_open"), ("half_open", "closed")]


def test_backoff_doubles_on_repeated_trips_and_is_capped():
    b, clock, _ = make(consecutive_failures=1, base_ejection=2, max_ejection=5)
    waits = []
    for _ in range(4):
        b.failure()  # closed -> open, or half_open -> open
        waits.append(b.retry_after())
        clock.now += b.retry_after()
        assert b.allow()  # half-open probe
    assert waits == [2, 4, 5, 5]
    b.success()
    b.failure()
    assert b.retry_after() == 2  # a full recovery resets the backoff


def test_failure_rate_in_the_window_trips_without_a_streak():
    b, clock, _ = make(consecutive_failures=100, failure_rate=0.5, min_requests=10, window=30)
    for i in range(9):  # alternate: never 2 failures in a row
        (b.failure if i % 2 else b.success)()
    assert b.state == BreakerState.CLOSED  # 9 < min_requests
    b.failure()
    assert b.state == BreakerState.OPEN  # 5 of 10 failed


def test_old_failures_leave_the_window():
    b, clock, _ = make(consecutive_failures=100, failure_rate=0.5, min_requests=4, window=10)
    b.failure()
    b.failure()
    clock.now += 11
    b.success()
    b.success()
    b.failure()
    assert b.state == BreakerState.CLOSED and b.failure_ratio() == 1 / 3


def test_a_failed_probe_reopens():
    b, clock, moves = make(consecutive_failures=1, base_ejection=1)
    b.failure()
    clock.now += 1
    assert b.allow()
    b.failure()
    assert b.state == BreakerState.OPEN
    assert moves == [("closed", "open"), ("open", "half_open"), ("half_open", "open")]


def test_the_pool_may_veto_a_trip():
    b, _, moves = make(consecutive_failures=1)
    b.may_trip = lambda: False  # the pool's max_ejected_percent is reached
    b.failure()
    assert b.state == BreakerState.CLOSED and moves == []


def test_disabled_breaker_always_allows():
    b, _, _ = make(enabled=False, consecutive_failures=1)
    for _ in range(10):
        b.failure()
    assert b.allow() and b.state == BreakerState.CLOSED
