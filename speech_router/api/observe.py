"""One observer per request for the metrics and the access log: what happened is noted on an ``Exchange`` as the
request goes, and written once when its response is done (or cut, or the client left).

Handlers note the synthesis details (model, voice, characters, endpoint, pool, attempts, fallback, queue wait,
audio seconds); the edge middleware notes the request id, the client key, the status, the bytes sent and the
first byte's time. ``finish`` then counts ``speech_router_requests_total`` and its histograms, the client's
requests, and logs one JSON line on ``speech_router.access`` (``json.dumps`` output: nothing a client sends can
break it into two lines or forge a field).

Label children are resolved once per label set (``RequestMetrics``): ``labels()`` validates and locks each time.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from prometheus_client import Counter

from ..metrics import Metrics
from .spec import ApiRoute

log = logging.getLogger("speech_router.access")

#: probes and scrapes: logged at debug so they do not flood the log
QUIET_PATHS = frozenset({"/livez", "/readyz", "/metrics"})
#: longest client-given string kept in a line (voice names)
MAX_FIELD_CHARS = 64
#: the pool and endpoint label of answers served by the response cache
CACHE_LABEL = "cache"


@dataclass(eq=False)
class Exchange:
    """One HTTP request and its response, as the metrics and the access log see it."""

    request_id: str
    method: str
    path: str
    route: ApiRoute | None
    started: float = field(default_factory=time.perf_counter)
    wall: float = field(default_factory=time.time)
    client: str | None = None
    priority: str | None = None
    #: set once a synthesis handler took the request: only then it counts in ``requests_total``
    counted: bool = False
    model: str = ""
    voice: str | None = None
    chars: int | None = None
    pool: str = ""
    endpoint: str = ""
    attempts: int | None = None
    fallback: str | None = None
    queue_wait_s: float | None = None
    cache: str | None = None
    audio_seconds: float = 0.0
    #: the status counted when it differs from the HTTP one (a stream cut after its 200: 502 or 504)
    metric_status: str | None = None
    status: int | None = None
    sent: int = 0
    ttfb: float | None = None
    complete: bool = False
    disconnected: bool = False
    #: the request's trace (when tracing is on): in the access line; an exemplar of its latency when sampled
    trace_id: str | None = None
    trace_sampled: bool = False

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def dispatched(self, pool: str, endpoint: str, attempts: int, fallback: str | None, queued: float) -> None:
        self.pool, self.endpoint, self.attempts, self.fallback, self.queue_wait_s = (pool, endpoint, attempts,
                                                                                    fallback, queued)


class _Children:
    """The label children of one (route, model, pool, endpoint)."""

    __slots__ = ("requests", "duration", "ttfb", "characters", "audio", "rtf", "_counter")

    def __init__(self, m: Metrics, route: str, model: str, pool: str, endpoint: str) -> None:
        self._counter: Counter = m.requests
        self.requests: dict[str, Any] = {}
        labels = (route, model, pool, endpoint)
        self.duration = m.request_duration.labels(*labels)
        self.ttfb = m.time_to_first_byte.labels(*labels)
        self.characters = m.characters.labels(model, pool, endpoint)
        self.audio = m.audio_seconds.labels(model, pool, endpoint)
        self.rtf = m.real_time_factor.labels(model, pool, endpoint)

    def count(self, labels: tuple[str, str, str, str], status: str) -> None:
        child = self.requests.get(status)
        if child is None:
            child = self.requests[status] = self._counter.labels(*labels, status)
        child.inc()


class RequestMetrics:
    """``speech_router_requests_total`` and the per-request histograms, children resolved once per label set.

    Label values are bounded: configured routes, models, pools and endpoints, and status codes.
    """

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        self._children: dict[tuple[str, str, str, str], _Children] = {}
        self._clients: dict[tuple[str, str], Any] = {}

    def __repr__(self) -> str:
        return f"RequestMetrics({len(self._children)} label sets)"

    def children(self, route: str, model: str, pool: str, endpoint: str) -> _Children:
        key = (route, model, pool, endpoint)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = _Children(self.metrics, *key)
        return found

    def client(self, client: str, status: str) -> None:
        key = (client, status)
        child = self._clients.get(key)
        if child is None:
            child = self._clients[key] = self.metrics.client_requests.labels(client, status)
        child.inc()

    def finish(self, ex: Exchange, total: float) -> None:
        """Count a synthesis route's request (once a handler took it)."""
        route = ex.route
        if route is None or route.metric is None or not ex.counted:
            return
        status = ex.metric_status or str(ex.status or 500)
        labels = (route.metric, ex.model, ex.pool, ex.endpoint)
        children = self.children(*labels)
        children.count(labels, status)
        if ex.metric_status is not None and ex.status == 200:  # cut after audio went out (SSE error or truncated)
            self.metrics.stream_errors.labels(route.metric, ex.model).inc()
        if not ex.pool:  # refused before any endpoint or the cache answered
            return
        exemplar = {"trace_id": ex.trace_id} if ex.trace_sampled and ex.trace_id else None
        children.duration.observe(total, exemplar)
        children.audio.inc(ex.audio_seconds)
        if ex.ttfb is not None and ex.status == 200:
            children.ttfb.observe(ex.ttfb, exemplar)
        if ex.cache == "hit":
            return
        children.characters.inc(ex.chars or 0)
        if status == "200" and ex.audio_seconds > 0:  # time spent per second of audio, queueing left out
            children.rtf.observe(max(0.0, total - (ex.queue_wait_s or 0.0)) / ex.audio_seconds)


def finish(ex: Exchange, metrics: RequestMetrics | None, *, failed: bool, access_log: bool, open_path: bool) -> None:
    """The request is over: count it and log its line."""
    total = time.perf_counter() - ex.started
    if metrics is not None:
        metrics.finish(ex, total)
        if ex.client is not None and not open_path and ex.status is not None:  # probes and scrapes: not traffic
            metrics.client(ex.client, str(ex.status))
    if not access_log:
        return
    level = logging.DEBUG if ex.path in QUIET_PATHS else logging.INFO
    if log.isEnabledFor(level):
        outcome = "complete" if ex.complete else "client_disconnected" if ex.disconnected else "error" if failed \
            else "incomplete"
        log.log(level, access_line(ex, outcome=outcome, total=total))


def access_line(ex: Exchange, *, outcome: str, total: float) -> str:
    """The JSON line for one finished request."""
    voice = ex.voice
    record: dict[str, Any] = {
        "ts": datetime.fromtimestamp(ex.wall, timezone.utc).isoformat(timespec="milliseconds"),
        "request_id": ex.request_id,
        "method": ex.method,
        "path": _clip(ex.path, 256),
        "status": ex.status if ex.status is not None else 500,
        "outcome": outcome,
        "client": ex.client,  # None: refused before a key was known
        "priority": ex.priority,
        "model": ex.model or None,
        "voice": _clip(voice, MAX_FIELD_CHARS) if isinstance(voice, str) else None,
        "chars": ex.chars,
        "endpoint": ex.endpoint or None,
        "backend": ex.endpoint or None,  # the old name of "endpoint", kept for one release
        "pool": ex.pool or None,
        "attempts": ex.attempts,
        "fallback": ex.fallback,
        "queue_wait_s": _round(ex.queue_wait_s),
        "ttfb_s": _round(ex.ttfb),
        "total_s": _round(total),
        "bytes": ex.sent,
        "trace_id": ex.trace_id,
    }
    return json.dumps(record, ensure_ascii=True, separators=(",", ":"))


def _clip(value: str, limit: int) -> str:
    return value if len(value) <= limit else value[:limit]


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)
