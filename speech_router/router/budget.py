"""A retry budget (as Envoy's): retries may be at most a share of requests in a rolling window,
so a sick fleet is not hit by a retry storm. A small floor keeps retries possible at low traffic."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable


class RetryBudget:
    def __init__(self, ratio: float, minimum: int, window: float, clock: Callable[[], float]) -> None:
        self.ratio = ratio
        self.minimum = minimum
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
        return max(self.minimum, int(self.ratio * len(self._requests)))

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
