"""Which endpoint of a pool takes a request, and when: scheduling by expected completion.

For a request of ``chars`` characters the scheduler compares, with the endpoints' learned models
(``EndpointModel``), what each option would cost:

- an endpoint with a free slot (``Endpoint.cap``): its expected time with the requests it already has;
- waiting: the expected time until a slot frees (for a request with others queued ahead, the slot
  its turn gets), plus the time on that endpoint.

It takes the cheapest free endpoint unless waiting is expected to finish sooner; ties go to the least
busy. Voice affinity: an endpoint that served the request's voice lately (its speaker conditioning is
likely cached) is preferred while it is about as quick as the best and less than half full. Weights divide the expected time (weight 2 looks twice as fast). An endpoint with no history is
given the pool's median estimate, so a new node is explored, not avoided. Before anything is learned
it is weighted least-outstanding and never waits while a slot is free.

Requests that wait are decided again whenever something changes (``reschedule``: a slot frees, an
endpoint joins, recovers, is undrained, its breaker closes, a reload), in priority order (interactive,
then batch; first come first served within each), so a waiting request never sits behind its first
choice while another endpoint it would now take is free.

Admission is by time: a request whose expected wait is longer than it may wait (the queue timeout, or
its deadline) is refused at once (``QueueFull``, 429 with Retry-After); ``queue.max_size`` only bounds
memory. Pure and synchronous: the clock, the rng and the endpoints are given; ``Pool`` adds the
waiting (futures, timeouts) around it.
"""

from __future__ import annotations

import math
import random
import statistics
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

from ..config.models import PoolConfig
from ..errors import NoHealthyEndpoint, QueueFull
from .breaker import BreakerState
from .clock import Clock
from .endpoint import Endpoint

PRIORITIES = ("interactive", "batch")
#: expected times this close count as equal
TIE_TOLERANCE = 0.05
#: the least remaining time assumed for a request already past its estimate, as a share of that estimate
OVERRUN_SHARE = 0.1
#: voice affinity: the endpoint that served the voice lately is preferred while this close to the quickest
#: (expected time within this factor) and less than half full, so one popular voice cannot pin a node
AFFINITY_TOLERANCE = 1.2


@dataclass(eq=False)
class Lease:
    """A slot held on an endpoint; give it back with ``Pool.finish`` (or ``Scheduler.release``)."""

    endpoint: Endpoint
    token: int
    predicted: float | None
    queued: float = 0.0
    #: taken while no endpoint of the pool was in rotation (health ignored)
    panic: bool = False
    #: the half-open breaker's probe
    probe: bool = False
    priority: str = "interactive"


@dataclass(eq=False)
class Ticket:
    """One request asking a pool for a slot."""

    chars: int
    priority: str = "interactive"
    #: endpoints this request already tried
    exclude: frozenset[str] = frozenset()
    #: may use unhealthy endpoints when none is in rotation (a route's last pool)
    allow_panic: bool = True
    #: the longest it may wait, in seconds (queue timeout or what is left of its deadline)
    limit: float = math.inf
    arrived: float = 0.0
    #: the voice (a key of its reference): endpoints that served it lately may have it cached
    affinity: str | None = None
    lease: Lease | None = None
    #: called once the ticket gets a slot (None: its pool was retired and it must go elsewhere)
    on_placed: Callable[[Lease | None], None] | None = None


class SchedulerListener:
    """What the scheduler reports (metrics); every method is a no-op here."""

    def picked(self, pool: str, endpoint: Endpoint, lease: Lease) -> None:
        """A request got a slot on ``endpoint`` (``lease.queued``: after waiting so long)."""

    def queue_changed(self, pool: str, priority: str, depth: int) -> None:
        """The number of requests waiting with ``priority`` changed."""

    def queue_rejected(self, pool: str, reason: str) -> None:
        """Admission refused a request: ``queue_full`` or ``expected_wait``."""


@dataclass
class _View:
    """One moment's view of a ticket's options, shared by the decisions of one pass."""

    now: float
    prior: Callable[[int, Endpoint | None], float | None]
    candidates: list[Endpoint]
    panic: bool
    free_slots: dict[str, float] = field(default_factory=dict)


class Scheduler:
    """A pool's queue and its choice of endpoint."""

    def __init__(self, pool: str, endpoints: Sequence[Endpoint], config: PoolConfig, clock: Clock,
                 rng: random.Random | None = None, listener: SchedulerListener | None = None) -> None:
        self.pool = pool
        self.endpoints = list(endpoints)
        self.config = config
        self.clock = clock
        self.rng = rng or random.Random()
        self.listener = listener or SchedulerListener()
        self._queues: dict[str, deque[Ticket]] = {p: deque() for p in PRIORITIES}
        self._busy = False
        self._again = False
        self._rr = -1

    def __repr__(self) -> str:
        return f"Scheduler(pool={self.pool!r}, endpoints={[e.name for e in self.endpoints]}, waiting={self.depth()})"

    def update(self, config: PoolConfig, endpoints: Sequence[Endpoint]) -> None:
        self.config = config
        self.endpoints = list(endpoints)

    def depth(self, priority: str | None = None) -> int:
        if priority is not None:
            return len(self._queues[priority])
        return sum(len(q) for q in self._queues.values())

    def waiting(self) -> Iterator[Ticket]:
        for priority in PRIORITIES:
            yield from self._queues[priority]

    # -- estimates ------------------------------------------------------------------------------------------

    def prior(self, now: float) -> Callable[[int, Endpoint | None], float | None]:
        """The pool's median unloaded estimate for a text length, leaving one endpoint out: what an endpoint
        with no (or old) history of its own is assumed to take, judged by the others."""
        known = [ep for ep in self.endpoints if ep.model.known]
        cache: dict[int, list[tuple[Endpoint, float]]] = {}

        def median(chars: int, leave_out: Endpoint | None = None) -> float | None:
            if chars not in cache:
                cache[chars] = [(ep, v) for ep in known if (v := ep.model.unloaded(chars)) is not None]
            values = [v for ep, v in cache[chars] if ep is not leave_out]
            return statistics.median(values) if values else None

        return median

    def predict(self, ep: Endpoint, chars: int, n: int, view: _View | None = None) -> float | None:
        """Expected seconds for ``chars`` on ``ep`` starting with ``n`` in flight (itself included)."""
        now = view.now if view else self.clock()
        prior = (view.prior if view else self.prior(now))(chars, ep)
        return ep.model.predict(chars, n, prior, now)

    def _remaining(self, ep: Endpoint, view: _View) -> list[float]:
        """Expected seconds until each request running on ``ep`` finishes, soonest first."""
        times = []
        for run in ep.running.values():
            expected = self.predict(ep, run.chars, run.n, view) or 0.0
            left = run.started + expected - view.now
            times.append(left if left >= 0 else OVERRUN_SHARE * expected - left)  # late: expect it to be later
        return sorted(times)

    def _slot_times(self, view: _View) -> list[tuple[float, Endpoint]]:
        """When slots of full candidates are expected to free, soonest first."""
        slots = []
        for ep in view.candidates:
            cap = ep.cap()
            if ep.busy < cap:
                continue
            remaining = self._remaining(ep, view)
            slots += [(t, ep) for t in remaining[max(0, min(len(remaining) - 1, ep.busy - cap)):]]
        return sorted(slots, key=lambda s: s[0])

    # -- deciding -------------------------------------------------------------------------------------------

    def _view(self, ticket: Ticket) -> _View:
        now = self.clock()
        candidates = [ep for ep in self.endpoints if ep.name not in ticket.exclude and ep.in_rotation]
        panic = False
        if not candidates and ticket.allow_panic and not any(ep.in_rotation for ep in self.endpoints):
            candidates = [ep for ep in self.endpoints if ep.name not in ticket.exclude and not ep.draining]
            panic = bool(candidates)
        return _View(now, self.prior(now), candidates, panic)

    def _cost(self, ep: Endpoint, chars: int, n: int, view: _View) -> float:
        predicted = self.predict(ep, chars, n, view)
        return math.inf if predicted is None else predicted / ep.weight

    def decide(self, ticket: Ticket, ahead: int, view: _View) -> tuple[Endpoint | None, bool, float | None]:
        """(endpoint to take now or None, whether it is a probe above its limit, expected wait when waiting)."""
        free = [ep for ep in view.candidates if ep.busy < ep.cap()]
        policy = self.config.balancer.policy
        if policy != "latency":
            return self._baseline(policy, free), False, None
        if view.prior(ticket.chars, None) is None:
            # nothing learned yet: weighted least-outstanding, never waiting while a slot is free
            return (min(free, key=lambda ep: ((ep.busy + 1) / ep.weight, ep.picks / ep.weight)) if free
                    else None), False, None
        best, best_cost = self._best_free(free, ticket.chars, view, self._affinity(ticket))
        wait_cost, wait = self._waiting(ticket.chars, ahead, view)
        if best is not None and best_cost <= wait_cost * (1 + TIE_TOLERANCE):
            return best, False, None
        probe = self._probe(view, ticket.chars, wait_cost)
        if probe is not None:
            return probe, True, None
        return None, False, wait

    def _best_free(self, free: list[Endpoint], chars: int, view: _View,
                   affinity: str | None = None) -> tuple[Endpoint | None, float]:
        if not free:
            return None, math.inf
        costs = {ep.name: self._cost(ep, chars, ep.busy + 1, view) for ep in free}
        low = min(costs.values())
        near = [ep for ep in free if costs[ep.name] <= low * (1 + TIE_TOLERANCE) + 1e-9]
        if affinity is not None:  # endpoints that served the voice lately, if about as quick and not crowded
            warm = [ep for ep in free if affinity in ep.recent_voices and costs[ep.name] <= low * AFFINITY_TOLERANCE
                    and ep.busy < max(1, ep.cap() // 2)]
            near = warm or near
        # near-ties go to the least busy, then the least picked for its weight: equal endpoints share light
        # traffic and keep their estimates fresh
        least = min((ep.busy / ep.cap(), ep.picks / ep.weight) for ep in near)
        tied = [ep for ep in near if (ep.busy / ep.cap(), ep.picks / ep.weight) == least]
        best = tied[0] if len(tied) == 1 else self.rng.choice(tied)
        return best, costs[best.name]

    def _affinity(self, ticket: Ticket) -> str | None:
        return ticket.affinity if self.config.balancer.voice_affinity else None

    def _waiting(self, chars: int, ahead: int, view: _View) -> tuple[float, float | None]:
        """(expected cost of waiting for a slot with ``ahead`` requests queued in front, expected wait)."""
        slots = self._slot_times(view)
        if not slots:
            return math.inf, None
        rounds, turn = divmod(ahead, len(slots))
        best_cost, best_wait = math.inf, math.inf
        for i, (t, ep) in enumerate(slots):
            service = self._cost(ep, chars, ep.cap(), view)
            if not math.isfinite(service):
                continue
            start = t + (rounds + (i < turn)) * service * ep.weight  # later rounds wait one service per round
            if start + service < best_cost:
                best_cost, best_wait = start + service, start
        return best_cost, (best_wait if math.isfinite(best_wait) else None)

    def _probe(self, view: _View, chars: int, wait_cost: float) -> Endpoint | None:
        """An endpoint at its learned limit that may take one more now to re-measure its curve."""
        options = [ep for ep in view.candidates if ep.busy == ep.cap() and ep.breaker.state == BreakerState.CLOSED
                   and ep.limit.may_probe(ep.model, view.now)]
        if not options:
            return None
        ep = min(options, key=lambda e: self._cost(e, chars, e.busy + 1, view))
        return ep if self._cost(ep, chars, ep.busy + 1, view) <= wait_cost * (1 + TIE_TOLERANCE) else None

    def _baseline(self, policy: str, free: list[Endpoint]) -> Endpoint | None:
        """The plain policies other proxies use: kept for comparison in bench/."""
        if not free:
            return None
        if policy == "round_robin":
            self._rr = (self._rr + 1) % len(self.endpoints)
            order = self.endpoints[self._rr:] + self.endpoints[:self._rr]
            return next(ep for ep in order if ep in free)
        return min(free, key=lambda ep: ((ep.busy + 1) / ep.weight, ep.picks / ep.weight))

    # -- placing --------------------------------------------------------------------------------------------

    def submit(self, ticket: Ticket) -> Lease | None:
        """A slot now, or None after queueing the ticket (``on_placed`` is called when it gets one).

        Raises ``NoHealthyEndpoint`` when nothing is selectable, ``QueueFull`` when admission refuses.
        """
        ticket.arrived = self.clock()
        view = self._view(ticket)
        if not view.candidates:
            raise NoHealthyEndpoint(f"pool {self.pool!r} has no healthy endpoint", retry_after=self.retry_after())
        ahead = sum(len(self._queues[p]) for p in PRIORITIES[:self._rank(ticket) + 1])
        ep, probe, wait = self.decide(ticket, ahead, view)
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
        view = self._view(ticket)
        if view.panic:
            return None
        free = [ep for ep in view.candidates if ep.busy < ep.cap()]
        ep, _ = self._best_free(free, ticket.chars, view, self._affinity(ticket))
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
                view = self._view(ticket)
                ep, probe, _ = self.decide(ticket, ahead, view) if view.candidates else (None, False, None)
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

    def _lease(self, ticket: Ticket, ep: Endpoint, view: _View, probe: bool) -> Lease:
        if probe:
            ep.limit.probed(view.now)
        predicted = self.predict(ep, ticket.chars, ep.busy + 1, view)
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
        view = _View(self.clock(), self.prior(self.clock()), [ep for ep in self.endpoints if ep.available], False)
        times = [t for t, _ in self._slot_times(view)[:1]]
        times += [ep.breaker.retry_after() for ep in self.endpoints if ep.breaker.ejected]
        return max(1.0, min(times) if times else 1.0)
