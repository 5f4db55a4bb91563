"""A pool: endpoints of one backend type, and how one of them is picked for a request.

Picking is least-outstanding-requests relative to weight, among healthy endpoints with a free
slot (``max_concurrency``); ties go by smooth weighted round-robin, so light traffic still spreads
by weight. When every healthy endpoint is full, requests wait (up to ``queue_timeout``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Collection

from ..errors import NoHealthyEndpoint
from .endpoint import Endpoint


class Pool:
    """Named endpoints of one backend type."""

    def __init__(self, name: str, backend_type: str, endpoints: list[Endpoint], queue_timeout: float = 30.0) -> None:
        self.name = name
        self.backend_type = backend_type
        self.endpoints = endpoints
        self.queue_timeout = queue_timeout
        self._current: dict[str, float] = {ep.name: 0.0 for ep in endpoints}
        self._waiters: list[asyncio.Future[None]] = []

    def __repr__(self) -> str:
        return f"Pool(name={self.name!r}, type={self.backend_type!r}, endpoints={[e.name for e in self.endpoints]})"

    @property
    def healthy(self) -> bool:
        return any(ep.available for ep in self.endpoints)

    def pick(self, exclude: Collection[str] = ()) -> Endpoint | None:
        """The endpoint to use now, or None when every candidate is full or unhealthy."""
        free = [ep for ep in self.endpoints if ep.available and ep.has_capacity and ep.name not in exclude]
        if not free:
            return None
        best = min((ep.inflight + 1) / ep.weight for ep in free)
        tied = [ep for ep in free if (ep.inflight + 1) / ep.weight == best]
        total = sum(ep.weight for ep in tied)
        for ep in tied:
            self._current[ep.name] = self._current.get(ep.name, 0.0) + ep.weight
        chosen = max(tied, key=lambda ep: self._current[ep.name])
        self._current[chosen.name] -= total
        return chosen

    async def acquire(self, exclude: Collection[str] = (), timeout: float | None = None) -> Endpoint:
        """Reserve a slot on an endpoint, waiting for one to free up; raise ``NoHealthyEndpoint``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (self.queue_timeout if timeout is None else timeout)
        while True:
            ep = self.pick(exclude)
            if ep is not None:
                ep.inflight += 1
                return ep
            if not any(e.available and e.name not in exclude for e in self.endpoints):
                raise NoHealthyEndpoint(f"pool {self.name!r} has no healthy endpoint", retry_after=1.0)
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise NoHealthyEndpoint(f"every endpoint of pool {self.name!r} is busy", retry_after=1.0)
            waiter: asyncio.Future[None] = loop.create_future()
            self._waiters.append(waiter)
            try:
                await asyncio.wait_for(waiter, remaining)
            except TimeoutError:
                pass
            finally:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)

    def release(self, ep: Endpoint) -> None:
        """Give a slot back and wake the requests waiting for one."""
        ep.inflight = max(0, ep.inflight - 1)
        self.wake()

    def wake(self) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)
