"""How many of a pool's slots jobs may take now, read from the routing core's own views (read-only).

Job segments are batch requests, and the scheduler serves interactive ones first; but a slot a segment holds
is held until the segment is done, and a node cannot be asked to drop it (index-tts-vllm finishes a request
whose client left). So jobs only ever ask for slots that are free now, never queue for one, and while other
requests were seen on the pool in the last ``queue.batch_window`` seconds they leave ``queue.batch_headroom``
slots free beyond those the others hold, so the next interactive request finds one at once; with no other
request in that window a job takes the whole fleet (``min_free_slots`` are left free whatever the traffic).
The scheduler holds every batch request to the same headroom when it places it (``router.scheduler``). Other
requests are everything in flight or queued on the pool that is not a job segment: other routers' too, when
the nodes report their load. ``bench/jobs.py`` measures what this costs interactive requests.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from ..config.models import JobsConfig
from ..router.pool import Pool


class SlotBudget:
    """Per pool: when other requests were last seen, and the slots jobs may take on top of what they hold."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock
        self._seen: dict[str, float] = {}

    def __repr__(self) -> str:
        return f"SlotBudget(pools={sorted(self._seen)})"

    def others(self, pool: Pool, mine: int) -> int:
        """Requests on ``pool`` that are not job segments (``mine``: segments in flight there, placed or queued)."""
        busy = sum(ep.busy for ep in pool.endpoints)
        return max(0, busy + pool.queue_depth() - mine)

    def free(self, pool: Pool, mine: int, config: JobsConfig) -> int:
        """Segments jobs may start on ``pool`` now (<= 0: none)."""
        now = self.clock()
        others = self.others(pool, mine)
        if others:
            self._seen[pool.name] = now
        queue = pool.config.queue
        recent = now - self._seen.get(pool.name, -math.inf) < queue.batch_window
        left_free = max(config.min_free_slots, queue.batch_headroom if recent else 0)
        capacity = sum(ep.cap() for ep in pool.endpoints if ep.in_rotation)
        return capacity - mine - others - left_free

    def forget(self, names: set[str]) -> None:
        """Pools a reload removed."""
        for name in set(self._seen) - names:
            del self._seen[name]


def job_pool(route: list[Pool]) -> Pool | None:
    """Where a job's segments go now: the first pool of the route with an endpoint in rotation (jobs wait out an
    outage rather than use panic mode)."""
    return next((pool for pool in route if pool.healthy), None)
