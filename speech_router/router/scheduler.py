"""A pool's queue, and placing requests on endpoints by expected completion (``choice.Choice`` decides).

A request takes an endpoint at once when the choice says so; otherwise it waits in the pool's queue.
Requests that wait are decided again whenever something changes (``reschedule``: a slot frees, an
endpoint joins, recovers, is undrained, its breaker half-opens or closes, a reload), in priority order
(interactive, then batch; first come first served within each), so a waiting request never sits behind
its first choice while another endpoint it would now take is free.

Admission is by time: a request whose expected wait is longer than it may wait (the queue timeout, or
its deadline) is refused at once (``QueueFull``, 429 with Retry-After); ``queue.max_size`` only bounds
memory. Pure and synchronous: the clock, the rng and the endpoints are given; ``Pool`` adds the waiting
(futures, timeouts) around it.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from ..config.models import PoolConfig
from ..errors import NoHealthyEndpoint, QueueFull
from .breaker import BreakerState
from .choice import Choice, Ticket, View
from .clock import Clock
from .endpoint import Endpoint

PRIORITIES = ("interactive", "batch")


@dataclass(eq=False)
class Lease:
    """A slot held on an endpoint; give it back with ``Pool.finish``."""

    endpoint: Endpoint
    token: int
    predicted: float | None
    queued: float = 0.0
    #: taken while no endpoint of the pool was in rotation (health ignored)
    panic: bool = False
    #: the half-open breaker's probe
    probe: bool = False
    priority: str = "interactive"


class SchedulerListener:
    """What the scheduler reports (metrics); every method is a no-op here."""

    def picked(self, pool: str, endpoint: Endpoint, lease: Lease) -> None:
        """A request got a slot on ``endpoint`` (``lease.queued``: after waiting so long)."""

    def queue_changed(self, pool: str, priority: str, depth: int) -> None:
        """The number of requests waiting with ``priority`` changed."""

    def queue_rejected(self, pool: str, reason: str) -> None:
        """Admission refused a request: ``queue_full`` or ``expected_wait``."""


class Scheduler:
    """A pool's queue and its choice of endpoint."""

    def __init__(self, pool: str, endpoints: Sequence[Endpoint], config: PoolConfig, clock: Clock,
                 rng: random.Random | None = None, listener: SchedulerListener | None = None) -> None:
        self.pool = pool
        self.clock = clock
        self.choice = Choice(endpoints, config, clock, rng or random.Random())
        self.listener = listener or SchedulerListener()
        self._queues: dict[str, deque[Ticket]] = {p: deque() for p in PRIORITIES}
        self._busy = False
        self._again = False

    def __repr__(self) -> str:
        return f"Scheduler(pool={self.pool!r}, endpoints={[e.name for e in self.endpoints]}, waiting={self.depth()})"

    @property
    def endpoints(self) -> list[Endpoint]:
        return self.choice.endpoints

    @property
    def config(self) -> PoolConfig:
        return self.choice.config

    def update(self, config: PoolConfig, endpoints: Sequence[Endpoint]) -> None:
        self.choice.config = config
        self.choice.endpoints = list(endpoints)

    def predict(self, ep: Endpoint, chars: int, n: int) -> float | None:
        """Expected seconds for ``chars`` on ``ep`` starting with ``n`` in flight (itself included)."""
        return self.choice.predict(ep, chars, n)

    def depth(self, priority: str | None = None) -> int:
        if priority is not None:
            return len(self._queues[priority])
        return sum(len(q) for q in self._queues.values())

    def waiting(self) -> Iterator[Ticket]:
        for priority in PRIORITIES:
            yield from self._queues[priority]

    # -- placing --------------------------------------------------------------------------------------------

    def submit(self, ticket: Ticket) -> Lease | None:
        """A slot now, or None after queueing the ticket (``on_placed`` is called when it gets one).

        Raises ``NoHealthyEndpoint`` when nothing is selectable, ``QueueFull`` when admission refuses.
        """
        ticket.arrived = self.clock()
        self.choice.note(ticket.chars)
        view = self.choice.view(ticket)
        if not view.candidates:
            raise NoHealthyEndpoint(f"pool {self.pool!r} has no healthy endpoint", retry_after=self.retry_after())
        ahead = sum(len(self._queues[p]) for p in PRIORITIES[:self._rank(ticket) + 1])
        ep, probe, wait = self.choice.decide(ticket, ahead, view)
        if ep is not None and (view.panic or ep.breaker.allow()):
            return self._lease(ticket, ep, view, probe)
        if self.depth() >= self.config.queue.max_size:
            self.listener.queue_rejected(self.pool, "queue_full")
            raise QueueFull(f"every endpoint of pool {self.pool!r} is busy and its queue is full",
                            retry_after=self.retry_after())
        if wait is not None and wait > ticket.limit:
            self.listener.queue_rejected(self.pool, "expected_wait")
            raise QueueFull(f"every endpoint of pool {self.pool!r} is busy: the expected wait ({wait:.1f}s) is longer "
                            f"than this request may wait ({ticket.limit:.1f}s)", retry_after=wait - ticket.limit)
        queue = self._queues[PRIORITIES[self._rank(ticket)]]
        queue.append(ticket)
        self.listener.queue_changed(self.pool, PRIORITIES[self._rank(ticket)], len(queue))
        return None

    def cancel(self, ticket: Ticket) -> None:
        """The ticket stopped waiting (timed out, cancelled): leave the queue."""
        priority = PRIORITIES[self._rank(ticket)]
        queue = self._queues[priority]
        if ticket in queue:
            queue.remove(ticket)
            self.listener.queue_changed(self.pool, priority, len(queue))

    def try_now(self, ticket: Ticket) -> Lease | None:
        """A slot now on an endpoint in rotation outside ``ticket.exclude``, never waiting (for hedging)."""
        view = self.choice.view(ticket)
        if view.panic:
            return None
        free = [ep for ep in view.candidates if ep.busy < ep.cap()]
        ep, _ = self.choice.best_free(free, ticket.chars, view, self.choice.affinity(ticket))
        if ep is None or not ep.breaker.allow():
            return None
        return self._lease(ticket, ep, view, False)

    def reschedule(self) -> int:
        """Decide again for every waiting ticket, in priority order; returns how many got a slot."""
        if self._busy:  # a state change seen while deciding (a breaker half-opening): one more pass after
            self._again = True
            return 0
        self._busy = True
        placed = 0
        try:
            while True:
                self._again = False
                placed += self._pass()
                if not self._again:
                    return placed
        finally:
            self._busy = False

    def _pass(self) -> int:
        placed = 0
        ahead = 0
        for priority in PRIORITIES:
            queue = self._queues[priority]
            for ticket in list(queue):
                if not self._may_place():
                    return placed
                view = self.choice.view(ticket)
                ep, probe, _ = self.choice.decide(ticket, ahead, view) if view.candidates else (None, False, None)
                if ep is None or not (view.panic or ep.breaker.allow()):
                    ahead += 1
                    continue
                queue.remove(ticket)
                self.listener.queue_changed(self.pool, priority, len(queue))
                lease = self._lease(ticket, ep, view, probe)
                placed += 1
                if ticket.on_placed is not None:
                    ticket.on_placed(lease)
        return placed

    def _may_place(self) -> bool:
        """Whether any waiting ticket could get a slot now (else a pass stops early: saturation is cheap)."""
        rotation = [ep for ep in self.endpoints if ep.in_rotation]
        if not rotation:  # panic mode may use what is there
            return any(not ep.draining for ep in self.endpoints)
        now = self.clock()
        return any(ep.busy < ep.cap() or ep.limit.may_probe(ep.model, now) for ep in rotation)

    def _lease(self, ticket: Ticket, ep: Endpoint, view: View, probe: bool) -> Lease:
        if probe:
            ep.limit.probed(view.now)
        predicted = self.choice.predict(ep, ticket.chars, ep.busy + 1, view)
        ep.picks += 1
        lease = Lease(ep, ep.start(ticket.chars, ticket.affinity), predicted, queued=view.now - ticket.arrived, panic=view.panic,
                      probe=ep.breaker.state == BreakerState.HALF_OPEN, priority=PRIORITIES[self._rank(ticket)])
        ticket.lease = lease
        self.listener.picked(self.pool, ep, lease)
        return lease

    def _rank(self, ticket: Ticket) -> int:
        return PRIORITIES.index(ticket.priority) if ticket.priority in PRIORITIES else 0

    def retry_after(self) -> float:
        """When to come back: the earliest expected free slot or breaker reopening, at least 1 s."""
        now = self.clock()
        view = View(now, self.choice.prior(now), [ep for ep in self.endpoints if ep.available], False)
        times = [t for t, _ in self.choice.slot_times(view)[:1]]
        times += [ep.breaker.retry_after() for ep in self.endpoints if ep.breaker.ejected]
        return max(1.0, min(times) if times else 1.0)
