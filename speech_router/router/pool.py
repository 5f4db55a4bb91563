"""A pool: endpoints of one backend type, the scheduler in front of them, and what each try's end teaches.

``acquire`` waits for a slot (the ``Scheduler`` decides which endpoint and when); ``finish`` gives it
back with the try's ``Outcome`` and updates, in one place, everything the outcome says: the endpoint's
latency model (a timeout too), its concurrency limit (an overload), its outcome window and breaker
(outlier detection against the pool), then lets waiting requests decide again. When no endpoint is in
rotation and there is no later pool to fall back to, the pool uses every endpoint anyway (panic mode)
rather than failing everything.
"""

from __future__ import annotations

import asyncio
import random

from ..config.models import PoolConfig
from ..errors import QueueTimeout
from .breaker import BreakerState
from .budget import RetryBudget
from .clock import Clock
from .endpoint import Endpoint
from .events import RouterListener
from .latency import LatencyModel
from .outlier import Outcome, judge
from .scheduler import Scheduler
from .ticket import PRIORITIES, Lease, Ticket

#: while requests wait, they are decided again at least this often (running requests overrun their estimates)
TICK_S = 0.05
#: every this many answers the pool checks that its endpoints' speeds stay about 1 against its latency shape
ANCHOR_EVERY = 32
#: ...and moves the scale into the shape when their median is further from 1 than this factor
ANCHOR_DRIFT = 1.5
#: a try on a suspect endpoint is hedged after this many times what its peers take for the text (at least the minimum)
SUSPECT_HEDGE_FACTOR = 1.5
SUSPECT_HEDGE_MIN_S = 0.05


class Pool:
    """Named endpoints of one backend type, their scheduler, retry budget and outlier detection."""

    def __init__(self, name: str, backend_type: str, endpoints: list[Endpoint], config: PoolConfig, clock: Clock,
                 rng: random.Random | None = None, listener: RouterListener | None = None) -> None:
        self.name = name
        self.backend_type = backend_type
        self.config = config
        self.clock = clock
        self.listener = listener or RouterListener()
        self.scheduler = Scheduler(name, endpoints, config, clock, rng, self.listener)
        self.budget = self._budget(config)
        #: removed from the configuration by a reload; its waiters move on to the model's current route
        self.retired = False
        self._tick: asyncio.TimerHandle | None = None
        self._answers = 0

    def __repr__(self) -> str:
        return f"Pool(name={self.name!r}, type={self.backend_type!r}, endpoints={[e.name for e in self.endpoints]})"

    def _budget(self, config: PoolConfig) -> RetryBudget:
        r = config.retry
        return RetryBudget(r.budget_ratio, r.budget_min, r.budget_window, self.clock,
                           concurrency=lambda: sum(ep.max_concurrency for ep in self.endpoints))

    @property
    def endpoints(self) -> list[Endpoint]:
        return self.scheduler.endpoints

    def update(self, config: PoolConfig, endpoints: list[Endpoint], backend_type: str) -> None:
        """Take a reloaded configuration: new settings and endpoint list, same queue (waiters keep their place)."""
        if config.retry != self.config.retry:
            self.budget = self._budget(config)
        self.config = config
        self.backend_type = backend_type
        self.scheduler.update(config, endpoints)
        self.wake()

    def retire(self) -> None:
        """The pool left the configuration: no endpoint is selectable any more; waiters wake and move on."""
        self.retired = True
        self.scheduler.update(self.config, [])
        for ticket in list(self.scheduler.waiting()):
            self.scheduler.cancel(ticket)
            if ticket.on_placed is not None:
                ticket.on_placed(None)

    @property
    def healthy(self) -> bool:
        return any(ep.in_rotation for ep in self.endpoints)

    def queue_depth(self, priority: str | None = None) -> int:
        return self.scheduler.depth(priority)

    # -- a slot ---------------------------------------------------------------------------------------------

    async def acquire(self, ticket: Ticket) -> Lease:
        """A slot for ``ticket``, waiting in the queue when the scheduler says so (at most ``ticket.limit``).

        Raises ``NoHealthyEndpoint``, ``QueueFull`` (admission) or ``QueueTimeout``; a retired pool raises
        ``NoHealthyEndpoint`` so the request moves on to its model's current route.
        """
        ticket.limit = min(ticket.limit, self.config.queue.timeout)
        lease = self.scheduler.submit(ticket)
        if lease is not None:
            return lease
        loop = asyncio.get_running_loop()
        placed: asyncio.Future[Lease | None] = loop.create_future()

        def on_placed(lease: Lease | None) -> None:
            if not placed.done():
                placed.set_result(lease)
            elif lease is not None:  # its waiter already gave up: the slot goes back at once
                self.finish(lease, Outcome.CANCELLED)

        ticket.on_placed = on_placed
        self._arm()
        taken = False
        try:
            async with asyncio.timeout(ticket.limit):  # not wait_for, which can lose a cancel on 3.11 (health.py)
                result = await asyncio.shield(placed)
            if result is None:
                return await self.acquire(Ticket(ticket.chars, ticket.priority, ticket.exclude, ticket.allow_panic,
                                                 ticket.limit))  # retired meanwhile: raises NoHealthyEndpoint
            taken = True
            return result
        except TimeoutError:
            self.listener.queue_rejected(self.name, "queue_timeout")
            raise QueueTimeout(f"no endpoint of pool {self.name!r} became free within {ticket.limit:g}s",
                               retry_after=self.scheduler.retry_after()) from None
        finally:
            if not taken:
                self.scheduler.cancel(ticket)
                if placed.done() and not placed.cancelled() and (lease := placed.result()) is not None:
                    self.finish(lease, Outcome.CANCELLED)

    def try_now(self, ticket: Ticket) -> Lease | None:
        """A slot at once on another endpoint, or None (hedging never waits)."""
        return self.scheduler.try_now(ticket)

    def per_try_timeout(self, lease: Lease, chars: int) -> float:
        """``per_try_timeout_factor`` x what the endpoint is expected to take now, within floor and cap; after
        timeouts, never more than its slowest peer is expected to take (``Choice.timeout_basis``)."""
        retry = self.config.retry
        run = lease.endpoint.running.get(lease.token)
        predicted = self.scheduler.timeout_basis(lease.endpoint, chars, run.n if run else lease.endpoint.inflight)
        if predicted is None:
            return retry.per_try_timeout_cap
        factor = retry.per_try_timeout_factor
        return min(retry.per_try_timeout_cap, max(retry.per_try_timeout_floor, factor * predicted))

    def suspect_hedge_delay(self, ep: Endpoint, chars: int) -> float:
        """How long a try on a suspect waits before a second try elsewhere: a little more than its peers are
        expected to take for the text (or, with nothing known of them, the per-try timeout floor)."""
        peers = [t for other in self.endpoints if other is not ep and other.in_rotation and not other.suspect
                 and (t := self.scheduler.predict(other, chars, other.busy + 1)) is not None]
        if not peers:
            return self.config.retry.per_try_timeout_floor
        return max(SUSPECT_HEDGE_MIN_S, SUSPECT_HEDGE_FACTOR * sorted(peers)[len(peers) // 2])

    def finish(self, lease: Lease, outcome: Outcome, *, timeout: float | None = None) -> None:
        """Give the slot back and learn from how the try ended; then waiting requests decide again."""
        ep = lease.endpoint
        done = ep.finish(lease.token)
        now = self.clock()
        ep.learn(outcome, done, now, timeout, suspect=lease.suspect)
        if outcome == Outcome.OK:
            self._answers += 1
            if self._answers % ANCHOR_EVERY == 0:
                self._anchor(ep.model.shape)
            ep.breaker.success()
            if ep.passed("answered a request"):  # panic mode tried it while it was marked down: it serves again
                self.listener.health_changed(ep)
        elif outcome.failure:
            self._judge(ep, outcome, now)
        elif lease.probe:
            ep.breaker.release_probe()
        self.listener.attempt_finished(ep, outcome, done)
        self.wake()

    def _anchor(self, shape: LatencyModel) -> None:
        """Keep the endpoints' speeds about 1 against the latency shape they share: a time is shape x speed, and only
        the product is learned, so the two could drift apart without bound (a peak-sensitive speed sits above the
        typical answer, and the shape, taught through it, then shrinks); an endpoint seldom asked would then be
        judged against a shape that moved on. The median speed's scale moves into the shape; predictions do not
        change."""
        models = [ep.model for ep in self.endpoints if ep.model.shape is shape and ep.model.answers]
        if not models:
            return
        levels = sorted(m.answered_level for m in models)
        median = levels[len(levels) // 2]
        if 1 / ANCHOR_DRIFT <= median <= ANCHOR_DRIFT:
            return
        shape.rescale(median)
        for model in models:
            model.rescale(1 / median)

    def _judge(self, ep: Endpoint, outcome: Outcome, now: float) -> None:
        if ep.breaker.probe_failed(escalate=outcome != Outcome.TIMEOUT):
            return
        if ep.breaker.state != BreakerState.CLOSED:
            return
        peers = [other.window for other in self.endpoints if other is not ep and other.in_rotation]
        reason = judge(ep.window, peers, ep.breaker.config, now, outcome)
        if reason is not None and self._may_eject():
            ep.breaker.trip(reason)
            ep.window.clear()

    def _may_eject(self) -> bool:
        """Envoy's max_ejection_percent: never let the breakers take out more than this share of the pool."""
        ejected = sum(1 for ep in self.endpoints if ep.breaker.ejected)
        if ejected == 0:  # as Envoy: one endpoint may always be ejected, whatever the share
            return True
        return (ejected + 1) * 100 <= self.config.breaker.max_ejected_percent * len(self.endpoints)

    # -- waking waiters -------------------------------------------------------------------------------------

    def wake(self) -> None:
        """Something changed: waiting requests decide again (interactive first)."""
        self.scheduler.reschedule()

    def _arm(self) -> None:
        """While requests wait, decide again every ``TICK_S`` too: estimates move with time, not only on events."""
        if self._tick is not None or not self.scheduler.depth():
            return
        loop = asyncio.get_running_loop()

        def tick() -> None:
            self._tick = None
            self.wake()
            self._arm()

        self._tick = loop.call_later(TICK_S, tick)

    def close(self) -> None:
        if self._tick is not None:
            self._tick.cancel()
            self._tick = None


__all__ = ["PRIORITIES", "Lease", "Pool", "Ticket"]
