"""A retry budget (as Envoy's): retries may be at most a share of requests in a rolling window,
so a sick fleet is not hit by a retry storm. A floor keeps retries possible at low traffic: at least
``minimum``, and at least the pool's concurrency (Envoy's min_retry_concurrency idea), so one endpoint
dying with every slot busy can send each of its requests elsewhere."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable


class RetryBudget:
    def __init__(self, ratio: float, minimum: int, window: float, clock: Callable[[], float],
                 concurrency: Callable[[], int] | None = None) -> None:
        self.ratio = ratio
        self.minimum = minimum
        self.concurrency = concurrency or (lambda: 0)
        self.window = window
        self.clock = clock
        self._requests: deque[float] = deque()
        self._retries: deque[float] = deque()

    def __repr__(self) -> str:
        return f"RetryBudget(ratio={self.ratio}, minimum={self.minimum}, window={self.window})"

    def _trim(self, now: float) -> None:
        horizon = now - self.window
        for q in (self._requests, self._retries):
            while q and q[0] < horizon:
                q.popleft()

    def request(self) -> None:
        """Count a new client request (not its retries)."""
        now = self.clock()
        self._trim(now)
        self._requests.append(now)

    def allowed(self) -> int:
        return max(self.minimum, self.concurrency(), int(self.ratio * len(self._requests)))

    def try_retry(self) -> bool:
        """Spend one retry if the budget allows it."""
        now = self.clock()
        self._trim(now)
        if len(self._retries) >= self.allowed():
            return False
        self._retries.append(now)
        return True

    @property
    def spent(self) -> int:
        self._trim(self.clock())
        return len(self._retries)
