"""Which endpoint a request takes now, or how long it would wait: the decision, kept apart from the queue.

For a request of ``chars`` characters it compares, with the endpoints' learned models (``EndpointModel``):

- an endpoint with a free slot: its expected time with the requests it already has;
- waiting: when a slot is expected to free (``SlotPlan``: the requests queued ahead take the slots that
  free first, each for its own expected time, so a short text behind twenty long ones knows it would
  wait long) plus its time on that endpoint.

It takes the cheapest free endpoint unless waiting is expected to finish sooner, so an idle slow
endpoint gets exactly the queued requests it finishes before their turn elsewhere would come. Among free
endpoints a busy one's time counts up to 30 % more (GPU servers batch: four requests on one node are each
slower than two and two on two, which times learned at lighter load do not show); ties and near ties
(within 5 %) go to the endpoint with fewer requests in flight for its size, then the one picked least:
equal endpoints share light traffic, and a new one is tried at once. Voice affinity: an endpoint
that served the request's voice lately (its speaker conditioning is likely cached) is preferred while it
is about as quick as the best (within 20 %) and has at most one request more in flight than the least
busy of those: a popular voice still spreads. Weights divide the expected time.

Slow start: an endpoint in its window takes new work only within its ramped *share* while another
endpoint could take it, and up to its limit when the request would otherwise wait (``OVERFLOW``); when
endpoints in slow start hold half the pool's capacity or more (the fleet joined together), no ramp
applies. An endpoint with no history is given the rest of the pool's median estimate, so a new node is
explored, not avoided; an idle endpoint with an old estimate gets a short text (``EXPLORE``), and an
endpoint under suspicion (a timeout since its last answer, its breaker half-open) gets only texts no
longer than the pool's median (its tries are hedged too: ``attempt``). Before anything is learned it is
weighted least-outstanding and never waits while a slot is free.

Batch requests (long-form jobs' segments, ``x-priority: batch``) are judged by their throughput, not each
one's completion: one never waits for a quicker endpoint while a slot it may use is free.

Pure: it reads endpoints and returns a ``Decision``; ``Scheduler`` carries it out.
"""

from __future__ import annotations

import math
import random
from collections import deque
from collections.abc import Sequence

from ..config.models import PoolConfig
from .breaker import BreakerState
from .clock import Clock
from .endpoint import Endpoint
from .ticket import Placement, Ticket
from .view import Decision, Prior, View

#: texts this long (this quantile of recent lengths) set the time budget a short text may take elsewhere
LONG_QUANTILE = 0.9
LENGTH_MEMORY = 256
#: the share of the pool's slots in use from which quick endpoints are spared for long texts
SPARE_FROM = 0.5
#: expected times this close count as equal: within 5 %, or within 20 ms (below that it is transport and noise, not
#: synthesis: equal quick nodes share sequential requests instead of one winning by a millisecond)
TIE_TOLERANCE = 0.05
TIE_SECONDS = 0.02
#: choosing among free endpoints, a full one's expected time counts this much more than an idle one's (GPUs batch)
CROWDING = 0.3
#: the least remaining time assumed for a request already past its estimate, as a share of that estimate
OVERRUN_SHARE = 0.1
#: voice affinity: the endpoint that served the voice lately is preferred while this close to the quickest
#: (expected time within this factor) and free: a popular voice spills over once its endpoint is full
AFFINITY_TOLERANCE = 1.2
#: ...and while it has at most this many more requests in flight than the least busy of them: a voice that every
#: client asks for spreads over the fleet (GPUs batch: two and two beat four on one), a new node gets its share
AFFINITY_SLACK = 1
#: slow start applies only while endpoints out of their window hold at least this share of the pool's slots
SETTLED_SHARE = 0.5

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

    # -- what is expected -----------------------------------------------------------------------------------

    def prior(self) -> Prior:
        """The pool's median unloaded estimate for a text length, leaving one endpoint out: what an endpoint
        with no (or old) history of its own is assumed to take, judged by the others."""
        known = [ep for ep in self.endpoints if ep.model.known]
        cache: dict[int, tuple[dict[Endpoint, float], list[float]]] = {}

        def median(chars: int, leave_out: Endpoint | None = None) -> float | None:
            entry = cache.get(chars)
            if entry is None:
                values = {ep: v for ep in known if (v := ep.model.unloaded(chars)) is not None}
                entry = cache[chars] = (values, sorted(values.values()))
            values, ordered = entry
            if leave_out is not None and leave_out in values:
                ordered = ordered.copy()
                ordered.remove(values[leave_out])
            if not ordered:
                return None
            mid = len(ordered) // 2
            return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2

        return median

    def peers_parallel(self) -> float | None:
        """What the pool's endpoints that know it run at once (their median): the best guess for one whose own
        is not known yet, as the endpoints of a pool are usually alike."""
        known = sorted(e.model.parallel for e in self.endpoints if e.model.parallel_known)
        return known[len(known) // 2] if known else None

    def predict(self, ep: Endpoint, chars: int, n: int, view: View | None = None, *,
                answered: bool = False) -> float | None:
        """Expected seconds for ``chars`` on ``ep`` starting with ``n`` in flight (itself included); ``answered``:
        as its answers say, without the penalty of timeouts since its last one."""
        view = view or self.view()
        return ep.model.predict(chars, n, view.prior(chars, ep), view.peers_parallel, view.now, answered=answered)

    def timeout_basis(self, ep: Endpoint, chars: int, n: int) -> float | None:
        """What a try's timeout on ``ep`` is measured against: its expected time. Timeouts since its last answer
        raise it (a fleet that slows down is followed) only up to what the slowest of its peers is expected to
        take for the same text: a node that hangs while its peers answer keeps a short timeout, so the client
        whose request went there is soon served elsewhere."""
        view = self.view()
        own = self.predict(ep, chars, n, view)
        if own is None or not ep.model.suspect:
            return own
        answered = self.predict(ep, chars, n, view, answered=True) or own
        peers = [t for other in view.endpoints if other is not ep and other.model.known
                 and (t := self.predict(other, chars, 1, view)) is not None]
        return max(answered, min(own, max(peers))) if peers else own

    def _cost(self, ep: Endpoint, chars: int, n: int, view: View) -> float:
        """Expected seconds divided by the endpoint's weight (inf when nothing is known)."""
        key = (ep, chars, n)
        cost = view._costs.get(key)
        if cost is None:
            predicted = self.predict(ep, chars, n, view)
            cost = view._costs[key] = math.inf if predicted is None else predicted / ep.weight
        return cost

    def remaining(self, ep: Endpoint, view: View) -> list[float]:
        """Expected seconds until each request running on ``ep`` finishes, soonest first; requests of other
        routers on the node (its reported load) are assumed half done with a typical text."""
        times = []
        for run in ep.running.values():
            expected = self.predict(ep, run.chars, run.n, view) or 0.0
            left = run.started + expected - view.now
            times.append(left if left >= 0 else OVERRUN_SHARE * expected - left)  # late: expect it to be later
        if ep.external:
            typical = self.predict(ep, self._median or 100, 1, view) or 0.0
            times += [typical / 2] * ep.external
        return sorted(times)

    # -- a moment's view ------------------------------------------------------------------------------------

    def view(self) -> View:
        """The pool now: who may be used, whether slow start applies, and when each slot frees."""
        now = self.clock()
        rotation = [ep for ep in self.endpoints if ep.in_rotation]
        panic = not rotation
        endpoints = rotation or [ep for ep in self.endpoints if not ep.draining]
        view = View(now, self.prior(), endpoints, panic, self.peers_parallel(), self._ramps(endpoints))
        for ep in endpoints:
            cap = ep.cap()
            remaining = self.remaining(ep, view)
            view.plan.add(ep, [0.0] * max(0, cap - ep.busy) + remaining[max(0, len(remaining) - cap):])
        return view

    @staticmethod
    def _ramps(endpoints: list[Endpoint]) -> bool:
        """Slow start protects a few endpoints joining a pool that serves; it has nothing to protect them with
        when most of the pool's slots are joining too."""
        total = sum(ep.cap() for ep in endpoints)
        settled = sum(ep.cap() for ep in endpoints if not ep.ramping())
        return total > 0 and settled >= SETTLED_SHARE * total

    # -- deciding -------------------------------------------------------------------------------------------

    def decide(self, ticket: Ticket, view: View) -> Decision:
        """Take an endpoint now, or wait (the plan's slot that would finish it first)."""
        candidates = view.candidates(ticket)
        if not candidates:
            return Decision()
        if self._median is not None and ticket.chars > self._median and not all(ep.suspect for ep in candidates):
            candidates = [ep for ep in candidates if not ep.suspect]  # a suspect is tried with short texts only
        free = [ep for ep in candidates if view.plan.free(ep) and ep.busy < ep.share(view.ramp)]
        overflow = [ep for ep in candidates if view.plan.free(ep) and ep.busy < ep.cap() and ep not in free]
        policy = self.config.balancer.policy
        if policy != "latency":
            ep = self._baseline(policy, free or overflow)
            return Decision(ep, Placement.FREE if ep in free else Placement.OVERFLOW) if ep else Decision()
        if view.prior(ticket.chars, None) is None:
            # nothing learned yet: weighted least-outstanding, never waiting while a slot is free
            for group, placement in ((free, Placement.FREE), (overflow, Placement.OVERFLOW)):
                if group:
                    return Decision(min(group, key=lambda ep: ((ep.busy + 1) / ep.weight, ep.picks / ep.weight)),
                                    placement)
            return Decision()
        stale = self._explore(free, ticket.chars, view)
        if stale is not None:
            return Decision(stale, Placement.EXPLORE)
        if ticket.priority == "batch" and (free or overflow):  # batch work counts its throughput: any free slot
            best, _ = self.best_free(free or overflow, ticket.chars, view)
            return Decision(best, Placement.FREE if free else Placement.OVERFLOW)
        wait = self._waiting(candidates, ticket.chars, view)
        limit = wait.until * (1 + TIE_TOLERANCE) if math.isfinite(wait.until) else math.inf
        best, best_cost = self.best_free(free, ticket.chars, view, self.affinity(ticket))
        if best is not None:
            spare = self._spare(candidates, free, best, best_cost, ticket.chars, view)
            if spare is not None and spare is not best:  # busy pool: a free endpoint within budget beats waiting
                return Decision(spare, Placement.FREE)
            if best_cost <= limit:
                return Decision(best, Placement.FREE)
        over, over_cost = self.best_free(overflow, ticket.chars, view)
        if over is not None and over_cost <= limit:
            return Decision(over, Placement.OVERFLOW)
        stretch = self._stretch(candidates, ticket.chars, view, limit)
        if stretch is not None:
            return Decision(stretch, Placement.STRETCH)
        return wait

    def note(self, chars: int) -> None:
        """A request arrived with ``chars`` characters (for the pool's typical and long text lengths)."""
        self._lengths.append(chars)
        if len(self._lengths) % 32 == 0 or self._long is None:
            ordered = sorted(self._lengths)
            self._long = ordered[min(len(ordered) - 1, int(LONG_QUANTILE * len(ordered)))]
            self._median = ordered[len(ordered) // 2]

    def _explore(self, free: list[Endpoint], chars: int, view: View) -> Endpoint | None:
        """An idle endpoint whose estimate is old, or whose breaker lets a probe through, gets a short text: a
        node once slow may be quick again, and a short text costs least to learn (and to hedge)."""
        if self._median is None or chars > self._median:
            return None
        for ep in free:
            if ep.busy == 0 and ep.model.known and (ep.model.stale(view.now)
                                                     or ep.breaker.state == BreakerState.HALF_OPEN):
                return ep
        return None

    def _waiting(self, candidates: list[Endpoint], chars: int, view: View) -> Decision:
        """The best slot to wait for: the earliest expected finish over the candidates' full endpoints."""
        best = Decision()
        for ep in candidates:
            start = view.plan.earliest(ep)
            if start <= 0.0 or not math.isfinite(start):
                continue  # a free slot is weighed as such, not as a wait
            cost = self._cost(ep, chars, max(1, ep.cap()), view)
            if math.isfinite(cost) and start + cost < best.until:
                best = Decision(wait=start, waits_for=ep, until=start + cost)
        return best

    def _spare(self, candidates: list[Endpoint], free: list[Endpoint], best: Endpoint, best_cost: float,
               chars: int, view: View) -> Endpoint | None:
        """When the pool is busy, the slowest free endpoint that still finishes within what a long text takes
        on the quickest one: quick endpoints stay free for the long texts, which only they finish in time."""
        if self._long is None:
            return best
        long_costs = {ep: self._cost(ep, self._long, 1, view) for ep in candidates}
        quickest = min(long_costs.values())
        quick = [ep for ep in candidates if long_costs[ep] <= quickest * (1 + TIE_TOLERANCE)]
        if sum(ep.busy for ep in quick) < SPARE_FROM * sum(ep.cap() for ep in quick):
            return best  # the quick endpoints have room: no need to spare them
        budget = max(quickest, best_cost * (1 + TIE_TOLERANCE))
        costs = {ep: self._cost(ep, chars, ep.busy + 1, view) for ep in free}
        fits = [ep for ep in free if costs[ep] <= budget]
        if not fits:
            return None
        slowest = max(fits, key=lambda ep: costs[ep])
        if costs[slowest] <= best_cost * (1 + TIE_TOLERANCE):
            return best  # nothing clearly slower to spare the quick ones with: the usual near-tie rules
        return slowest

    def best_free(self, free: list[Endpoint], chars: int, view: View,
                  affinity: str | None = None) -> tuple[Endpoint | None, float]:
        if not free:
            return None, math.inf
        costs = {ep: self._cost(ep, chars, ep.busy + 1, view) for ep in free}
        # GPU servers batch: each request on a node slows the others a little, which times learned while it was less
        # busy do not show; a crowded endpoint wins over an idle one only when it is clearly quicker
        crowded = {ep: cost * (1 + CROWDING * ep.busy / ep.cap()) for ep, cost in costs.items()}
        low = min(crowded.values())
        near = [ep for ep in free if crowded[ep] <= max(low * (1 + TIE_TOLERANCE), low + TIE_SECONDS)]
        if affinity is not None:  # endpoints that served the voice lately, if about as quick and hardly busier
            fewest = min(ep.busy for ep in near)
            warm = [ep for ep in free if affinity in ep.recent_voices and crowded[ep] <= low * AFFINITY_TOLERANCE
                    and ep.busy <= fewest + AFFINITY_SLACK]
            near = warm or near
        # near-ties go to the one with fewer requests in flight for its size, then the least picked for its
        # weight: equal endpoints share light traffic and keep their estimates fresh, a new one is tried at once
        least = min((ep.busy / ep.cap(), ep.picks / ep.weight) for ep in near)
        tied = [ep for ep in near if (ep.busy / ep.cap(), ep.picks / ep.weight) == least]
        best = tied[0] if len(tied) == 1 else self.rng.choice(tied)
        return best, costs[best]

    def affinity(self, ticket: Ticket) -> str | None:
        return ticket.affinity if self.config.balancer.voice_affinity else None

    def _stretch(self, candidates: list[Endpoint], chars: int, view: View, limit: float) -> Endpoint | None:
        """An endpoint at its learned limit that may take one more now, to re-measure its curve there."""
        options = [ep for ep in candidates if ep.busy == ep.cap() and ep.breaker.state == BreakerState.CLOSED
                   and not ep.suspect and ep.limit.may_stretch(ep.model, view.now)]
        if not options:
            return None
        ep = min(options, key=lambda e: self._cost(e, chars, e.busy + 1, view))
        return ep if self._cost(ep, chars, ep.busy + 1, view) <= limit else None

    def _baseline(self, policy: str, free: list[Endpoint]) -> Endpoint | None:
        """The plain policies other proxies use: kept for comparison in bench/."""
        if not free:
            return None
        if policy == "round_robin":
            self._rr = (self._rr + 1) % len(self.endpoints)
            order = self.endpoints[self._rr:] + self.endpoints[:self._rr]
            return next(ep for ep in order if ep in free)
        return min(free, key=lambda ep: ((ep.busy + 1) / ep.weight, ep.picks / ep.weight))
