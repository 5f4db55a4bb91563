"""The routing core's events, turned into Prometheus metrics and log lines.

The only place in ``speech_router.router`` that knows about metrics or log wording; the logic reports
through ``RouterListener`` (``speech_router.router.events``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from prometheus_client import Counter, Gauge

from ..metrics import Metrics
from .breaker import STATE_VALUE, BreakerState
from .endpoint import Endpoint, Finished
from .events import RouterListener
from .outlier import Outcome
from .ticket import Lease

log = logging.getLogger("speech_router.router")


@dataclass
class _EndpointChildren:
    """One endpoint's metric children, so the hot path does not look labels up again."""

    inflight: Gauge
    limit: Gauge
    picks: Counter
    attempts: dict[Outcome, Counter]


class MetricsListener(RouterListener):
    """Keeps the ``speech_router_*`` routing metrics in step with events."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        #: label children resolved once per endpoint (every pick and answer touches them)
        self._children: dict[tuple[str, str], _EndpointChildren] = {}

    def __repr__(self) -> str:
        return "MetricsListener()"

    def _of(self, ep: Endpoint) -> _EndpointChildren:
        key = (ep.pool, ep.name)
        children = self._children.get(key)
        if children is None:
            m = self.metrics
            children = _EndpointChildren(m.inflight.labels(*key), m.concurrency_limit.labels(*key),
                                         m.picks.labels(*key), {})
            self._children[key] = children
        return children

    def _gauges(self, ep: Endpoint) -> None:
        children = self._of(ep)
        children.inflight.set(ep.inflight)
        children.limit.set(ep.limit.learned(ep.model, ep.clock()))

    def picked(self, pool: str, endpoint: Endpoint, lease: Lease) -> None:
        children = self._of(endpoint)
        children.picks.inc()
        self.metrics.queue_wait.labels(pool, lease.priority).observe(lease.queued)
        if lease.panic:
            self.metrics.panics.labels(pool).inc()
        children.inflight.set(endpoint.inflight)

    def queue_changed(self, pool: str, priority: str, depth: int) -> None:
        self.metrics.queue_depth.labels(pool, priority).set(depth)

    def queue_rejected(self, pool: str, reason: str) -> None:
        self.metrics.queue_rejections.labels(pool, reason).inc()

    def endpoint_started(self, endpoint: Endpoint) -> None:
        m = self.metrics
        m.max_concurrency.labels(endpoint.pool, endpoint.name).set(endpoint.max_concurrency)
        m.breaker_state.labels(endpoint.pool, endpoint.name).set(STATE_VALUE[endpoint.breaker.state])
        m.endpoint_draining.labels(endpoint.pool, endpoint.name).set(0)
        self._gauges(endpoint)

    def endpoint_closed(self, endpoint: Endpoint, *, gone: bool) -> None:
        if gone:  # its label children go too (bounded cardinality)
            self._children.pop((endpoint.pool, endpoint.name), None)
            self.metrics.forget_endpoint(endpoint.pool, endpoint.name, endpoint.backend.type)

    def health_changed(self, endpoint: Endpoint) -> None:
        self.metrics.up.labels(endpoint.pool, endpoint.name, endpoint.backend.type).set(1 if endpoint.available else 0)

    def breaker_changed(self, endpoint: Endpoint, old: BreakerState, new: BreakerState) -> None:
        m = self.metrics
        m.breaker_state.labels(endpoint.pool, endpoint.name).set(STATE_VALUE[new])
        m.breaker_transitions.labels(endpoint.pool, endpoint.name, old.value, new.value).inc()
        if new == BreakerState.OPEN:
            m.ejections.labels(endpoint.pool, endpoint.name).inc()

    def draining_changed(self, endpoint: Endpoint) -> None:
        self.metrics.endpoint_draining.labels(endpoint.pool, endpoint.name).set(1 if endpoint.draining else 0)

    def attempt_finished(self, endpoint: Endpoint, outcome: Outcome, finished: Finished | None) -> None:
        attempts = self._of(endpoint).attempts
        counter = attempts.get(outcome)
        if counter is None:
            counter = attempts[outcome] = self.metrics.attempts.labels(endpoint.pool, endpoint.name, outcome.value)
        counter.inc()
        self._gauges(endpoint)

    def retried(self, pool: str, reason: str) -> None:
        self.metrics.retries.labels(pool, reason).inc()

    def retry_denied(self, pool: str) -> None:
        self.metrics.retries_denied.labels(pool).inc()

    def fell_back(self, model: str, from_pool: str, to_pool: str, reason: str) -> None:
        self.metrics.fallbacks.labels(model, from_pool, to_pool, reason).inc()

    def hedged(self, pool: str, winner: str) -> None:
        self.metrics.hedges.labels(pool, winner).inc()


class LogListener(RouterListener):
    """Logs what an operator acts on: ejections, drains, removals, and why tries failed."""

    def __repr__(self) -> str:
        return "LogListener()"

    def breaker_changed(self, endpoint: Endpoint, old: BreakerState, new: BreakerState) -> None:
        breaker = endpoint.breaker
        if new == BreakerState.OPEN:
            log.warning("breaker of endpoint %s in pool %s: %s -> open for %.1fs (trip %d): %s", endpoint.name,
                        endpoint.pool, old.value, breaker.retry_after(), breaker.trips, breaker.reason)
        else:
            log.info("breaker of endpoint %s in pool %s: %s -> %s", endpoint.name, endpoint.pool, old.value,
                     new.value)

    def draining_changed(self, endpoint: Endpoint) -> None:
        log.info("endpoint %s in pool %s %s", endpoint.name, endpoint.pool,
                 "draining" if endpoint.draining else "undrained")

    def endpoint_closed(self, endpoint: Endpoint, *, gone: bool) -> None:
        log.info("endpoint %s (pool %s) removed by a reload: drained and closed", endpoint.name, endpoint.pool)

    def attempt_failed(self, endpoint: Endpoint, message: str, detail: str | None) -> None:
        if detail:
            log.warning("endpoint %s in pool %s failed: %s\n%s", endpoint.name, endpoint.pool, message, detail)
        else:
            log.warning("endpoint %s in pool %s failed: %s", endpoint.name, endpoint.pool, message)
