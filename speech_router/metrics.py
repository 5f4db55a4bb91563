"""Prometheus metrics, on a registry owned by each app (so tests and apps never share counters).

Labels stay bounded: API route paths, configured model, pool and endpoint names, status codes.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120)

CONTENT_TYPE = CONTENT_TYPE_LATEST


class Metrics:
    """Every metric speech-router exports. Names start with ``speech_router_``."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "speech_router_requests", "Client requests answered, by API route, model, pool, endpoint and HTTP status",
            ["route", "model", "pool", "endpoint", "status"], registry=r)
        self.request_duration = Histogram(
            "speech_router_request_duration_seconds", "Time from request to the last byte sent to the client",
            ["route", "model", "pool", "endpoint"], buckets=LATENCY_BUCKETS, registry=r)
        self.time_to_first_byte = Histogram(
            "speech_router_time_to_first_byte_seconds", "Time from request to the first audio byte sent",
            ["route", "model", "pool", "endpoint"], buckets=LATENCY_BUCKETS, registry=r)
        self.attempts = Counter(
            "speech_router_endpoint_attempts", "Attempts sent to an endpoint, by outcome (ok or the error class)",
            ["pool", "endpoint", "outcome"], registry=r)
        self.retries = Counter(
            "speech_router_retries", "Attempts repeated on another endpoint, by reason", ["pool", "reason"], registry=r)
        self.inflight = Gauge(
            "speech_router_endpoint_inflight", "Requests in flight per endpoint", ["pool", "endpoint"], registry=r)
        self.up = Gauge(
            "speech_router_endpoint_up", "1 when the endpoint's last health check passed, else 0",
            ["pool", "endpoint", "type"], registry=r)
        self.max_concurrency = Gauge(
            "speech_router_endpoint_max_concurrency", "Configured concurrent request limit per endpoint",
            ["pool", "endpoint"], registry=r)
        self.audio_seconds = Counter(
            "speech_router_audio_seconds", "Seconds of audio sent to clients", ["model", "pool", "endpoint"],
            registry=r)
        self.characters = Counter(
            "speech_router_characters", "Characters of input text synthesized", ["model", "pool", "endpoint"],
            registry=r)

        self.breaker_state = Gauge(
            "speech_router_breaker_state", "Breaker state per endpoint: 0 closed, 1 half_open, 2 open",
            ["pool", "endpoint"], registry=r)
        self.breaker_transitions = Counter(
            "speech_router_breaker_transitions", "Breaker state changes", ["pool", "endpoint", "from_state", "to_state"],
            registry=r)
        self.ejections = Counter(
            "speech_router_ejections", "Times an endpoint was taken out of rotation by its breaker",
            ["pool", "endpoint"], registry=r)
        self.retries_denied = Counter(
            "speech_router_retries_denied", "Retries not made because the retry budget was spent", ["pool"],
            registry=r)
        self.fallbacks = Counter(
            "speech_router_fallbacks", "Requests served by a later pool of the route, by why the earlier one could not",
            ["model", "from_pool", "to_pool", "reason"], registry=r)
        self.queue_depth = Gauge(
            "speech_router_queue_depth", "Requests waiting for a free endpoint", ["pool", "priority"], registry=r)
        self.queue_wait = Histogram(
            "speech_router_queue_wait_seconds", "Time spent waiting for a free endpoint", ["pool", "priority"],
            buckets=LATENCY_BUCKETS, registry=r)
        self.queue_rejections = Counter(
            "speech_router_queue_rejections", "Requests refused by admission control (full queue or queue timeout)",
            ["pool", "reason"], registry=r)
        self.picks = Counter(
            "speech_router_endpoint_picks", "Times the balancer picked an endpoint", ["pool", "endpoint"], registry=r)
        self.hedges = Counter(
            "speech_router_hedges", "Hedged second tries, by which try won", ["pool", "winner"], registry=r)
        self.panics = Counter(
            "speech_router_panic_picks", "Picks made ignoring health because no endpoint was in rotation", ["pool"],
            registry=r)

    def render(self) -> bytes:
        return generate_latest(self.registry)
