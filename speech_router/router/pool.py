"""A pool: endpoints of one backend type, how one is picked, and the queue in front of them.

Picking (health-weighted least-outstanding with power-of-d choices): sample ``choices`` endpoints
in rotation, with probability by effective weight (weight x success rate x slow start), and take
the one expected to finish this text first: its learned latency for this many characters, plus the
wait for a slot when it is full. When the best choice is full, or every endpoint is, the request
waits in the pool's queue (interactive before batch) until a slot frees, its queue time runs out
(503) or the queue is full (429). When no endpoint is in rotation at all and there is no later pool
to fall back to, the pool ignores health and uses every endpoint (panic mode) rather than failing
everything.
"""

from __future__ import annotations

import asyncio
import random
from collections import deque
from collections.abc import Callable, Collection
from dataclasses import dataclass

from ..config.models import PoolConfig
from ..errors import NoHealthyEndpoint, QueueFull, QueueTimeout
from .endpoint import Endpoint

PRIORITIES = ("interactive", "batch")
#: expected times this close count as equal
TIE_TOLERANCE = 0.05
#: how much a busy endpoint's expected time grows with its share of slots in use
CONTENTION = 0.5
#: the least wait assumed for a slot whose request already ran past its estimate, as a share of one
OVERRUN_SHARE = 0.1


@dataclass
class Lease:
    """A slot held on an endpoint; give it back with ``Pool.release``."""

    endpoint: Endpoint
    token: int
    predicted: float | None
    queued: float = 0.0
    panic: bool = False


class Pool:
    """Named endpoints of one backend type, their balancer and admission queue."""

    def __init__(self, name: str, backend_type: str, endpoints: list[Endpoint], config: PoolConfig,
                 clock: Callable[[], float], rng: random.Random | None = None) -> None:
        self.name = name
        self.backend_type = backend_type
        self.endpoints = endpoints
        self.config = config
        self.clock = clock
        self.rng = rng or random.Random()
        self._waiters: dict[str, deque[asyncio.Future[None]]] = {p: deque() for p in PRIORITIES}
        self.on_panic: Callable[[Pool], None] | None = None
        self._rr = -1
        #: removed from the configuration by a reload; its waiters move on to the model's current route
        self.retired = False
        self.update(config, endpoints, backend_type)

    def update(self, config: PoolConfig, endpoints: list[Endpoint], backend_type: str | None = None) -> None:
        """Take a reloaded configuration: new settings and endpoint list, same queue (waiters keep their place)."""
        self.config = config
        self.endpoints = endpoints
        if backend_type is not None:
            self.backend_type = backend_type
        for ep in endpoints:
            ep.breaker.may_trip = self._may_eject
        self.wake()

    def retire(self) -> None:
        """The pool left the configuration: no endpoint is selectable any more; waiters wake and move on."""
        self.retired = True
        self.endpoints = []
        self.wake()

    def __repr__(self) -> str:
        return f"Pool(name={self.name!r}, type={self.backend_type!r}, endpoints={[e.name for e in self.endpoints]})"

    @property
    def healthy(self) -> bool:
        return any(ep.in_rotation for ep in self.endpoints)

    def queue_depth(self, priority: str | None = None) -> int:
        if priority is not None:
            return len(self._waiters[priority])
        return sum(len(q) for q in self._waiters.values())

    def _may_eject(self) -> bool:
        """Envoy's max_ejection_percent: never let the breakers take out more than this share of the pool."""
        ejected = sum(1 for ep in self.endpoints if ep.breaker.ejected)
        if ejected == 0:  # as Envoy: one endpoint may always be ejected, whatever the share
            return True
        return (ejected + 1) * 100 <= self.config.breaker.max_ejected_percent * len(self.endpoints)

    # -- latency estimates ----------------------------------------------------------------------------------

    def predict(self, ep: Endpoint, chars: int) -> float | None:
        """Expected seconds for ``chars`` on ``ep``; other endpoints' average while it has no history."""
        own = ep.latency.predict(chars)
        if own is not None:
            return own
        known = [p for e in self.endpoints if (p := e.latency.predict(chars)) is not None]
        return sum(known) / len(known) if known else None

    def per_try_timeout(self, ep: Endpoint, chars: int) -> float:
        retry = self.config.retry
        predicted = self.predict(ep, chars)
        if predicted is None:
            return retry.per_try_timeout_cap
        return min(retry.per_try_timeout_cap, max(retry.per_try_timeout_floor, retry.per_try_timeout_factor * predicted))

    def _score(self, ep: Endpoint, chars: int, any_known: bool) -> float:
        weight = ep.effective_weight()
        if not any_known:  # nothing learned yet: plain weighted least-outstanding
            return (ep.inflight + 1) / weight
        predicted = self.predict(ep, chars) or 0.0
        if ep.has_capacity:  # requests sharing a GPU slow each other down: lean towards idle endpoints
            return predicted * (1 + CONTENTION * ep.inflight / ep.max_concurrency) / weight
        # full: wait for a slot (a request running past its estimate still needs some time), and for the
        # requests already queued ahead, which share the pool's slots
        slots = sum(e.max_concurrency for e in self.endpoints if e.in_rotation) or ep.max_concurrency
        wait = max(ep.free_in(), OVERRUN_SHARE * predicted) + self.queue_depth() / slots * predicted
        return (wait + predicted) / weight

    # -- picking --------------------------------------------------------------------------------------------

    def choose(self, chars: int, exclude: Collection[str] = (), *,
               allow_panic: bool = True) -> tuple[Endpoint | None, bool, bool]:
        """(endpoint with a free slot or None, whether anything is selectable at all, panic)."""
        candidates = [ep for ep in self.endpoints if ep.name not in exclude and ep.in_rotation]
        panic = False
        if not candidates and allow_panic and not any(ep.in_rotation for ep in self.endpoints):
            candidates = [ep for ep in self.endpoints if ep.name not in exclude and not ep.draining]
            panic = bool(candidates)
        if not candidates:
            return None, False, False
        policy = self.config.balancer.policy
        if policy != "latency":
            return self._baseline(policy, candidates), True, panic
        sample = self._sample(candidates)
        any_known = any(ep.latency.known for ep in self.endpoints)
        scores = {ep.name: self._score(ep, chars, any_known) for ep in sample}
        low = min(scores.values())
        # near-ties (within TIE_TOLERANCE) go to the least busy, then the least picked for its weight: equal
        # nodes share light traffic and keep their latency estimates fresh
        near = [ep for ep in sample if scores[ep.name] <= low * (1 + TIE_TOLERANCE) + 1e-6]
        best = min(near, key=lambda ep: (ep.inflight / ep.max_concurrency, ep.picks / ep.weight))
        if best.has_capacity:
            return best, True, panic
        free = [ep for ep in sample if ep.has_capacity]
        if free and not any_known:
            return min(free, key=lambda ep: self._score(ep, chars, any_known)), True, panic
        return None, True, panic  # wait: the best one is busy (or every sampled one is)

    def _baseline(self, policy: str, candidates: list[Endpoint]) -> Endpoint | None:
        """The plain policies other proxies use: kept for comparison in bench/."""
        free = [ep for ep in candidates if ep.has_capacity]
        if not free:
            return None
        if policy == "round_robin":
            self._rr = (self._rr + 1) % len(self.endpoints)
            order = self.endpoints[self._rr:] + self.endpoints[:self._rr]
            return next(ep for ep in order if ep in free)
        low = min((ep.inflight + 1) / ep.weight for ep in free)
        tied = [ep for ep in free if (ep.inflight + 1) / ep.weight == low]
        return min(tied, key=lambda ep: ep.picks / ep.weight)

    def _sample(self, candidates: list[Endpoint]) -> list[Endpoint]:
        d = self.config.balancer.choices
        if len(candidates) <= d:
            return candidates
        pool, weights, chosen = list(candidates), [max(ep.effective_weight(), 1e-6) for ep in candidates], []
        for _ in range(d):
            i = self.rng.choices(range(len(pool)), weights=weights)[0]
            chosen.append(pool.pop(i))
            weights.pop(i)
        # a free endpoint outside the sample still beats waiting when every sampled one is full
        if not any(ep.has_capacity for ep in chosen):
            free = [ep for ep in pool if ep.has_capacity]
            if free:
                chosen.append(self.rng.choices(free, weights=[max(e.effective_weight(), 1e-6) for e in free])[0])
        return chosen

    async def acquire(self, chars: int, *, priority: str = "interactive", exclude: Collection[str] = (),
                      timeout: float | None = None, allow_panic: bool = True) -> Lease:
        """Reserve a slot, waiting in the queue when needed. Panic mode only when ``allow_panic``
        (the dispatcher allows it on a route's last pool: earlier pools fall back instead)."""
        loop = asyncio.get_running_loop()
        queue_cfg = self.config.queue
        limit = queue_cfg.timeout if timeout is None else min(timeout, queue_cfg.timeout)
        start = self.clock()
        deadline = loop.time() + limit
        waiter: asyncio.Future[None] | None = None
        queue = self._waiters[priority if priority in self._waiters else "interactive"]
        try:
            while True:
                ep, selectable, panic = self.choose(chars, exclude, allow_panic=allow_panic)
                if ep is not None and (panic or ep.breaker.allow()):
                    if panic and self.on_panic is not None:
                        self.on_panic(self)
                    predicted = self.predict(ep, chars)
                    ep.picks += 1
                    return Lease(ep, ep.start(predicted), predicted, queued=self.clock() - start, panic=panic)
                if not selectable:
                    raise NoHealthyEndpoint(f"pool {self.name!r} has no healthy endpoint", retry_after=self._retry_after())
                if waiter is None:
                    if self.queue_depth() >= queue_cfg.max_size:
                        raise QueueFull(f"every endpoint of pool {self.name!r} is busy and its queue is full",
                                        retry_after=self._retry_after())
                    waiter = loop.create_future()
                    queue.append(waiter)
                remaining = deadline - loop.time()
                if remaining <= 0:
                    raise QueueTimeout(f"no endpoint of pool {self.name!r} became free within {limit:g}s",
                                       retry_after=self._retry_after())
                try:
                    await asyncio.wait_for(asyncio.shield(waiter), remaining)
                except TimeoutError:
                    continue
                if waiter.done():  # woken: take a fresh future but keep our place in line
                    fresh: asyncio.Future[None] = loop.create_future()
                    queue[queue.index(waiter)] = fresh
                    waiter = fresh
        finally:
            if waiter is not None and waiter in queue:
                queue.remove(waiter)

    def try_acquire(self, chars: int, exclude: Collection[str] = ()) -> Lease | None:
        """A slot now on an endpoint outside ``exclude``, without waiting (for hedging)."""
        ep, _, panic = self.choose(chars, exclude, allow_panic=False)
        if ep is None or panic or not ep.breaker.allow():
            return None
        predicted = self.predict(ep, chars)
        ep.picks += 1
        return Lease(ep, ep.start(predicted), predicted)

    def _retry_after(self) -> float:
        """When to come back: the earliest expected free slot or breaker reopening, at least 1 s."""
        times = [ep.free_in() for ep in self.endpoints if ep.available and not ep.has_capacity]
        times += [ep.breaker.retry_after() for ep in self.endpoints if ep.breaker.ejected]
        return max(1.0, min(times) if times else 1.0)

    def release(self, lease: Lease) -> None:
        lease.endpoint.finish(lease.token)
        self.wake()

    def wake(self) -> None:
        """Wake every waiter, interactive first; each re-checks in that order, so priority holds."""
        for priority in PRIORITIES:
            for waiter in self._waiters[priority]:
                if not waiter.done():
                    waiter.set_result(None)
