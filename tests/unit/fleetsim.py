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
from speech_router.router.clock import FakeClock
from speech_router.router.endpoint import Endpoint
from speech_router.router.latency import LatencyModel
from speech_router.router.outlier import Outcome
from speech_router.router.pool import Pool
from speech_router.router.ticket import Lease, Ticket
from speech_router.errors import QueueFull, Unavailable
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

    def service(self, chars: int) -> float:
        return (self.base + self.per_char * chars) * self.slowdown


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

    def _ask(self, request: Request, limit: float = math.inf) -> None:
        ticket = Ticket(request.chars, request.priority, frozenset(request.endpoints), True, limit)
        ticket.on_placed = lambda lease: lease is not None and self._start(request, lease)
        try:
            lease = self.pool.scheduler.submit(ticket)
        except (QueueFull, Unavailable) as exc:
            request.status = "refused" if isinstance(exc, QueueFull) else "failed"
            request.done = self.clock()
            return
        if lease is not None:
            self._start(request, lease)

    def _start(self, request: Request, lease: Lease) -> None:
        request.lease = lease
        request.tries += 1
        request.endpoints.append(lease.endpoint.name)
        node = self.nodes[lease.endpoint.name]
        job = {"request": request, "lease": lease, "abandoned": False}
        if self.timeouts:
            timeout = self.pool.per_try_timeout(lease, request.chars) * request.growth
            self.at(self.clock() + timeout, lambda: self._timed_out(job, timeout))
        node.queue.append(job)
        self._serve(node)

    def _serve(self, node: SimNode) -> None:
        while node.busy < node.slots and node.queue:
            job = node.queue.popleft()
            node.busy += 1
            self.at(self.clock() + node.service(job["request"].chars), lambda job=job, node=node: self._done(job, node))

    def _done(self, job: dict[str, Any], node: SimNode) -> None:
        node.busy -= 1
        if not job["abandoned"]:
            job["abandoned"] = True
            request = job["request"]
            self.pool.finish(job["lease"], Outcome.OK)
            request.status, request.done = "ok", self.clock()
        self._serve(node)

    def _timed_out(self, job: dict[str, Any], timeout: float) -> None:
        if job["abandoned"]:
            return
        job["abandoned"] = True  # the node goes on with it; the router has given up
        request = job["request"]
        self.pool.finish(job["lease"], Outcome.TIMEOUT, timeout=timeout)
        if request.tries >= self.attempts:
            request.status, request.done = "failed", self.clock()
            return
        request.growth *= 2
        if len(request.endpoints) >= len(self.pool.endpoints):
            request.endpoints.clear()  # every endpoint was tried once: a next round may go anywhere
        self._ask(request)

    # -- results --------------------------------------------------------------------------------------------

    def served_by(self, name: str) -> int:
        return sum(1 for r in self.requests if r.status == "ok" and r.endpoints[-1] == name)

    def statuses(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for r in self.requests:
            out[r.status] = out.get(r.status, 0) + 1
        return out


def teach(ep: Endpoint, per_char: float, base: float = 0.05) -> None:
    """Give an endpoint a learned model as if it had served texts of several lengths, one at a time."""
    for chars in (20, 100, 200, 400, 50, 300):
        ep.model.observe(chars, base + per_char * chars, 1, ep.clock())
