"""What is learned of each endpoint, shared: every replica routes with the fleet's knowledge, from its first request.

Every ``state.knowledge_interval`` seconds each replica publishes what it knows (each pool's latency shape, each
endpoint's model: speed, parallelism, history; ``snapshot.py``) as its entry of the map ``knowledge``, and
blends in the other replicas' entries:

- an endpoint's model takes each other replica's view with a weight that halves with every half-life since that
  replica last heard an answer from it (``latency_half_life``), its own view likewise: fresh news counts,
  a replica that stopped serving (or died: its entry stays an hour) fades out; a replica that has no answer of
  its own yet takes the others' whole;
- a pool's shape is each replica's own once it has a few samples (before, it takes the others'): it anchors
  the speeds, and another replica's speeds are converted to it (``shape_ratio``) before they blend, so what
  blends is expected seconds (blending shapes and speeds apart lets them drift against each other).

Blending is ``EndpointModel.absorb`` and ``LatencyModel.absorb`` (pure, in ``speech_router.router``); what is
blended is always a replica's own view plus the others', so views converge (a consensus) and nothing is
counted twice in a way that grows. What each replica suspects (a timeout since its last answer) and its
breakers stay its own. A replica that starts reads the fleet's knowledge before it serves (``pull``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

from ..router.endpoint import Endpoint
from ..router.latency import LatencyModel, ShapeSnapshot
from ..router.model import ModelSnapshot
from .guard import Guard
from .periodic import Periodic
from .snapshot import Knowledge, decode, encode

KEY = "knowledge"
#: a replica's entry outlives its last publication by this long (a restarted fleet still starts informed)
TTL_S = 3600.0


def endpoint_key(ep: Endpoint) -> str:
    return f"{ep.pool}/{ep.name}"


class KnowledgeSharing:
    """Publishes this replica's knowledge and blends in the others' (see the module's docstring)."""

    def __init__(self, guard: Guard, replica: str, endpoints: Callable[[], list[Endpoint]], interval: float,
                 clock: Callable[[], float]) -> None:
        self.guard = guard
        self.replica = replica
        self.endpoints = endpoints
        self.interval = interval
        self.clock = clock
        self._loop = Periodic("state-knowledge", interval, self.exchange, "sharing what is learned of endpoints")

    def __repr__(self) -> str:
        return f"KnowledgeSharing(replica={self.replica!r}, interval={self.interval})"

    def start(self) -> None:
        self._loop.start()

    async def aclose(self) -> None:
        await self._loop.aclose()

    async def exchange(self) -> None:
        """Publish, then blend in the others."""
        await self.publish()
        await self.pull()

    async def publish(self) -> None:
        knowledge = self.knowledge()
        if knowledge.models or knowledge.shapes:
            await self.guard.call(lambda: self.guard.store.put_entry(KEY, self.replica, encode(knowledge), TTL_S),
                                  None)

    async def pull(self) -> int:
        """Blend in every other replica's entry; returns how many replicas' knowledge was read."""
        entries: dict[str, bytes] = await self.guard.call(lambda: self.guard.store.entries(KEY), {})
        others = [k for field, raw in entries.items() if field != self.replica and (k := decode(raw)) is not None]
        if others:
            self.absorb(others)
        return len(others)

    def knowledge(self) -> Knowledge:
        """This replica's view, now."""
        now = self.clock()
        shapes: dict[str, tuple[str, ShapeSnapshot]] = {}
        models: dict[str, tuple[str, ModelSnapshot]] = {}
        for ep in self.endpoints():
            if ep.pool not in shapes and ep.model.shape.samples:
                shapes[ep.pool] = (ep.backend.type, ep.model.shape.snapshot(now))
            if ep.model.answers:
                models[endpoint_key(ep)] = (ep.backend.type, ep.model.snapshot(now))
        return Knowledge(time.time(), shapes, models)

    def absorb(self, others: list[Knowledge]) -> None:
        """Blend ``others`` into this replica's models (see the module's docstring)."""
        now = self.clock()
        endpoints = self.endpoints()
        shapes = {ep.pool: (ep.backend.type, ep.model.shape) for ep in reversed(endpoints)}
        for pool, (kind, shape) in shapes.items():
            if shape.known:
                continue  # its own: anchors its speeds (blending shapes and speeds apart would drift)
            count = 1.0 if shape.samples else 0.0
            for k in others:
                found = k.shapes.get(pool)
                if found is not None and found[0] == kind and found[1].samples:
                    count += 1.0
                    shape.absorb(found[1], 1.0 / count, now)
        for ep in endpoints:
            model = ep.model
            total = math.pow(0.5, (now - model.answered) / model.half_life) if model.answers else 0.0
            for k in others:
                seen = k.models.get(endpoint_key(ep))
                if seen is None or seen[0] != ep.backend.type:
                    continue
                view = seen[1]
                weight = math.pow(0.5, (view.answered_age or 0.0) / model.half_life)
                total += weight
                if total > 0:
                    model.absorb(view, weight / total, now, scale=shape_ratio(k.shapes.get(ep.pool), model.shape, now))


def shape_ratio(other: tuple[str, ShapeSnapshot] | None, own: LatencyModel, now: float) -> float:
    """How much longer the other replica's shape says a typical text of this pool takes than this one's (1 while
    either does not know)."""
    if other is None or not own.known:
        return 1.0
    theirs = LatencyModel(own.half_life)
    theirs.absorb(other[1], 1.0, now)
    mine = own.snapshot(now)
    typical = round(mine.sx / mine.sw) if mine.sw > 0 else 100
    a, b = theirs.predict(typical), own.predict(typical)
    return a / b if a is not None and b is not None and a > 0 and b > 0 else 1.0
