"""What the routing core reports as it works: one listener interface, implemented by metrics and logs.

State changes are events, not metric calls sprinkled through the logic: the scheduler, pools, the
attempt loop and the fleet call these methods and know nothing of Prometheus or log formats
(``speech_router.router.observers`` implements them). Every method is a no-op here, so a listener
implements only what it needs (pybreaker's listener pattern).
"""

from __future__ import annotations

from collections.abc import Sequence

from .breaker import BreakerState
from .endpoint import Endpoint, Finished
from .outlier import Outcome
from .scheduler import SchedulerListener
from .ticket import Lease


class RouterListener(SchedulerListener):
    """Every event of the routing core."""

    def endpoint_started(self, endpoint: Endpoint) -> None:
        """An endpoint was opened and joins (or waits for its first health check)."""

    def endpoint_closed(self, endpoint: Endpoint, *, gone: bool) -> None:
        """A removed endpoint finished its requests and was closed; ``gone``: no endpoint of its name remains."""

    def health_changed(self, endpoint: Endpoint) -> None:
        """An active health check (or a refused connection) changed what is known of the endpoint."""

    def breaker_changed(self, endpoint: Endpoint, old: BreakerState, new: BreakerState) -> None:
        """The endpoint's breaker moved from ``old`` to ``new``."""

    def draining_changed(self, endpoint: Endpoint) -> None:
        """The endpoint was drained or undrained."""

    def attempt_started(self, pool: str, lease: Lease) -> None:
        """A try begins on ``lease.endpoint``, reported in the request's own task, before the backend is called
        (traces open the attempt's span here, with the lease's placement)."""

    def attempt_finished(self, endpoint: Endpoint, outcome: Outcome, finished: Finished | None) -> None:
        """A try ended and gave its slot back."""

    def retried(self, pool: str, reason: str) -> None:
        """A request tries another endpoint of the pool, for ``reason``."""

    def retry_denied(self, pool: str) -> None:
        """A retry was not made: the pool's retry budget is spent."""

    def fell_back(self, model: str, from_pool: str, to_pool: str, reason: str) -> None:
        """A request was served by a later pool of its model's route."""

    def hedged(self, pool: str, winner: str) -> None:
        """A hedged request was answered by its ``first`` or ``second`` try."""

    def attempt_failed(self, endpoint: Endpoint, message: str, detail: str | None) -> None:
        """A try failed; ``detail`` (a node's traceback) is for logs only."""


class Listeners(RouterListener):
    """Several listeners as one, called in order."""

    def __init__(self, listeners: Sequence[RouterListener]) -> None:
        self.listeners = list(listeners)

    def __repr__(self) -> str:
        return f"Listeners({self.listeners!r})"

    def picked(self, pool: str, endpoint: Endpoint, lease: Lease) -> None:
        for listener in self.listeners:
            listener.picked(pool, endpoint, lease)

    def queue_changed(self, pool: str, priority: str, depth: int) -> None:
        for listener in self.listeners:
            listener.queue_changed(pool, priority, depth)

    def queue_rejected(self, pool: str, reason: str) -> None:
        for listener in self.listeners:
            listener.queue_rejected(pool, reason)

    def endpoint_started(self, endpoint: Endpoint) -> None:
        for listener in self.listeners:
            listener.endpoint_started(endpoint)

    def endpoint_closed(self, endpoint: Endpoint, *, gone: bool) -> None:
        for listener in self.listeners:
            listener.endpoint_closed(endpoint, gone=gone)

    def health_changed(self, endpoint: Endpoint) -> None:
        for listener in self.listeners:
            listener.health_changed(endpoint)

    def breaker_changed(self, endpoint: Endpoint, old: BreakerState, new: BreakerState) -> None:
        for listener in self.listeners:
            listener.breaker_changed(endpoint, old, new)

    def draining_changed(self, endpoint: Endpoint) -> None:
        for listener in self.listeners:
            listener.draining_changed(endpoint)

    def attempt_started(self, pool: str, lease: Lease) -> None:
        for listener in self.listeners:
            listener.attempt_started(pool, lease)

    def attempt_finished(self, endpoint: Endpoint, outcome: Outcome, finished: Finished | None) -> None:
        for listener in self.listeners:
            listener.attempt_finished(endpoint, outcome, finished)

    def retried(self, pool: str, reason: str) -> None:
        for listener in self.listeners:
            listener.retried(pool, reason)

    def retry_denied(self, pool: str) -> None:
        for listener in self.listeners:
            listener.retry_denied(pool)

    def fell_back(self, model: str, from_pool: str, to_pool: str, reason: str) -> None:
        for listener in self.listeners:
            listener.fell_back(model, from_pool, to_pool, reason)

    def hedged(self, pool: str, winner: str) -> None:
        for listener in self.listeners:
            listener.hedged(pool, winner)

    def attempt_failed(self, endpoint: Endpoint, message: str, detail: str | None) -> None:
        for listener in self.listeners:
            listener.attempt_failed(endpoint, message, detail)


__all__ = ["Listeners", "RouterListener"]
