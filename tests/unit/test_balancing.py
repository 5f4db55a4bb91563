"""Latency model, retry budget, and the pool's picking and queueing, without any network."""

from __future__ import annotations

import asyncio
import random

import pytest

from speech_router.config.models import EndpointConfig, PoolConfig
from speech_router.errors import NoHealthyEndpoint, QueueFull, QueueTimeout
from speech_router.router.budget import RetryBudget
from speech_router.router.endpoint import Endpoint
from speech_router.router.latency import LatencyModel
from speech_router.router.pool import Pool
from speech_router.types import HealthReport
from speech_router.backends.base import Backend, BackendContext


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Idle(Backend):
    type = "idle"

    async def synthesize(self, request):  # pragma: no cover - never called here
        raise NotImplementedError

    async def health(self) -> HealthReport:  # pragma: no cover
        return HealthReport(True)


def make_pool(n: int = 2, clock: Clock | None = None, **cfg) -> Pool:
    clock = clock or Clock()
    config = PoolConfig.model_validate({"type": "idle", **cfg})
    eps = []
    for i in range(n):
        backend = Idle(EndpointConfig(name=f"e{i}"), Idle.Options(), BackendContext("p", config))
        ep = Endpoint(backend, "p", clock=clock, max_concurrency=config.max_concurrency, breaker=config.breaker,
                      balancer=config.balancer, health_check=config.health_check)
        ep.record_check(True)
        eps.append(ep)
    return Pool("p", "idle", eps, config, clock, random.Random(7))


def teach(ep: Endpoint, per_char: float, base: float = 0.05) -> None:
    for chars in (20, 100, 200, 400):
        ep.latency.observe(chars, base + per_char * chars, ep.clock())


def test_latency_model_learns_base_and_per_char():
    m = LatencyModel(half_life=30)
    assert m.predict(100) is None
    for chars in (20, 50, 200, 400):
        m.observe(chars, 0.05 + 0.002 * chars, now=0.0)
    base, per_char = m.fit()
    assert base == pytest.approx(0.05, abs=1e-6) and per_char == pytest.approx(0.002, abs=1e-8)
    for chars in (20, 400):  # the node slows down 4x: recent samples dominate after a few half-lives
        for t in range(10):
            m.observe(chars, 4 * (0.05 + 0.002 * chars), now=300.0 + t)
    assert m.predict(200) == pytest.approx(4 * 0.45, rel=0.05)


def test_retry_budget_is_a_share_of_requests_with_a_floor():
    clock = Clock()
    budget = RetryBudget(ratio=0.2, minimum=2, window=10, clock=clock)
    for _ in range(20):
        budget.request()
    granted = sum(budget.try_retry() for _ in range(10))
    assert granted == 4  # 20% of 20
    clock.now += 11  # the window moved on: only the floor remains
    assert sum(budget.try_retry() for _ in range(10)) == 2


def test_fast_endpoint_gets_long_texts_and_the_slow_one_only_when_it_wins():
    pool = make_pool(2, **{"balancer": {"choices": 2}})
    fast, slow = pool.endpoints
    teach(fast, 0.002)
    teach(slow, 0.008)
    picked, _, _ = pool.choose(400)
    assert picked is fast
    # fast is full (its earliest slot frees in 2 s): a short text is quicker on the slow node now...
    for _ in range(fast.max_concurrency):
        fast.start(2.0)
    assert pool.choose(20)[0] is slow
    # ...but a long text waits for the fast node (2 s + 0.85 s) rather than take 3.25 s on the slow one
    assert pool.choose(400)[0] is None


def test_equal_endpoints_share_light_traffic():
    pool = make_pool(2)
    for ep in pool.endpoints:
        teach(ep, 0.002)
    picks = []
    for _ in range(10):
        ep, _, _ = pool.choose(100)
        ep.picks += 1
        picks.append(ep.name)
    assert picks.count("e0") == picks.count("e1") == 5


def test_ejected_endpoints_are_skipped_and_panic_uses_all():
    pool = make_pool(2, **{"breaker": {"consecutive_failures": 1, "max_ejected_percent": 100}})
    a, b = pool.endpoints
    a.breaker.failure()
    assert a.breaker.ejected
    assert pool.choose(50)[0] is b
    b.healthy = False  # nothing in rotation: panic mode serves from everything rather than fail
    ep, selectable, panic = pool.choose(50)
    assert panic and selectable and ep is not None


def test_max_ejected_percent_keeps_part_of_the_pool():
    pool = make_pool(4, **{"breaker": {"consecutive_failures": 1, "max_ejected_percent": 50}})
    for ep in pool.endpoints:
        ep.breaker.failure()
    assert sum(ep.breaker.ejected for ep in pool.endpoints) == 2


@pytest.mark.anyio
async def test_queue_orders_interactive_before_batch_and_bounds_size_and_time():
    pool = make_pool(1, **{"max_concurrency": 1, "queue": {"max_size": 2, "timeout": 5}})
    first = await pool.acquire(10)
    order: list[str] = []

    async def wait(priority: str) -> None:
        lease = await pool.acquire(10, priority=priority)
        order.append(priority)
        pool.release(lease)

    batch = asyncio.create_task(wait("batch"))
    await asyncio.sleep(0)
    interactive = asyncio.create_task(wait("interactive"))
    await asyncio.sleep(0)
    assert pool.queue_depth() == 2
    with pytest.raises(QueueFull) as full:
        await pool.acquire(10)
    assert full.value.status_code == 429 and full.value.retry_after >= 1
    pool.release(first)
    await asyncio.gather(batch, interactive)
    assert order == ["interactive", "batch"]

    lease = await pool.acquire(10)
    with pytest.raises(QueueTimeout) as late:
        await pool.acquire(10, timeout=0.05)
    assert late.value.status_code == 503
    pool.release(lease)


@pytest.mark.anyio
async def test_no_healthy_endpoint_outside_exclusions():
    pool = make_pool(2)
    with pytest.raises(NoHealthyEndpoint):
        await pool.acquire(10, exclude={"e0", "e1"})
