"""A pool's queue, and placing requests on endpoints by expected completion (``choice.Choice`` decides).

A request takes an endpoint at once when the choice says so; otherwise it waits in the pool's queue.
Requests that wait are decided again whenever something changes (``reschedule``: a slot frees, an
endpoint joins, recovers, is undrained, its breaker half-opens or closes, a reload) and on the pool's
tick, in priority order (interactive, then batch; first come first served within each). One pass shares
one ``View``: each request that keeps waiting takes, in the view's ``SlotPlan``, the slot it waits for,
so the next request's expected wait counts the requests ahead of it with their own lengths. A waiting
request never sits behind its first choice while another endpoint it would now take is free, and an idle
endpoint gets the queued requests it would finish before their turn elsewhere.

Admission is by time: a request whose expected wait is longer than it may wait (the queue timeout, or
its deadline) is refused at once (``QueueFull``, 429 with Retry-After); ``queue.max_size`` only bounds
memory. Batch requests leave ``queue.batch_headroom`` slots free while interactive ones were seen in the last
``queue.batch_window`` (a slot a batch request holds is held until it is done: the next interactive request
finds one free at once); with none seen that long, batch work takes every slot. Synchronous: the clock, the rng and the endpoints are given; ``Pool`` adds the waiting (futures,
timeouts) around it. The only writes it makes are through ``Endpoint`` (a slot taken, an exploration or
stretch noted) and its own queue.
"""

from __future__ import annotations

import math
import random
from collections import deque
from collections.abc import Iterator, Sequence

from ..config.models import PoolConfig
from ..errors import NoHealthyEndpoint, QueueFull
from .breaker import BreakerState
from .choice import Choice
from .clock import Clock
from .endpoint import Endpoint
from .ticket import PRIORITIES, Lease, Placement, Ticket
from .view import Decision, View

#: the most waiting requests one pass decides for (and counts ahead of a new one); beyond, a queue this deep
#: is served in order as slots free, and a new request's wait is extrapolated
PLAN_DEPTH = 256


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
        #: when an interactive request last asked this pool (batch work leaves it room for a while after)
        self._interactive_at = -math.inf

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

    def timeout_basis(self, ep: Endpoint, chars: int, n: int) -> float | None:
        """What a try's timeout on ``ep`` is measured against (``Choice.timeout_basis``)."""
        return self.choice.timeout_basis(ep, chars, n)

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
        if ticket.rank == 0:
            self._interactive_at = ticket.arrived
        self.choice.note(ticket.chars)
        view = self.choice.view()
        if not view.candidates(ticket):
            raise NoHealthyEndpoint(f"pool {self.pool!r} has no healthy endpoint", retry_after=self.retry_after(view))
        ahead = [t for p in PRIORITIES[:ticket.rank + 1] for t in self._queues[p]]
        for other in ahead[:PLAN_DEPTH]:  # the requests ahead take their slots first
            self._plan(other, self.choice.decide(other, view), view)
        decision = self._room(ticket, self.choice.decide(ticket, view), view)
        if len(ahead) > PLAN_DEPTH and decision.endpoint is not None:
            decision = Decision()  # a queue this deep goes first: no overtaking what was not looked at
        if decision.endpoint is not None and (view.panic or decision.endpoint.breaker.allow()):
            return self._lease(ticket, decision, view)
        if self.depth() >= self.config.queue.max_size:
            self.listener.queue_rejected(self.pool, "queue_full")
            raise QueueFull(f"every endpoint of pool {self.pool!r} is busy and its queue is full",
                            retry_after=self.retry_after(view))
        wait = self._extrapolated(decision, len(ahead) - PLAN_DEPTH, view)
        if wait is not None and wait > ticket.limit:
            self.listener.queue_rejected(self.pool, "expected_wait")
            raise QueueFull(f"every endpoint of pool {self.pool!r} is busy: the expected wait ({wait:.1f}s) is longer "
                            f"than this request may wait ({ticket.limit:.1f}s)", retry_after=wait - ticket.limit)
        queue = self._queues[PRIORITIES[ticket.rank]]
        queue.append(ticket)
        self.listener.queue_changed(self.pool, PRIORITIES[ticket.rank], len(queue))
        return None

    def cancel(self, ticket: Ticket) -> None:
        """The ticket stopped waiting (timed out, cancelled): leave the queue."""
        priority = PRIORITIES[ticket.rank]
        queue = self._queues[priority]
        if ticket in queue:
            queue.remove(ticket)
            self.listener.queue_changed(self.pool, priority, len(queue))

    def try_now(self, ticket: Ticket) -> Lease | None:
        """A slot now on a trusted endpoint in rotation outside ``ticket.exclude``, never waiting (hedging)."""
        view = self.choice.view()
        if view.panic:
            return None
        free = [ep for ep in view.candidates(ticket) if ep.busy < ep.cap() and not ep.suspect]
        ep, _ = self.choice.best_free(free, ticket.chars, view, self.choice.affinity(ticket))
        if ep is None or not ep.breaker.allow():
            return None
        return self._lease(ticket, Decision(ep, Placement.FREE), view)

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
        if not self.depth() or not self._may_place():
            return 0  # nothing waits, or saturation: nobody could be placed (cheap)
        placed = 0
        view = self.choice.view()
        looked = 0
        for priority in PRIORITIES:
            queue = self._queues[priority]
            for ticket in list(queue):
                if looked >= PLAN_DEPTH:
                    return placed
                looked += 1
                decision = self._room(ticket, self.choice.decide(ticket, view), view)
                if decision.endpoint is None or not (view.panic or decision.endpoint.breaker.allow()):
                    self._plan(ticket, decision, view)
                    continue
                queue.remove(ticket)
                self.listener.queue_changed(self.pool, priority, len(queue))
                lease = self._lease(ticket, decision, view)
                placed += 1
                if ticket.on_placed is not None:
                    ticket.on_placed(lease)
        return placed

    def _room(self, ticket: Ticket, decision: Decision, view: View) -> Decision:
        """A batch request waits rather than take one of the last ``queue.batch_headroom`` free slots while
        interactive requests were seen lately."""
        if decision.endpoint is None or ticket.rank == 0:
            return decision
        queue = self.config.queue
        if view.now - self._interactive_at >= queue.batch_window or not queue.batch_headroom:
            return decision
        free = sum(max(0, ep.cap() - ep.busy) for ep in view.endpoints)
        room = min(queue.batch_headroom, sum(ep.cap() for ep in view.endpoints) - 1)  # a pool of one slot still serves
        return decision if free - 1 >= room else Decision()

    def _plan(self, ticket: Ticket, decision: Decision, view: View) -> None:
        """A ticket that keeps waiting (or would take a slot now) holds that slot in the view's plan."""
        if decision.endpoint is not None:
            view.plan.take(decision.endpoint, self.choice.predict(decision.endpoint, ticket.chars,
                                                                  decision.endpoint.busy + 1, view) or 0.0)
        elif decision.waits_for is not None:
            view.plan.take(decision.waits_for, decision.until)

    def _extrapolated(self, decision: Decision, beyond: int, view: View) -> float | None:
        """The expected wait, with the requests beyond the plan's depth served a round of slots at a time."""
        if decision.wait is None or beyond <= 0 or decision.waits_for is None:
            return decision.wait
        slots = sum(ep.cap() for ep in view.endpoints) or 1
        service = decision.until - decision.wait
        return decision.wait + service * beyond / slots

    def _may_place(self) -> bool:
        """Whether any waiting ticket could get a slot now (else a pass stops early: saturation is cheap)."""
        rotation = [ep for ep in self.endpoints if ep.in_rotation]
        if not rotation:  # panic mode may use what is there
            return any(not ep.draining for ep in self.endpoints)
        now = self.clock()
        return any(ep.busy < ep.cap() or ep.limit.may_stretch(ep.model, now) for ep in rotation)

    def _lease(self, ticket: Ticket, decision: Decision, view: View) -> Lease:
        ep, placement = decision.endpoint, decision.placement or Placement.FREE
        assert ep is not None
        if placement == Placement.EXPLORE:
            ep.explored(view.now)
        elif placement == Placement.STRETCH:
            ep.stretched(view.now)
        predicted = self.choice.predict(ep, ticket.chars, ep.busy + 1, view)
        suspect = ep.suspect
        if view.plan.free(ep):
            view.plan.take(ep, predicted or 0.0)
        queued = view.now - ticket.arrived
        lease = Lease(ep, ep.start(ticket.chars, ticket.affinity), predicted, queued=queued, panic=view.panic,
                      probe=ep.breaker.state == BreakerState.HALF_OPEN, priority=PRIORITIES[ticket.rank],
                      placement=Placement.QUEUED if queued > 0 and placement == Placement.FREE else placement,
                      suspect=suspect)
        ticket.lease = lease
        self.listener.picked(self.pool, ep, lease)
        return lease

    def retry_after(self, view: View | None = None) -> float:
        """When to come back: the earliest expected free slot or breaker reopening, at least 1 s."""
        view = view or self.choice.view()
        times = [view.plan.first_free()]
        times += [ep.breaker.retry_after() for ep in self.endpoints if ep.breaker.ejected]
        finite = [t for t in times if t > 0 and t != float("inf")]
        return max(1.0, min(finite) if finite else 1.0)
