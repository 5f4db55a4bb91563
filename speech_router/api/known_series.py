"""Metric series whose labels are known when the router starts exist from the start, at 0.

A labelled series appears only when its label set is first used, so on a fresh router a dashboard panel over
``rate(speech_router_retries_total[5m])`` shows "No data" rather than 0, and an alert over a series that does
not exist yet cannot tell "nothing happened" from "not exported". Every series whose labels are the
configured pools, endpoints, models and clients, with label values from a fixed set (outcomes, reasons,
priorities, breaker transitions, reload triggers), is created here: at start, and again after each reload
for what it added. Series whose labels come only with traffic (an HTTP status, a fallback's reason, a route's
latency) still appear with their first sample; docs/metrics.md says which are which.
"""

from __future__ import annotations

from ..config.models import Settings
from ..fanout.plan import SEGMENTING_TYPES
from ..metrics import Metrics
from ..router.dispatch import Router
from ..router.outlier import Outcome
from ..router.ticket import PRIORITIES
from .auth import MESSAGES, Authenticator

#: retry reasons: the ``retry.on`` words, and the one other endpoint a possibly local client mistake gets
RETRY_REASONS = ("connect", "timeout", "overloaded", "5xx", "invalid_audio", "client_error")
QUEUE_REJECTIONS = ("expected_wait", "queue_full", "queue_timeout")
#: the breaker's transitions (``router/breaker.py``): trip, half-open after the backoff, probe passed or failed
BREAKER_TRANSITIONS = (("closed", "open"), ("open", "half_open"), ("half_open", "closed"), ("half_open", "open"))
HEDGE_WINNERS = ("first", "second")
RELOAD_TRIGGERS, RELOAD_RESULTS = ("sighup", "file", "admin"), ("applied", "unchanged", "invalid")
SEGMENT_OUTCOMES = ("ok", "cached", "failed")
CACHE_KINDS, CACHE_RESULTS = ("response", "segment"), ("hit", "miss")


def create_known_series(metrics: Metrics, router: Router, settings: Settings, auth: Authenticator) -> None:
    """Create (at 0) every series whose labels ``settings`` and the router's endpoints determine. Idempotent:
    an existing series keeps its value."""
    m = metrics
    for trigger in RELOAD_TRIGGERS:
        for result in RELOAD_RESULTS:
            m.config_reloads.labels(trigger, result)
    if auth.enabled:
        for reason in MESSAGES:
            m.auth_rejections.labels(reason)
        for key in auth.keys:
            if key.requests_per_minute:
                m.rate_limited.labels(key.name)
    for name, pool in router.pools.items():
        m.retries_denied.labels(name)
        m.panics.labels(name)
        for reason in RETRY_REASONS:
            m.retries.labels(name, reason)
        for reason in QUEUE_REJECTIONS:
            m.queue_rejections.labels(name, reason)
        for priority in PRIORITIES:
            m.queue_depth.labels(name, priority)
            m.queue_wait.labels(name, priority)
        if pool.config.hedge.enabled:
            for winner in HEDGE_WINNERS:
                m.hedges.labels(name, winner)
        for ep in pool.endpoints:
            m.ejections.labels(name, ep.name)
            for outcome in Outcome:
                m.attempts.labels(name, ep.name, outcome.value)
            for old, new in BREAKER_TRANSITIONS:
                m.breaker_transitions.labels(name, ep.name, old, new)
    for model, config in settings.models.items():
        for pool_name in config.pools:
            routed = router.pools.get(pool_name)
            for ep in routed.endpoints if routed is not None else ():
                m.audio_seconds.labels(model, pool_name, ep.name)
                m.characters.labels(model, pool_name, ep.name)
                m.real_time_factor.labels(model, pool_name, ep.name)
        fans_out = config.fanout.enabled
        if fans_out is None:  # the default: on when the primary pool's type works through long text serially
            fans_out = router.route(model)[0].backend_type in SEGMENTING_TYPES
        if fans_out:
            m.fanout_requests.labels(model)
            for segment in SEGMENT_OUTCOMES:
                m.segments.labels(model, segment)
        if config.cache.enabled:
            for kind in CACHE_KINDS:
                for result in CACHE_RESULTS:
                    m.cache_lookups.labels(model, kind, result)
    m.cache_evictions.labels("memory")
    if settings.cache.directory:
        m.cache_evictions.labels("disk")
    if settings.state.url and settings.cache.shared_bytes:
        m.cache_evictions.labels("shared")
