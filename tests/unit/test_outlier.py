"""Outlier detection against the pool, the breaker's state machine, and the ejection cap, on a fake clock."""

from __future__ import annotations

import pytest

from speech_router.config.models import BreakerConfig
from speech_router.router.breaker import Breaker, BreakerState
from speech_router.router.clock import FakeClock
from speech_router.router.outlier import Outcome, OutcomeWindow, judge
from speech_router.router.ticket import Ticket
from tests.unit.fleetsim import Sim, SimNode

OK, TIMEOUT, ERROR = Outcome.OK, Outcome.TIMEOUT, Outcome.ERROR


def windows(*histories: list[Outcome], start: float = 0.0) -> list[OutcomeWindow]:
    out = []
    for history in histories:
        w = OutcomeWindow(30.0)
        for i, outcome in enumerate(history):
            w.record(outcome, start + i * 0.1)
        out.append(w)
    return out


def test_a_hung_endpoint_among_healthy_peers_is_an_outlier():
    hung, a, b = windows([OK] * 10 + [TIMEOUT] * 5, [OK] * 15, [OK] * 15)
    assert judge(hung, [a, b], BreakerConfig(consecutive_failures=5), 2.0, TIMEOUT) is not None


def test_a_pool_that_times_out_together_ejects_nobody():
    x, y, z = windows([OK] * 5 + [TIMEOUT] * 5, [OK] * 5 + [TIMEOUT] * 4, [OK] * 6 + [TIMEOUT] * 4)
    assert judge(x, [y, z], BreakerConfig(consecutive_failures=5), 2.0, TIMEOUT) is None


def test_a_peer_that_answered_only_because_it_was_given_longer_shares_the_slowdown():
    # the pool slowed from 0.1 s to 0.4 s together: a's two tries had 0.3 s and timed out; b's first timed out too,
    # and its retry, given the longer timeout the slowdown taught, answered in 0.4 s
    config = BreakerConfig(consecutive_failures=2)
    a, b = OutcomeWindow(30.0), OutcomeWindow(30.0)
    a.record(TIMEOUT, 10.30, started=10.0)
    b.record(TIMEOUT, 10.31, started=10.01)
    b.record(OK, 10.72, started=10.32)  # as slow as a's tries: answered only because it was given 0.9 s
    a.record(TIMEOUT, 10.75, started=10.45)
    assert judge(a, [b], config, 10.75, TIMEOUT) is None
    quick = OutcomeWindow(30.0)  # a peer that answered within what a was given: a alone is slow
    quick.record(OK, 10.42, started=10.32)
    assert judge(a, [quick], config, 10.75, TIMEOUT) is not None


def test_an_endpoint_alone_is_ejected_for_errors_never_for_being_slow():
    config = BreakerConfig(consecutive_failures=3)
    slow, = windows([TIMEOUT] * 3)
    broken, = windows([ERROR] * 3)
    assert judge(slow, [], config, 1.0, TIMEOUT) is None
    assert judge(broken, [], config, 1.0, ERROR) is not None


def test_a_failure_rate_without_a_streak_needs_enough_tries():
    config = BreakerConfig(consecutive_failures=100, failure_rate=0.5, min_requests=10)
    flaky, healthy = windows([OK, ERROR] * 4, [OK] * 8)
    assert judge(flaky, [healthy], config, 1.0, ERROR) is None  # 8 tries: too few to judge a rate
    flaky.record(OK, 1.0)
    flaky.record(ERROR, 1.1)
    assert judge(flaky, [healthy], config, 1.2, ERROR) is not None


def test_old_outcomes_leave_the_window():
    w, = windows([ERROR] * 4)
    assert w.tries(10.0) == 4
    assert w.tries(100.0) == 0 and w.failure_ratio(100.0) == 0


def make(**cfg) -> tuple[Breaker, FakeClock, list[tuple[str, str]]]:
    clock = FakeClock()
    moves: list[tuple[str, str]] = []
    breaker = Breaker(BreakerConfig(**cfg), clock, on_change=lambda b, old, new: moves.append((old.value, new.value)))
    return breaker, clock, moves


def test_trip_then_half_open_probe_then_close():
    b, clock, moves = make(base_ejection=5)
    b.trip("test")
    assert b.state == BreakerState.OPEN and not b.allow() and b.ejected and b.retry_after() == 5
    clock.advance(5.1)
    assert b.allow() and b.state == BreakerState.HALF_OPEN  # the one probe
    assert not b.allow()  # only half_open_probes at once
    b.success()
    assert b.state == BreakerState.CLOSED and b.allow()
    assert moves == [("closed", "open"), ("open", "half_open"), ("half_open", "closed")]


def test_backoff_doubles_on_repeated_trips_is_capped_and_resets_after_a_recovery():
    b, clock, _ = make(base_ejection=2, max_ejection=5)
    b.trip("test")
    waits = [b.retry_after()]
    for _ in range(3):
        clock.advance(b.retry_after())
        assert b.allow()
        assert b.probe_failed()  # half_open -> open
        waits.append(b.retry_after())
    assert waits == [2, 4, 5, 5]
    clock.advance(5)
    b.allow()
    b.success()
    b.trip("again")
    assert b.retry_after() == 2


def test_a_released_probe_can_be_taken_again_and_a_disabled_breaker_always_allows():
    b, clock, _ = make(base_ejection=1)
    b.trip("test")
    clock.advance(1)
    assert b.allow() and not b.allow()
    b.release_probe()
    assert b.allow()
    off, _, _ = make(enabled=False)
    off.trip("ignored")
    assert off.state == BreakerState.CLOSED and off.allow()


def fail(sim: Sim, name: str, outcome: Outcome, times: int) -> None:
    ep = sim.ep(name)
    for _ in range(times):
        lease = sim.pool.scheduler.submit(Ticket(10, exclude=frozenset(e.name for e in sim.pool.endpoints
                                                                          if e is not ep)))
        assert lease is not None and lease.endpoint is ep
        sim.pool.finish(lease, outcome)


@pytest.mark.parametrize("percent,ejected", [(50, 2), (100, 3)])
def test_at_most_max_ejected_percent_of_a_pool_is_ejected(percent, ejected):
    sim = Sim([SimNode(f"n{i}") for i in range(4)], breaker={"consecutive_failures": 2,
                                                               "max_ejected_percent": percent})
    fail(sim, "n3", OK, 3)  # one healthy peer keeps the comparison meaningful
    for name in ("n0", "n1", "n2"):
        fail(sim, name, ERROR, 2)
    assert sum(ep.breaker.ejected for ep in sim.pool.endpoints) == ejected


def test_client_mistakes_overloads_and_cancellations_never_count():
    sim = Sim([SimNode("a"), SimNode("b")], breaker={"consecutive_failures": 1})
    for outcome in (Outcome.REJECTED, Outcome.OVERLOADED, Outcome.CANCELLED):
        fail(sim, "a", outcome, 5)
    a = sim.ep("a")
    assert a.window.tries(sim.clock()) == 0 and a.breaker.state == BreakerState.CLOSED
