"""Which endpoint a request would take now, or how long it would wait: the decision, kept apart from the queue.

For a request of ``chars`` characters it compares, with the endpoints' learned models (``EndpointModel``):

- an endpoint with a free slot (``Endpoint.cap``): its expected time with the requests it already has;
- waiting: the expected time until a slot frees (for a request with others queued ahead, the slot its
  turn gets), plus the time on that endpoint.

It takes the cheapest free endpoint unless waiting is expected to finish sooner; ties go to the least
busy. Voice affinity: an endpoint that served the request's voice lately (its speaker conditioning is
likely cached) is preferred while it has a free slot and is about as quick as the best (within 20 %): a
popular voice fills its endpoint's slots, then spills to the next, which then shares it. Weights
divide the expected time (weight 2 looks twice as fast). An endpoint with no history is given the rest
of the pool's median estimate, so a new node is explored, not avoided. Before anything is learned it is
weighted least-outstanding and never waits while a slot is free. ``Scheduler`` puts these decisions to
work on its queue.
"""

from __future__ import annotations

import math
import random
import statistics
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..config.models import PoolConfig
from .breaker import BreakerState
from .clock import Clock
from .endpoint import Endpoint

if TYPE_CHECKING:
    from .scheduler import Lease

#: texts this long (this quantile of recent lengths) set the time budget a short text may take elsewhere
LONG_QUANTILE = 0.9
LENGTH_MEMORY = 256
#: the share of the pool's slots in use from which quick endpoints are spared for long texts
SPARE_FROM = 0.5
#: expected times this close count as equal
TIE_TOLERANCE = 0.05
#: the least remaining time assumed for a request already past its estimate, as a share of that estimate
OVERRUN_SHARE = 0.1
#: voice affinity: the endpoint that served the voice lately is preferred while this close to the quickest
#: (expected time within this factor) and free: a popular voice spills over once its endpoint is full
AFFINITY_TOLERANCE = 1.2


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


@dataclass
class View:
    """One moment's view of a ticket's options, shared by the decisions of one pass."""

    now: float
    prior: Callable[[int, Endpoint | None], float | None]
    candidates: list[Endpoint]
    panic: bool
    peers_parallel: float | None = None


class Choice:
    """The decisions of one pool's scheduler, over its endpoints as they are now."""

    def __init__(self, endpoints: Sequence[Endpoint], config: PoolConfig, clock: Clock, rng: random.Random) -> None:
        self.endpoints = list(endpoints)
        self.config = config
        self.clock = clock
        self.rng = rng
        self._rr = -1
        self._lengths: deque[int] = deque(maxlen=LENGTH_MEMORY)
        self._long: int | None = None
        self._median: int | None = None

    def __repr__(self) -> str:
        return f"Choice(endpoints={[e.name for e in self.endpoints]}, policy={self.config.balancer.policy!r})"

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

    def predict(self, ep: Endpoint, chars: int, n: int, view: View | None = None) -> float | None:
        """Expected seconds for ``chars`` on ``ep`` starting with ``n`` in flight (itself included)."""
        now = view.now if view else self.clock()
        prior = (view.prior if view else self.prior(now))(chars, ep)
        peers = view.peers_parallel if view else self.peers_parallel()
        return ep.model.predict(chars, n, prior, peers)

    def peers_parallel(self) -> float | None:
        """What the pool's endpoints that know it run at once (their median): the best guess for one whose own
        is not known yet, as the endpoints of a pool are usually alike."""
        known = sorted(e.model.parallel for e in self.endpoints if e.model.parallel_known)
        return known[len(known) // 2] if known else None

    def remaining(self, ep: Endpoint, view: View) -> list[float]:
        """Expected seconds until each request running on ``ep`` finishes, soonest first."""
        times = []
        for run in ep.running.values():
            expected = self.predict(ep, run.chars, run.n, view) or 0.0
            left = run.started + expected - view.now
            times.append(left if left >= 0 else OVERRUN_SHARE * expected - left)  # late: expect it to be later
        return sorted(times)

    def slot_times(self, view: View) -> list[tuple[float, Endpoint]]:
        """When slots of full candidates are expected to free, soonest first."""
        slots = []
        for ep in view.candidates:
            cap = ep.cap()
            if ep.busy < cap:
                continue
            remaining = self.remaining(ep, view)
            slots += [(t, ep) for t in remaining[max(0, min(len(remaining) - 1, ep.busy - cap)):]]
        return sorted(slots, key=lambda s: s[0])

    def view(self, ticket: Ticket) -> View:
        now = self.clock()
        candidates = [ep for ep in self.endpoints if ep.name not in ticket.exclude and ep.in_rotation]
        panic = False
        if not candidates and ticket.allow_panic and not any(ep.in_rotation for ep in self.endpoints):
            candidates = [ep for ep in self.endpoints if ep.name not in ticket.exclude and not ep.draining]
            panic = bool(candidates)
        return View(now, self.prior(now), candidates, panic, self.peers_parallel())

    def _cost(self, ep: Endpoint, chars: int, n: int, view: View) -> float:
        predicted = self.predict(ep, chars, n, view)
        return math.inf if predicted is None else predicted / ep.weight

    def decide(self, ticket: Ticket, ahead: int, view: View) -> tuple[Endpoint | None, bool, float | None]:
        """(endpoint to take now or None, whether it is a probe above its limit, expected wait when waiting)."""
        free = [ep for ep in view.candidates if ep.busy < ep.cap()]
        policy = self.config.balancer.policy
        if policy != "latency":
            return self._baseline(policy, free), False, None
        if view.prior(ticket.chars, None) is None:
            # nothing learned yet: weighted least-outstanding, never waiting while a slot is free
            return (min(free, key=lambda ep: ((ep.busy + 1) / ep.weight, ep.picks / ep.weight)) if free
                    else None), False, None
        stale = self._explore(free, ticket.chars, view)
        if stale is not None:
            return stale, False, None
        best, best_cost = self.best_free(free, ticket.chars, view, self.affinity(ticket))
        wait_cost, wait = self._waiting(ticket.chars, ahead, view)
        spare = self._spare(free, best, best_cost, ticket.chars, view) if best is not None else None
        if spare is not None and spare is not best:  # busy pool: a free endpoint within budget beats waiting
            return spare, False, None
        if best is not None and best_cost <= wait_cost * (1 + TIE_TOLERANCE):
            return best, False, None
        probe = self._probe(view, ticket.chars, wait_cost)
        if probe is not None:
            return probe, True, None
        return None, False, wait

    def note(self, chars: int) -> None:
        """A request arrived with ``chars`` characters (for the pool's typical and long text lengths)."""
        self._lengths.append(chars)
        if len(self._lengths) % 32 == 0 or self._long is None:
            ordered = sorted(self._lengths)
            self._long = ordered[min(len(ordered) - 1, int(LONG_QUANTILE * len(ordered)))]
            self._median = ordered[len(ordered) // 2]

    def _explore(self, free: list[Endpoint], chars: int, view: View) -> Endpoint | None:
        """An idle endpoint nothing was heard from for a half-life gets a short text (at most one per half-life):
        its estimate may be stale (a node once slow may be quick again), and a short text costs least to learn."""
        if self._median is None or chars > self._median:
            return None
        for ep in free:
            if ep.busy == 0 and ep.model.known and ep.model.stale(view.now):
                ep.model.heard = view.now  # tried: the next look waits for its answer or another half-life
                return ep
        return None

    def _spare(self, free: list[Endpoint], best: Endpoint, best_cost: float, chars: int,
               view: View) -> Endpoint | None:
        """When the pool is busy, the slowest free endpoint that still finishes within what a long text takes
        on the quickest one: quick endpoints stay free for the long texts, which only they finish in time."""
        if self._long is None:
            return best
        long_costs = {ep.name: self._cost(ep, self._long, 1, view) for ep in view.candidates}
        quickest = min(long_costs.values())
        quick = [ep for ep in view.candidates if long_costs[ep.name] <= quickest * (1 + TIE_TOLERANCE)]
        if sum(ep.busy for ep in quick) < SPARE_FROM * sum(ep.cap() for ep in quick):
            return best  # the quick endpoints have room: no need to spare them
        budget = max(quickest, best_cost * (1 + TIE_TOLERANCE))
        fits = [ep for ep in free if self._cost(ep, chars, ep.busy + 1, view) <= budget]
        if not fits:
            return None
        slowest = max(fits, key=lambda ep: self._cost(ep, chars, ep.busy + 1, view))
        if self._cost(slowest, chars, slowest.busy + 1, view) <= best_cost * (1 + TIE_TOLERANCE):
            return best  # nothing clearly slower to spare the quick ones with: the usual near-tie rules
        return slowest

    def best_free(self, free: list[Endpoint], chars: int, view: View,
                   affinity: str | None = None) -> tuple[Endpoint | None, float]:
        if not free:
            return None, math.inf
        costs = {ep.name: self._cost(ep, chars, ep.busy + 1, view) for ep in free}
        low = min(costs.values())
        near = [ep for ep in free if costs[ep.name] <= low * (1 + TIE_TOLERANCE) + 1e-9]
        if affinity is not None:  # endpoints that served the voice lately, if about as quick and not crowded
            warm = [ep for ep in free if affinity in ep.recent_voices and costs[ep.name] <= low * AFFINITY_TOLERANCE]
            near = warm or near
        # near-ties go to the least busy, then the least picked for its weight: equal endpoints share light
        # traffic and keep their estimates fresh
        least = min((ep.busy / ep.cap(), ep.picks / ep.weight) for ep in near)
        tied = [ep for ep in near if (ep.busy / ep.cap(), ep.picks / ep.weight) == least]
        best = tied[0] if len(tied) == 1 else self.rng.choice(tied)
        return best, costs[best.name]

    def affinity(self, ticket: Ticket) -> str | None:
        return ticket.affinity if self.config.balancer.voice_affinity else None

    def _waiting(self, chars: int, ahead: int, view: View) -> tuple[float, float | None]:
        """(expected cost of waiting for a slot with ``ahead`` requests queued in front, expected wait)."""
        slots = self.slot_times(view)
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

    def _probe(self, view: View, chars: int, wait_cost: float) -> Endpoint | None:
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

