"""How many of a pool's slots jobs may take now, read from the routing core's own views (read-only).

Job segments are batch requests, and the scheduler serves interactive ones first; but a slot a segment holds
is held until the segment is done, and a node cannot be asked to drop it (index-tts-vllm finishes a request
whose client left). So jobs only ever ask for slots that are free now, never queue for one, and leave some
free: ``headroom`` slots above the most that other requests had in flight during the last
``headroom_window`` seconds (none while there were none: a job alone takes the whole fleet), and always at
least ``min_free_slots``. Other requests are everything in flight or queued on the pool that is not a job
segment: other routers' too, when the nodes report their load.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

from ..config.models import JobsConfig
from ..router.pool import Pool


class _Peak:
    """The largest value seen in a sliding window (a monotonic deque: O(1) per sample)."""

    def __init__(self) -> None:
        self._samples: deque[tuple[float, int]] = deque()

    def add(self, now: float, value: int, window: float) -> int:
        while self._samples and self._samples[-1][1] <= value:
            self._samples.pop()
        self._samples.append((now, value))
        while self._samples[0][0] < now - window:
            self._samples.popleft()
        return self._samples[0][1]


class SlotBudget:
    """Per pool: the others' recent peak, and the slots jobs may take on top of what they already hold."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock
        self._peaks: dict[str, _Peak] = {}

    def __repr__(self) -> str:
        return f"SlotBudget(pools={sorted(self._peaks)})"

    def others(self, pool: Pool, mine: int) -> int:
        """Requests on ``pool`` that are not job segments (``mine``: segments in flight there, placed or queued)."""
        busy = sum(ep.busy for ep in pool.endpoints)
        return max(0, busy + pool.queue_depth() - mine)

    def sample(self, pool: Pool, mine: int, config: JobsConfig) -> int:
        """Note the others' load now; their peak over the window."""
        peak = self._peaks.setdefault(pool.name, _Peak())
        return peak.add(self.clock(), self.others(pool, mine), config.headroom_window)

    def free(self, pool: Pool, mine: int, config: JobsConfig) -> int:
        """Segments jobs may start on ``pool`` now (<= 0: none)."""
        peak = self.sample(pool, mine, config)
        others = self.others(pool, mine)
        capacity = sum(ep.cap() for ep in pool.endpoints if ep.in_rotation)
        left_free = max(config.min_free_slots, peak + config.headroom - others if peak else 0)
        return capacity - mine - others - left_free

    def forget(self, names: set[str]) -> None:
        """Pools a reload removed."""
        for name in set(self._peaks) - names:
            del self._peaks[name]


def job_pool(route: list[Pool]) -> Pool | None:
    """Where a job's segments go now: the first pool of the route with an endpoint in rotation (jobs wait out an
    outage rather than use panic mode)."""
    return next((pool for pool in route if pool.healthy), None)
