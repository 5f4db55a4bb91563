"""A circuit breaker per endpoint: the state machine, over an injected monotonic clock.

closed -> open when the pool's outlier detection ejects the endpoint (``speech_router.router.outlier``
decides when); open -> half_open after a backoff that doubles on each repeated trip (capped); half_open
lets ``half_open_probes`` requests through; a success closes it, a failure opens it again. A probe that
timed out re-opens it for the same backoff, not a doubled one: probes of a suspect are hedged (no client
waits on them), and a node that hung is usually back soon; one that fails with an error doubles it. Only
failures that say something about the endpoint reach it: a client's bad request or a busy endpoint
never do (aiobreaker: "business exceptions should not cause this circuit breaker to open").
"""

from __future__ import annotations

import enum
from collections.abc import Callable

from ..config.models import BreakerConfig
from .clock import Clock


class BreakerState(str, enum.Enum):
    """Values double as metric labels."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


STATE_VALUE = {BreakerState.CLOSED: 0, BreakerState.HALF_OPEN: 1, BreakerState.OPEN: 2}

Listener = Callable[["Breaker", BreakerState, BreakerState], None]


class Breaker:
    """One endpoint's breaker. ``allow()`` before a try; ``success()``, ``probe_failed()`` or ``trip()`` after."""

    def __init__(self, config: BreakerConfig, clock: Clock, on_change: Listener | None = None) -> None:
        self.config = config
        self.clock = clock
        self.on_change = on_change
        self.state = BreakerState.CLOSED
        self.trips = 0  # repeated trips without a full recovery in between
        self.reason = ""
        self.opened_at = 0.0
        self.reopen_at = 0.0
        self.probes = 0

    def __repr__(self) -> str:
        return f"Breaker(state={self.state.value!r}, trips={self.trips})"

    @property
    def ejected(self) -> bool:
        """Whether the endpoint is out of rotation now (open, and its backoff not yet over)."""
        return self._current() == BreakerState.OPEN

    def retry_after(self) -> float:
        return max(0.0, self.reopen_at - self.clock())

    def _current(self) -> BreakerState:
        if self.state == BreakerState.OPEN and self.clock() >= self.reopen_at:
            self.probes = 0
            self._move(BreakerState.HALF_OPEN)
        return self.state

    def allow(self) -> bool:
        """May a request go to this endpoint now? In half-open, this reserves a probe."""
        if not self.can_allow():
            return False
        if self.state == BreakerState.HALF_OPEN:
            self.probes += 1
        return True

    def can_allow(self) -> bool:
        """Like ``allow`` without reserving a probe (for choosing among endpoints)."""
        if not self.config.enabled:
            return True
        state = self._current()
        return state == BreakerState.CLOSED or (state == BreakerState.HALF_OPEN
                                                and self.probes < self.config.half_open_probes)

    def release_probe(self) -> None:
        """A reserved probe ended without a verdict (cancelled, the client's mistake, a busy endpoint)."""
        if self.state == BreakerState.HALF_OPEN and self.probes > 0:
            self.probes -= 1

    def success(self) -> None:
        if self.state == BreakerState.HALF_OPEN:
            self.trips = 0
            self._move(BreakerState.CLOSED)

    def probe_failed(self, escalate: bool = True) -> bool:
        """A failure while half-open opens the breaker again (``escalate``: for a doubled backoff); returns
        whether it did."""
        if self.config.enabled and self._current() == BreakerState.HALF_OPEN:
            self.trip(self.reason or "the half-open probe failed", escalate=escalate)
            return True
        return False

    def trip(self, reason: str, escalate: bool = True) -> None:
        """Open: out of rotation for a backoff that doubles with each escalating trip since the last recovery."""
        if not self.config.enabled:
            return
        self.trips += 1 if escalate or not self.trips else 0
        self.reason = reason
        backoff = min(self.config.base_ejection * 2 ** (self.trips - 1), self.config.max_ejection)
        self.opened_at = self.clock()
        self.reopen_at = self.opened_at + backoff
        self.probes = 0
        self._move(BreakerState.OPEN)

    def _move(self, new: BreakerState) -> None:
        old, self.state = self.state, new
        if old != new and self.on_change is not None:
            self.on_change(self, old, new)
