"""The routing core's events as spans: queue waits and attempts, under the reporting request's scope.

Registered only when tracing is on (``Router(listeners=...)``), so with tracing off the core calls no method
here. Each event is attributed to the scope of the task that reports it (``speech_router.tracing.current``);
events reported where no request is traced (health checks, a timer) are dropped. See ``scope`` for why
``picked`` is not used: ``attempt_started`` (reported in the request's task) opens an attempt's span with the
lease's placement; where the core does not report it, the node call or the try's end opens it.
"""

from __future__ import annotations

from ..router.endpoint import Endpoint, Finished
from ..router.events import RouterListener
from ..router.outlier import Outcome
from ..router.ticket import Lease
from . import attrs as a
from . import current


class TracingListener(RouterListener):
    """Turns ``RouterListener`` events into the spans and attributes of the request that reported them."""

    def __init__(self) -> None:
        #: the last depth of each (pool, priority) queue: a rise is a request entering it, in its own task
        self._depths: dict[tuple[str, str], int] = {}

    def __repr__(self) -> str:
        return "TracingListener()"

    def queue_changed(self, pool: str, priority: str, depth: int) -> None:
        key = (pool, priority)
        rose = depth > self._depths.get(key, 0)
        self._depths[key] = depth
        if rose and (scope := current()) is not None:
            scope.queue_entered(pool)

    def queue_rejected(self, pool: str, reason: str) -> None:
        if (scope := current()) is not None:
            scope.queue_refused(pool, reason)

    def attempt_started(self, pool: str, lease: Lease) -> None:
        scope = current()
        if scope is not None and scope.recording:
            scope.attempt_started(lease.endpoint.name, {
                a.POOL: pool, a.PLACEMENT: lease.placement.value, a.PROBE: lease.probe, a.PANIC: lease.panic,
                **({a.PREDICTED: round(lease.predicted, 4)} if lease.predicted is not None else {})})

    def attempt_finished(self, endpoint: Endpoint, outcome: Outcome, finished: Finished | None) -> None:
        scope = current()
        if scope is not None and scope.recording:
            scope.attempt_ended(endpoint.name, endpoint.pool, endpoint.backend.type, outcome.value,
                                finished.seconds if finished is not None else None)

    def attempt_failed(self, endpoint: Endpoint, message: str, detail: str | None) -> None:
        if (scope := current()) is not None:
            scope.attempt_failed(endpoint.name, message)

    def retried(self, pool: str, reason: str) -> None:
        if (scope := current()) is not None:
            scope.retried(reason)

    def hedged(self, pool: str, winner: str) -> None:
        if (scope := current()) is not None:
            scope.note({a.HEDGE_WINNER: winner})

    def fell_back(self, model: str, from_pool: str, to_pool: str, reason: str) -> None:
        if (scope := current()) is not None:
            scope.note({a.FALLBACK_FROM: from_pool, a.FALLBACK_TO: to_pool, a.FALLBACK_REASON: reason})
