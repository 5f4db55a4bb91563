"""A discrete-event simulation of a pool of GPU-like nodes, driving the real ``Scheduler`` and ``Pool.finish``.

No HTTP and no asyncio: a ``FakeClock`` moves from event to event, so scenarios replay exactly. A
``SimNode`` works like a TTS node: ``slots`` requests at once, the rest queue inside it, each taking
``(base + per_char x chars) x slowdown``. A request the router gives up on (its per-try timeout) keeps the
node busy until the node finishes it, as on a real node. Retries follow the attempt loop's rules in
short: another endpoint, twice the time after a timeout, at most ``attempts`` tries.
"""

from __future__ import annotations

import heapq
import itertools
import math
import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from speech_router.backends.base import Backend, BackendContext
from speech_router.config.models import EndpointConfig, PoolConfig
from speech_router.errors import QueueFull, Unavailable
from speech_router.router.clock import FakeClock
from speech_router.router.endpoint import Endpoint
from speech_router.router.latency import LatencyModel
from speech_router.router.outlier import Outcome
from speech_router.router.pool import Pool
from speech_router.router.ticket import Lease, Ticket
from speech_router.types import HealthReport


class Idle(Backend):
    """A backend the simulation never calls: the endpoint's work is simulated."""

    type = "sim"

    async def synthesize(self, request):  # pragma: no cover - never called
        raise NotImplementedError

    async def health(self) -> HealthReport:  # pragma: no cover
        return HealthReport(True)


@dataclass
class SimNode:
    name: str
    slots: int = 1
    base: float = 0.05
    per_char: float = 0.002
    slowdown: float = 1.0
    busy: int = 0
    queue: deque = field(default_factory=deque)
    #: (start, end): requests started in it answer only after its end, as a node that hangs and comes back
    hang: tuple[float, float] | None = None
    #: each other request in flight makes one this much slower (a GPU batching several requests)
    batching: float = 0.0

    def service(self, chars: int, now: float = 0.0) -> float:
        seconds = (self.base + self.per_char * chars) * self.slowdown * (1 + self.batching * (self.busy - 1))
        if self.hang is not None and self.hang[0] <= now < self.hang[1]:
            return self.hang[1] - now + seconds
        return seconds


@dataclass(eq=False)
class Request:
    chars: int
    priority: str = "interactive"
    arrived: float = 0.0
    done: float | None = None
    status: str = "pending"  # pending, ok, failed, refused
    endpoints: list[str] = field(default_factory=list)
    tries: int = 0
    growth: float = 1.0
    lease: Lease | None = None
    #: called once the request is answered or failed (a client that sends its next one)
    on_done: Callable[[Request], None] | None = None

    def finished(self, status: str, when: float) -> None:
        self.status, self.done = status, when
        if self.on_done is not None:
            self.on_done(self)

    @property
    def latency(self) -> float:
        assert self.done is not None
        return self.done - self.arrived


class Sim:
    """One pool of simulated nodes; ``submit`` requests, ``run`` until quiet or a time."""

    def __init__(self, nodes: list[SimNode], timeouts: bool = False, attempts: int = 3, seed: int = 1,
                 **pool: Any) -> None:
        self.clock = FakeClock(0.0)
        self.nodes = {n.name: n for n in nodes}
        config = PoolConfig.model_validate({"type": "sim", "health_check": {"enabled": False}, **pool})
        self.config = config
        self.shape = LatencyModel(config.balancer.latency_half_life)  # the pool's, as the fleet shares it
        self.pool = Pool("p", "sim", [self.endpoint(n.name) for n in nodes], config, self.clock, random.Random(seed))
        self.timeouts = timeouts
        self.attempts = attempts
        self.requests: list[Request] = []
        self._events: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = itertools.count()
        self.hedges = 0

    def endpoint(self, name: str, **settings: Any) -> Endpoint:
        config = self.config
        backend = Idle(EndpointConfig(name=name, **settings), Idle.Options(), BackendContext("p", config))
        ep = Endpoint(backend, "p", clock=self.clock, max_concurrency=settings.get("max_concurrency")
                      or config.max_concurrency, breaker=config.breaker, balancer=config.balancer,
                      health_check=config.health_check, shape=self.shape)
        ep.record_check(True)
        return ep

    def add_node(self, node: SimNode) -> Endpoint:
        """A node joins (a reload): it ramps up from now."""
        self.nodes[node.name] = node
        ep = self.endpoint(node.name)
        ep.joined()
        self.pool.update(self.config, [*self.pool.endpoints, ep], "sim")
        return ep

    def ep(self, name: str) -> Endpoint:
        return next(e for e in self.pool.endpoints if e.name == name)

    # -- events ---------------------------------------------------------------------------------------------

    def at(self, when: float, action: Callable[[], None]) -> None:
        heapq.heappush(self._events, (when, next(self._seq), action))

    def run(self, until: float = math.inf) -> None:
        while self._events and self._events[0][0] <= until:
            when, _, action = heapq.heappop(self._events)
            self.clock.now = max(self.clock.now, when)
            action()
        if math.isfinite(until):
            self.clock.now = max(self.clock.now, until)

    # -- requests -------------------------------------------------------------------------------------------

    def submit(self, chars: int, priority: str = "interactive", limit: float = math.inf) -> Request:
        request = Request(chars, priority, arrived=self.clock())
        self.requests.append(request)
        self._ask(request, limit)
        return request

    def submit_at(self, when: float, chars: int, priority: str = "interactive") -> None:
        self.at(when, lambda: self.submit(chars, priority))

    def client(self, chars: int, until: float, think: float = 0.0) -> None:
        """A client that sends its next request ``think`` seconds after each answer, until ``until``."""

        def send() -> None:
            if self.clock() < until:
                self.submit(chars).on_done = lambda _: self.at(self.clock() + think, send)

        send()

    def _ask(self, request: Request, limit: float = math.inf) -> None:
        ticket = Ticket(request.chars, request.priority, frozenset(request.endpoints), True, limit)
        ticket.on_placed = lambda lease: lease is not None and self._start(request, lease)
        try:
            lease = self.pool.scheduler.submit(ticket)
        except (QueueFull, Unavailable) as exc:
            request.finished("refused" if isinstance(exc, QueueFull) else "failed", self.clock())
            return
        if lease is not None:
            self._start(request, lease)

    def _start(self, request: Request, lease: Lease, sibling: dict[str, Any] | None = None) -> None:
        request.lease = lease
        request.tries += 1
        request.endpoints.append(lease.endpoint.name)
        node = self.nodes[lease.endpoint.name]
        job: dict[str, Any] = {"request": request, "lease": lease, "settled": False, "sibling": sibling}
        if sibling is not None:
            sibling["sibling"] = job
        if self.timeouts:
            timeout = self.pool.per_try_timeout(lease, request.chars) * request.growth
            self.at(self.clock() + timeout, lambda: self._timed_out(job, timeout))
            if lease.suspect and sibling is None:  # the attempt loop hedges a try on a suspect endpoint
                delay = min(timeout / 2, self.pool.suspect_hedge_delay(lease.endpoint, request.chars))
                self.at(self.clock() + delay, lambda: self._hedge(job))
        node.queue.append(job)
        self._serve(node)

    def _hedge(self, job: dict[str, Any]) -> None:
        request = job["request"]
        if job["settled"] or request.status != "pending" or job["sibling"] is not None:
            return
        lease = self.pool.try_now(Ticket(request.chars, exclude=frozenset(request.endpoints), allow_panic=False))
        if lease is not None:
            self.hedges += 1
            self._start(request, lease, sibling=job)
        else:  # nothing free elsewhere yet: the attempt loop looks again as slots free
            self.at(self.clock() + 0.05, lambda: self._hedge(job))

    def _serve(self, node: SimNode) -> None:
        while node.busy < node.slots and node.queue:
            job = node.queue.popleft()
            node.busy += 1
            self.at(self.clock() + node.service(job["request"].chars, self.clock()),
                    lambda job=job, node=node: self._done(job, node))

    def _done(self, job: dict[str, Any], node: SimNode) -> None:
        node.busy -= 1
        if not job["settled"]:
            job["settled"] = True
            request = job["request"]
            self.pool.finish(job["lease"], Outcome.OK)
            if request.status == "pending":
                request.endpoints.append(job["lease"].endpoint.name)  # who served it (last)
                self._drop(job["sibling"])
                request.finished("ok", self.clock())
        self._serve(node)

    def _drop(self, job: dict[str, Any] | None) -> None:
        """The other try of a hedged request lost: cancelled, unless it is a suspect's, which goes on to a verdict."""
        if job is None or job["settled"] or job["lease"].suspect:
            return
        job["settled"] = True
        self.pool.finish(job["lease"], Outcome.CANCELLED)

    def _timed_out(self, job: dict[str, Any], timeout: float) -> None:
        if job["settled"]:
            return
        job["settled"] = True  # the node goes on with it; the router has given up
        request = job["request"]
        self.pool.finish(job["lease"], Outcome.TIMEOUT, timeout=timeout)
        sibling = job["sibling"]
        if request.status != "pending" or (sibling is not None and not sibling["settled"]):
            return  # answered already, or the other try of the hedge still runs
        if request.tries >= self.attempts:
            request.finished("failed", self.clock())
            return
        request.growth *= 2
        if len(set(request.endpoints)) >= len(self.pool.endpoints):
            request.endpoints.clear()  # every endpoint was tried once: a next round may go anywhere
        self._ask(request)

    # -- results --------------------------------------------------------------------------------------------

    def served_by(self, name: str, since: float = -math.inf, until: float = math.inf) -> int:
        """Requests that arrived in [since, until) and were answered by ``name``."""
        return sum(1 for r in self.requests if r.status == "ok" and r.endpoints[-1] == name
                   and since <= r.arrived < until)

    def share(self, name: str, since: float, until: float = math.inf) -> float:
        """``name``'s share of the requests that arrived in [since, until) and were answered."""
        ok = [r for r in self.requests if r.status == "ok" and since <= r.arrived < until]
        return sum(1 for r in ok if r.endpoints[-1] == name) / len(ok) if ok else 0.0

    def statuses(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for r in self.requests:
            out[r.status] = out.get(r.status, 0) + 1
        return out


def teach(ep: Endpoint, per_char: float, base: float = 0.05) -> None:
    """Give an endpoint a learned model as if it had served texts of several lengths, one at a time."""
    for chars in (20, 100, 200, 400, 50, 300):
        ep.model.observe(chars, base + per_char * chars, 1, ep.clock())


class Watch:
    """Samples a sim every ``interval``: for each request, how long it waited in the pool's queue while an endpoint
    in rotation had nothing in flight (``longest``: the most any request did)."""

    def __init__(self, sim: Sim, interval: float = 0.05, until: float = math.inf) -> None:
        self.sim, self.interval, self.until = sim, interval, until
        self.idle_waits: dict[Ticket, float] = {}  # by the ticket itself: an id() may be reused once it is gone
        sim.at(sim.clock(), self._sample)

    @property
    def longest(self) -> float:
        return max(self.idle_waits.values(), default=0.0)

    def _sample(self) -> None:
        sim = self.sim
        if any(ep.busy == 0 and ep.in_rotation for ep in sim.pool.endpoints):
            for ticket in sim.pool.scheduler.waiting():
                self.idle_waits[ticket] = self.idle_waits.get(ticket, 0.0) + self.interval
        now = sim.clock()
        if now + self.interval <= self.until:
            sim.at(now + self.interval, self._sample)


def poisson(sim: Sim, rate: float, start: float, end: float, rng: random.Random,
            chars: tuple[int, int] = (20, 400)) -> None:
    """Requests arriving at ``rate`` a second in [start, end), texts of ``chars`` characters."""
    t = start
    while True:
        t += rng.expovariate(rate)
        if t >= end:
            return
        sim.submit_at(t, rng.randint(*chars))


def p99(latencies: list[float]) -> float:
    ordered = sorted(latencies)
    return ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]
