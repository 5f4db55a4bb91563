"""A circuit breaker per endpoint: pure logic over an injected monotonic clock.

closed -> open when failures in a row reach ``consecutive_failures`` or the failure rate in a
rolling window reaches ``failure_rate``; open -> half_open after a backoff that doubles on each
repeated trip (capped); half_open lets ``half_open_probes`` requests through; a success closes it,
a failure opens it again. Only failures that say something about the endpoint count: a client's bad
request (``BackendRejected``) or a busy endpoint (``BackendOverloaded``) never trip it.
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Callable

from ..config.models import BreakerConfig

Clock = Callable[[], float]


class BreakerState(str, enum.Enum):
    """Values double as metric labels."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


STATE_VALUE = {BreakerState.CLOSED: 0, BreakerState.HALF_OPEN: 1, BreakerState.OPEN: 2}

Listener = Callable[["Breaker", BreakerState, BreakerState], None]


class Breaker:
    """One endpoint's breaker. ``allow()`` before a try, then ``success()`` or ``failure()``."""

    def __init__(self, config: BreakerConfig, clock: Clock, on_change: Listener | None = None,
                 may_trip: Callable[[], bool] | None = None) -> None:
        self.config = config
        self.clock = clock
        self.on_change = on_change
        self.may_trip = may_trip or (lambda: True)
        self.state = BreakerState.CLOSED
        self.consecutive = 0
        self.trips = 0  # repeated trips without a full recovery in between
        self.opened_at = 0.0
        self.reopen_at = 0.0
        self.probes = 0
        self._window: deque[tuple[float, bool]] = deque()
        self._window_failures = 0  # kept in step with the window: picks read the rate on every request

    def __repr__(self) -> str:
        return f"Breaker(state={self.state.value!r}, consecutive={self.consecutive}, trips={self.trips})"

    @property
    def ejected(self) -> bool:
        """Whether the endpoint is out of rotation now (open, and its backoff not yet over)."""
        return self._current() == BreakerState.OPEN

    def retry_after(self) -> float:
        return max(0.0, self.reopen_at - self.clock())

    def _current(self) -> BreakerState:
        if self.state == BreakerState.OPEN and self.clock() >= self.reopen_at:
            self._move(BreakerState.HALF_OPEN)
            self.probes = 0
        return self.state

    def allow(self) -> bool:
        """May a request go to this endpoint now? In half-open, this reserves a probe."""
        if not self.config.enabled:
            return True
        state = self._current()
        if state == BreakerState.CLOSED:
            return True
        if state == BreakerState.HALF_OPEN and self.probes < self.config.half_open_probes:
            self.probes += 1
            return True
        return False

    def can_allow(self) -> bool:
        """Like ``allow`` without reserving a probe (for choosing among endpoints)."""
        if not self.config.enabled:
            return True
        state = self._current()
        return state == BreakerState.CLOSED or (state == BreakerState.HALF_OPEN
                                                and self.probes < self.config.half_open_probes)

    def release_probe(self) -> None:
        """A reserved probe was not used (the pick went elsewhere)."""
        if self.state == BreakerState.HALF_OPEN and self.probes > 0:
            self.probes -= 1

    def success(self) -> None:
        self._record(True)
        self.consecutive = 0
        if self.state == BreakerState.HALF_OPEN:
            self.trips = 0
            self._clear_window()
            self._move(BreakerState.CLOSED)

    def failure(self) -> None:
        self._record(False)
        self.consecutive += 1
        if not self.config.enabled:
            return
        state = self._current()
        if state == BreakerState.HALF_OPEN:
            self._trip()
        elif state == BreakerState.CLOSED and self._should_trip() and self.may_trip():
            self._trip()

    def _record(self, ok: bool) -> None:
        now = self.clock()
        self._window.append((now, ok))
        self._window_failures += not ok
        self._trim(now)

    def _trim(self, now: float) -> None:
        horizon = now - self.config.window
        while self._window and self._window[0][0] < horizon:
            self._window_failures -= not self._window.popleft()[1]

    def failure_ratio(self) -> float:
        self._trim(self.clock())
        if not self._window:
            return 0.0
        return self._window_failures / len(self._window)

    def _should_trip(self) -> bool:
        if self.consecutive >= self.config.consecutive_failures:
            return True
        return len(self._window) >= self.config.min_requests and self.failure_ratio() >= self.config.failure_rate

    def _trip(self) -> None:
        self.trips += 1
        backoff = min(self.config.base_ejection * 2 ** (self.trips - 1), self.config.max_ejection)
        self.opened_at = self.clock()
        self.reopen_at = self.opened_at + backoff
        self.probes = 0
        self.consecutive = 0
        self._clear_window()
        self._move(BreakerState.OPEN)

    def _clear_window(self) -> None:
        self._window.clear()
        self._window_failures = 0

    def _move(self, new: BreakerState) -> None:
        old, self.state = self.state, new
        if old != new and self.on_change is not None:
            self.on_change(self, old, new)
