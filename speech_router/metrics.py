"""Prometheus metrics, on a registry owned by each app (so tests and apps never share counters).

Labels stay bounded: API route paths, configured model, pool and endpoint names, status codes.
No ``*_created`` series: prometheus-client would add one per counter and histogram series (the time it first
appeared), doubling what Prometheus stores for what no dashboard or alert reads; they are turned off for the
process (``disable_created_metrics``, as ``PROMETHEUS_DISABLE_CREATED_SERIES=True`` would).
"""

from __future__ import annotations

import platform

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.openmetrics.exposition import CONTENT_TYPE_LATEST as OPENMETRICS_LATEST
from prometheus_client.openmetrics.exposition import generate_latest as openmetrics_latest

disable_created_metrics()

RTF_BUCKETS = (0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1, 1.5, 2, 5, 10)
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120)
#: silence heard between two sentences of a realtime session; 0 (ready in time) is its own bucket
GAP_BUCKETS = (0, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)

CONTENT_TYPE = CONTENT_TYPE_LATEST
#: what /metrics answers when the scraper asks for OpenMetrics (Prometheus does: it carries exemplars)
OPENMETRICS_CONTENT_TYPE = OPENMETRICS_LATEST


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
        self.concurrency_limit = Gauge(
            "speech_router_endpoint_concurrency_limit", "Requests the router lets the endpoint have in flight: its "
            "learned useful concurrency, at most max_concurrency", ["pool", "endpoint"], registry=r)
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

        self.real_time_factor = Histogram(
            "speech_router_real_time_factor", "Seconds spent per second of audio produced, per request (below 1: "
            "faster than real time)", ["model", "pool", "endpoint"], buckets=RTF_BUCKETS, registry=r)
        self.stream_errors = Counter(
            "speech_router_stream_errors", "Responses cut short after audio was sent (an SSE error event or a "
            "truncated body)", ["route", "model"], registry=r)
        self.model_healthy = Gauge(
            "speech_router_model_healthy", "1 when at least one endpoint on the model's route is in rotation",
            ["model"], registry=r)
        self.endpoint_draining = Gauge(
            "speech_router_endpoint_draining", "1 while an endpoint takes no new requests (admin drain or removed "
            "by a reload) and finishes those in flight", ["pool", "endpoint"], registry=r)

        # operations (#5)
        self.config_reloads = Counter(
            "speech_router_config_reloads", "Configuration reloads, by trigger (sighup, file, admin) and result "
            "(applied, unchanged, invalid)", ["trigger", "result"], registry=r)
        self.config_errors = Counter(
            "speech_router_config_errors", "Errors found in configurations that were refused on reload", registry=r)
        self.config_last_reload_success = Gauge(
            "speech_router_config_last_reload_successful", "1 when the last reload attempt was applied (or nothing "
            "changed), 0 when the new config was refused", registry=r)
        self.config_loaded_timestamp = Gauge(
            "speech_router_config_loaded_timestamp_seconds", "When the running configuration was loaded (Unix time)",
            registry=r)
        self.auth_rejections = Counter(
            "speech_router_auth_rejections", "Requests refused for a missing or unknown key (401), by reason",
            ["reason"], registry=r)
        self.rate_limited = Counter(
            "speech_router_rate_limited", "Requests refused by a client key's requests-per-minute limit (429)",
            ["client"], registry=r)
        self.client_requests = Counter(
            "speech_router_client_requests", "Requests by client key name (anonymous when auth is off) and status",
            ["client", "status"], registry=r)

        # long text and cache (#7)
        self.fanout_requests = Counter(
            "speech_router_fanout_requests", "Requests whose text was split into segments synthesized in parallel",
            ["model"], registry=r)
        self.segments = Counter(
            "speech_router_segments", "Segments of fanned-out requests, by outcome (ok, cached, failed)",
            ["model", "outcome"], registry=r)
        self.cache_lookups = Counter(
            "speech_router_cache_lookups", "Cache lookups by kind (response or segment) and result (hit or miss)",
            ["model", "kind", "result"], registry=r)
        self.cache_bytes = Gauge(
            "speech_router_cache_bytes", "Bytes of audio held by the cache, by tier (memory, disk)", ["tier"],
            registry=r)
        self.cache_evictions = Counter(
            "speech_router_cache_evictions", "Entries evicted to stay within the byte budget, by tier", ["tier"],
            registry=r)

        # load signals and uploaded voices (#13)
        self.endpoint_external = Gauge(
            "speech_router_endpoint_external_requests", "Requests on the endpoint's node that are not this router's "
            "(other replicas'), from the node's own load; 0 while unreadable", ["pool", "endpoint"], registry=r)
        self.load_signal_failures = Counter(
            "speech_router_load_signal_failures", "Reads of a node's load that failed (the router then counts only "
            "its own requests)", ["pool", "endpoint"], registry=r)
        self.voice_node_uploads = Counter(
            "speech_router_voice_node_uploads", "Uploaded voices sent to (or removed from) vllm-omni nodes by the "
            "router, by result (uploaded, deleted, failed)", ["pool", "endpoint", "result"], registry=r)

        # realtime sessions (#19)
        self.realtime_sessions_open = Gauge(
            "speech_router_realtime_sessions_open", "Realtime speech sessions (WebSocket) open now", registry=r)
        self.realtime_sessions = Counter(
            "speech_router_realtime_sessions", "Realtime sessions ended, by outcome (closed, client_left, timeout, "
            "or the refusal: unauthorized, rate_limited, too_many_sessions, invalid, invalid_config, too_large, "
            "buffer_full, error)", ["outcome"], registry=r)
        self.realtime_segments = Counter(
            "speech_router_realtime_segments", "Sentences of realtime sessions, by outcome (ok, cached, failed)",
            ["model", "outcome"], registry=r)
        self.realtime_first_audio = Histogram(
            "speech_router_realtime_first_audio_seconds", "Per utterance: from the arrival of its first sentence's "
            "last character to its first audio sent", ["model"], buckets=LATENCY_BUCKETS, registry=r)
        self.realtime_gap = Histogram(
            "speech_router_realtime_gap_seconds", "Per sentence after an utterance's first: the silence a listener "
            "playing the audio as it arrives hears before it (0: it came before the one before it ended)",
            ["model"], buckets=GAP_BUCKETS, registry=r)
        # long-form jobs (#20)
        self.jobs_submitted = Counter(
            "speech_router_jobs_submitted", "Long-form jobs accepted (202)", ["model"], registry=r)
        self.jobs_refused = Counter(
            "speech_router_jobs_refused", "Jobs refused by a limit: open_jobs, key_bytes (429), disk_bytes, disk_free "
            "(507)", ["reason"], registry=r)
        self.jobs_finished = Counter(
            "speech_router_jobs_finished", "Jobs that ended, by status (succeeded, failed, cancelled)",
            ["model", "status"], registry=r)
        self.jobs_expired = Counter(
            "speech_router_jobs_expired", "Ended jobs deleted with their audio after jobs.result_ttl", registry=r)
        self.jobs_running = Gauge(
            "speech_router_jobs_running", "Jobs this router is working now (it holds their lease)", registry=r)
        self.job_segments = Counter(
            "speech_router_job_segments", "Job segments synthesized (ok) or failed once (error: tried again, or "
            "its item fails)", ["model", "outcome"], registry=r)
        self.job_webhooks = Counter(
            "speech_router_job_webhooks", "Job completion webhooks, by result (delivered, failed after every try)",
            ["result"], registry=r)
        # the shared state store (#18): only a router with a store has series
        self.state_store_up = Gauge(
            "speech_router_state_store_up", "1 while the shared state store answers, 0 while this replica uses its "
            "own state instead", ["store"], registry=r)
        self.state_store_failures = Counter(
            "speech_router_state_store_failures", "Calls to the shared state store that failed or timed out (the "
            "replica used its own state instead)", ["store"], registry=r)

        # the process itself: which build runs, and prometheus-client's process_* (CPU, memory, open files; Linux)
        # and python_info, on this registry like everything else
        self.build_info = Gauge(
            "speech_router_build_info", "Always 1; the labels say which speech-router and Python are running",
            ["version", "python"], registry=r)
        self.build_info.labels(_version(), platform.python_version()).set(1)
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)

    def load_read(self, pool: str, endpoint: str, external: int, failed: bool) -> None:
        """A node's load was read (``speech_router.router.load``): requests on it from elsewhere, or a failure."""
        self.endpoint_external.labels(pool, endpoint).set(external)
        if failed:
            self.load_signal_failures.labels(pool, endpoint).inc()

    def store_up(self, kind: str, up: bool) -> None:
        """Whether the shared state store answers (``speech_router.state.guard``)."""
        self.state_store_up.labels(kind).set(1 if up else 0)

    def store_failed(self, kind: str) -> None:
        self.state_store_failures.labels(kind).inc()

    def forget_endpoint(self, pool: str, endpoint: str, backend_type: str) -> None:
        """Drop the gauges of an endpoint a reload removed, so its last values do not linger as if live."""
        for gauge, labels in ((self.inflight, (pool, endpoint)), (self.up, (pool, endpoint, backend_type)),
                              (self.max_concurrency, (pool, endpoint)), (self.breaker_state, (pool, endpoint)),
                              (self.concurrency_limit, (pool, endpoint)),
                              (self.endpoint_draining, (pool, endpoint)), (self.endpoint_external, (pool, endpoint))):
            try:
                gauge.remove(*labels)
            except KeyError:
                pass

    def render(self, openmetrics: bool = False) -> bytes:
        """The text format; or OpenMetrics, the one that carries the latency histograms' trace exemplars."""
        return openmetrics_latest(self.registry) if openmetrics else generate_latest(self.registry)


def _version() -> str:
    from . import __version__  # at call time: the package is initialised by then

    return __version__
