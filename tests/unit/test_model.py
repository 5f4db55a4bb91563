"""What an endpoint is learned to take: shape per character, current speed, slowdown under concurrency."""

from __future__ import annotations

import pytest

from speech_router.router.budget import RetryBudget
from speech_router.router.clock import FakeClock
from speech_router.router.latency import LatencyModel
from speech_router.router.limits import OVERLOAD_HOLD, STRETCH_INTERVAL, ConcurrencyLimit
from speech_router.router.model import EndpointModel


def taught(per_char: float = 0.002, base: float = 0.05, max_parallel: int = 4) -> EndpointModel:
    m = EndpointModel(half_life=30, max_parallel=max_parallel)
    for chars in (20, 50, 200, 400):
        m.observe(chars, base + per_char * chars, 1, now=0.0)
    return m


def test_the_shape_is_base_plus_per_character():
    m = LatencyModel(half_life=30)
    assert m.predict(100) is None
    for chars in (20, 50, 200, 400):
        m.observe(chars, 0.05 + 0.002 * chars, now=0.0)
    base, per_char = m.fit()
    assert base == pytest.approx(0.05, abs=1e-6) and per_char == pytest.approx(0.002, abs=1e-8)


def test_one_slower_answer_moves_the_estimate_at_once_faster_ones_bring_it_back_gradually():
    m = taught()
    assert m.predict(200) == pytest.approx(0.45, rel=0.01)
    m.observe(200, 4 * 0.45, 1, now=1.0)  # the node got 4x slower
    assert m.predict(200) > 2 * 0.45
    for t in range(2, 30):
        m.observe(200, 4 * 0.45, 1, now=float(t))
    assert m.predict(200) == pytest.approx(4 * 0.45, rel=0.1)
    m.observe(200, 0.45, 1, now=31.0)  # back to normal: one answer does not undo it all...
    assert m.predict(200) > 2 * 0.45
    for t in range(32, 60):
        m.observe(200, 0.45, 1, now=float(t))
    assert m.predict(200) == pytest.approx(0.45, rel=0.1)  # ...a few do


def test_a_timeout_is_an_observation_the_next_estimate_is_longer_than_that_timeout():
    m = taught()
    timeout = 3 * m.predict(200)
    m.observe_timeout(200, timeout, 1)
    assert 3 * m.predict(200) > 1.5 * timeout  # the next per-try timeout is well above the one that expired


def test_an_endpoint_without_answers_is_the_pools_estimate_and_its_first_answer_sets_its_speed():
    shape = LatencyModel(half_life=30)
    quick = EndpointModel(half_life=30, shape=shape)
    for chars in (20, 50, 200, 400):
        quick.observe(chars, 0.05 + 0.002 * chars, 1, now=0.0)
    fresh = EndpointModel(half_life=30, shape=shape)  # same pool, same shape
    assert fresh.predict(200, prior=0.3) == 0.3
    fresh.observe(200, 4 * 0.45, 1, now=1.0)  # four times as slow
    assert fresh.predict(200, prior=0.3) == pytest.approx(1.8, rel=0.01)
    assert fresh.predict(400) == pytest.approx(4 * 0.85, rel=0.05)  # the pool's shape, at its own speed


def test_a_stale_estimate_is_known_as_such():
    m = taught()  # its last answer took 0.85 s
    assert not m.stale(now=8.0) and m.stale(now=9.0)  # ten of those without news
    m.observe(200, 10.0, 1, now=100.0)  # a slow node
    assert not m.stale(now=120.0) and m.stale(now=131.0)  # at most a half-life


def serial(model: EndpointModel, rounds: int, service: float = 0.5) -> EndpointModel:
    """Three sent at once to a node serving first come first served: the k-th takes k services."""
    for _ in range(rounds):
        for k in (1, 2, 3):
            model.observe(100, k * service, k, now=1.0)
    return model


def side_by_side(model: EndpointModel, rounds: int, service: float = 0.5, jitter: float = 0.0) -> EndpointModel:
    """Up to four at once on a node with four slots: none is slowed (``jitter``: +/- that share, alternating)."""
    sign = 1
    for _ in range(rounds):
        for k in (1, 2, 3, 4, 4, 4):
            sign = -sign
            model.observe(100, service * (1 + sign * jitter), k, now=1.0)
    return model


def settled(per_char: float = 0.0045) -> EndpointModel:
    """A model whose pool's shape has seen enough answers for fits to be judged."""
    m = taught(per_char=per_char)
    for _ in range(5):
        for chars in (20, 50, 200, 400):
            m.shape.observe(chars, 0.05 + per_char * chars, now=0.0)
    return m


def test_a_node_doing_one_at_a_time_has_parallelism_one_and_a_node_with_four_slots_four():
    m = settled()  # alone: 0.5 s for 100 characters
    assert m.parallel == 4 and not m.parallel_known  # the configured bound until learned
    serial(m, rounds=3)
    assert not m.parallel_known and m.parallel == 4  # six answers in line: not yet enough to judge
    serial(m, rounds=10)
    assert m.parallel_known and m.parallel == 1
    assert m.predict(100, 3) == pytest.approx(1.5, rel=0.1)  # the third in line waits two services
    slots = side_by_side(settled(), rounds=10, jitter=0.3)
    assert slots.parallel == 4 and slots.parallel_known  # jittery answers do not make it look like fewer
    assert slots.predict(100, 4) == pytest.approx(0.5, rel=0.35)


def test_a_node_that_changes_speed_keeps_its_parallelism():
    m = side_by_side(settled(), rounds=10)
    side_by_side(m, rounds=10, service=0.5 * 5.5)  # 5.5x slower, still four side by side
    assert m.parallel == 4
    assert m.predict(100, 1) == pytest.approx(0.5 * 5.5, rel=0.1)


def test_the_limit_is_learned_its_share_ramped_after_joining_stretched_and_held_down_by_overloads():
    limit = ConcurrencyLimit(4, slow_start=10)
    assert limit.learned(taught(per_char=0.0045), 0.0) == 4  # nothing learned of the curve yet: the bound
    one = serial(settled(), rounds=15)
    four = side_by_side(settled(), rounds=10)
    assert limit.learned(one, 0.0) == 1 and limit.learned(four, 0.0) == 4
    limit.joined(100.0)
    assert [limit.share(four, t) for t in (100.0, 102.6, 105.0, 110.0)] == [1, 2, 2, 4]
    assert limit.ramping(105.0) and not limit.ramping(110.0)
    assert limit.may_stretch(one, 110.0)
    limit.stretched(110.0)
    assert not limit.may_stretch(one, 110.0 + STRETCH_INTERVAL / 2) and limit.may_stretch(one, 110.0 + STRETCH_INTERVAL)
    assert not limit.may_stretch(four, 200.0)  # at its configured bound: nothing to find out
    limit.overloaded(inflight=3, now=200.0)
    assert limit.learned(four, 200.0) == 2 and limit.learned(four, 200.0 + OVERLOAD_HOLD) == 4
    assert ConcurrencyLimit(4, adaptive=False).learned(one, 0.0) == 4


def test_the_retry_budget_is_a_share_of_requests_with_floors():
    clock = FakeClock()
    budget = RetryBudget(ratio=0.2, minimum=2, window=10, clock=clock)
    for _ in range(20):
        budget.request()
    assert sum(budget.try_retry() for _ in range(10)) == 4  # 20% of 20
    clock.advance(11)  # the window moved on: only the floor remains
    assert sum(budget.try_retry() for _ in range(10)) == 2
    scaled = RetryBudget(ratio=0.2, minimum=2, window=10, clock=clock, concurrency=lambda: 8)
    assert sum(scaled.try_retry() for _ in range(10)) == 8  # the pool's concurrency is a floor too


def test_a_shape_whose_line_would_start_below_zero_goes_through_the_origin_instead():
    m = LatencyModel(half_life=30)
    for chars in (100, 200, 300, 400):  # a fit would say -0.1 s + 0.003 s per character
        m.observe(chars, -0.1 + 0.003 * chars, now=0.0)
    base, per_char = m.fit()
    assert base == 0.0
    assert m.predict(400) == pytest.approx(1.1, rel=0.1)  # clamping the base alone would say 1.2
    flat = LatencyModel(half_life=30)
    for chars in (100, 200, 300):
        flat.observe(chars, 0.5 - 0.0001 * chars, now=0.0)  # longer no slower (noise): a constant time
    assert flat.fit()[1] == 0.0 and flat.predict(300) == pytest.approx(0.48, rel=0.05)
