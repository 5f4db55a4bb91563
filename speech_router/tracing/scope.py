"""One request's part of a trace: the span its work hangs under, and what it has open (attempts, queue waits).

The routing core reports events without naming the request; they are told apart by the task reporting
them. Each request (and each segment of a fanned-out text) runs in a task whose context holds its
``Scope``, and the events of its own work are reported there or in a task it started (which copies the
context): entering a queue, a node call, the end of a try, a retry, a fallback. The one event another
request's task reports, a waiting request getting its slot (``picked``), is not used. So an attempt's
span opens when its node call starts, or, for an in-process engine, is written when the try ends (the
slot's held time gives its start); the queue wait runs from entering the queue to the attempt's start.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from ..types import AudioResponse
from . import SCOPE
from . import attrs as a
from .transcode import Clocked, transcoding

PROPAGATOR = TraceContextTextMapPropagator()
#: outcomes of a try that are no failure of it (the client left, a hedge lost)
NOT_FAILED = frozenset({"ok", "cancelled"})


@dataclass(eq=False)
class _Attempt:
    span: Span
    start: int
    node: Span | None = None
    node_failed: bool = False


class Scope:
    """The span a request's (or a segment's) work hangs under, and its open attempts and queue waits."""

    def __init__(self, tracer: trace.Tracer, span: Span) -> None:
        self.tracer = tracer
        self.span = span
        self.context = trace.set_span_in_context(span)
        self.recording = span.is_recording()
        self.attempts: dict[str, _Attempt] = {}  # by endpoint name: a request tries an endpoint once at a time
        self.count = 0
        self.first_pool: str | None = None
        self.retry_reason: str | None = None  # why the next attempt is made
        self.waiting: dict[str, int] = {}  # pool -> when this request entered its queue (ns)

    def __repr__(self) -> str:
        return f"Scope(trace_id={self.trace_id!r}, attempts={self.count}, recording={self.recording})"

    @property
    def trace_id(self) -> str | None:
        ctx = self.span.get_span_context()
        return format(ctx.trace_id, "032x") if ctx.is_valid else None

    @property
    def sampled(self) -> bool:
        return bool(self.span.get_span_context().trace_flags.sampled)

    # -- spans of this scope ----------------------------------------------------------------------------------

    def record(self, name: str, start: int, end: int, attributes: dict[str, Any], error: str | None = None) -> None:
        """A child span of something already measured (start and end in ns since the epoch)."""
        span = self.tracer.start_span(name, context=self.context, start_time=start, attributes=attributes)
        if error is not None:
            span.set_attribute(a.ERROR_TYPE, error)
            span.set_status(Status(StatusCode.ERROR, error))
        span.end(end_time=end)

    def cache_lookup(self, kind: str, hit: bool, start: int) -> None:
        if self.recording:
            self.record("cache lookup", start, time.time_ns(),
                        {a.CACHE_KIND: kind, a.CACHE_RESULT: "hit" if hit else "miss"})

    def segment(self, index: int, chars: int, of: int) -> SegmentSpan:
        span = self.tracer.start_span(f"segment {index + 1}", context=self.context,
                                      attributes={a.SEGMENT_INDEX: index + 1, a.SEGMENTS: of, a.CHARS: chars})
        return SegmentSpan(Scope(self.tracer, span))

    def transcoding(self, resp: AudioResponse, fmt: str, transcoder: Callable[[], AsyncIterator[bytes]]
                    ) -> AsyncIterator[bytes]:
        """The transcoder's output (``transcoder()``, reading ``resp``) in a span: its time, and ``busy_s``, the part
        not spent waiting for the node's audio."""
        resp.chunks = source = Clocked(resp.chunks)
        return transcoding(self.record, transcoder(), source, {a.TRANSCODE_FROM: resp.format, a.TRANSCODE_TO: fmt})

    # -- attempts ---------------------------------------------------------------------------------------------

    def _attempt(self, endpoint: str, start: int) -> _Attempt:
        self.count += 1
        attributes: dict[str, Any] = {a.ATTEMPT: self.count, a.ENDPOINT: endpoint}
        if self.retry_reason is not None:
            attributes[a.RETRY_REASON], self.retry_reason = self.retry_reason, None
        if self.attempts:  # another try of this request is still running: this one is its hedge
            attributes[a.HEDGE] = True
        span = self.tracer.start_span(f"attempt {endpoint}", context=self.context, start_time=start,
                                      attributes=attributes)
        return _Attempt(span, start)

    def attempt_started(self, endpoint: str, attributes: dict[str, Any]) -> None:
        """The core says a try begins (in this request's task): its span opens now, with the lease's facts."""
        attempt = self.attempts.get(endpoint)
        if attempt is None:
            attempt = self.attempts[endpoint] = self._attempt(endpoint, time.time_ns())
        attempt.span.set_attributes(attributes)

    def node_call(self, endpoint: str, url: str | None, headers: dict[str, str]) -> None:
        """A request to ``endpoint``'s node: a client span under the attempt, its ``traceparent`` in ``headers``."""
        if not self.recording:  # not sampled: the node still learns the trace and that it is not sampled
            PROPAGATOR.inject(headers, context=self.context)
            return
        now = time.time_ns()
        attempt = self.attempts.get(endpoint)
        if attempt is None:
            attempt = self.attempts[endpoint] = self._attempt(endpoint, now)
        attributes: dict[str, Any] = {a.HTTP_METHOD: "POST"}
        if url:
            parts = urlsplit(url)
            if parts.hostname:
                attributes[a.SERVER_ADDRESS] = parts.hostname
                attributes[a.SERVER_PORT] = parts.port or (443 if parts.scheme == "https" else 80)
        if attempt.node is not None:  # a second call within one try (none does so today): the first one ends
            attempt.node.end(end_time=now)
        attempt.node = self.tracer.start_span("POST", context=trace.set_span_in_context(attempt.span),
                                              kind=SpanKind.CLIENT, start_time=now, attributes=attributes)
        PROPAGATOR.inject(headers, context=trace.set_span_in_context(attempt.node))

    def node_status(self, endpoint: str, status: int) -> None:
        attempt = self.attempts.get(endpoint)
        if attempt is not None and attempt.node is not None:
            attempt.node.set_attribute(a.HTTP_STATUS, status)
            if status >= 400:
                attempt.node.set_attribute(a.ERROR_TYPE, str(status))
                attempt.node.set_status(Status(StatusCode.ERROR))
                attempt.node_failed = True

    def attempt_ended(self, endpoint: str, pool: str, backend_type: str, outcome: str, held_s: float | None) -> None:
        """A try gave its slot back: its span ends (it is written now if it made no node call); the queue wait
        before it, if any, is written too."""
        now = time.time_ns()
        attempt = self.attempts.pop(endpoint, None)
        if attempt is None:
            if outcome == "cancelled":  # a slot given back unused (possibly placed for another request)
                return
            attempt = self._attempt(endpoint, now - int((held_s or 0.0) * 1e9))
        span = attempt.span
        span.set_attribute(a.POOL, pool)
        span.set_attribute(a.BACKEND_TYPE, backend_type)
        span.set_attribute(a.OUTCOME, outcome)
        if self.first_pool is None:
            self.first_pool = pool
        elif pool != self.first_pool:
            span.set_attribute(a.FALLBACK, True)
        failed = outcome not in NOT_FAILED
        if failed:
            span.set_attribute(a.ERROR_TYPE, outcome)
            span.set_status(Status(StatusCode.ERROR, outcome))
        if attempt.node is not None:
            if failed and not attempt.node_failed:  # no answer at all (refused, timed out, cut)
                attempt.node.set_attribute(a.ERROR_TYPE, outcome)
                attempt.node.set_status(Status(StatusCode.ERROR))
            attempt.node.end(end_time=now)
        span.end(end_time=now)
        entered = self.waiting.pop(pool, None)
        if entered is not None:
            self.record(f"queue {pool}", entered, attempt.start, {a.POOL: pool, a.QUEUE_RESULT: "slot"})

    def queue_entered(self, pool: str) -> None:
        if self.recording:
            self.waiting[pool] = time.time_ns()

    def queue_refused(self, pool: str, reason: str) -> None:
        """Admission said no at once (``queue_full``, ``expected_wait``), or the wait timed out."""
        if not self.recording:
            return
        entered = self.waiting.pop(pool, None)
        if entered is not None:
            self.record(f"queue {pool}", entered, time.time_ns(), {a.POOL: pool, a.QUEUE_RESULT: reason}, reason)
        else:
            self.span.add_event("queue refused", {a.POOL: pool, a.QUEUE_RESULT: reason})

    def attempt_failed(self, endpoint: str, message: str) -> None:
        """Why a try failed, as its client would be told (``detail``, a node's traceback, stays in the log)."""
        if self.recording:
            self.span.add_event("attempt failed", {a.ENDPOINT: endpoint, "speech_router.message": message[:300]})

    def retried(self, reason: str) -> None:
        self.retry_reason = reason

    def note(self, attributes: dict[str, Any]) -> None:
        if self.recording:
            self.span.set_attributes(attributes)

    def close(self) -> None:
        """End what is still open (a try whose end was never reported, a queue left without a slot) and the span."""
        now = time.time_ns()
        for attempt in self.attempts.values():
            attempt.span.set_attribute(a.OUTCOME, "unfinished")
            if attempt.node is not None:
                attempt.node.end(end_time=now)
            attempt.span.end(end_time=now)
        self.attempts.clear()
        for pool, entered in self.waiting.items():
            self.record(f"queue {pool}", entered, now, {a.POOL: pool, a.QUEUE_RESULT: "left"})
        self.waiting.clear()
        self.span.end(end_time=now)


class SegmentSpan:
    """A fan-out segment's scope, current in the segment's task inside the ``with`` block."""

    def __init__(self, scope: Scope) -> None:
        self.scope = scope
        self.outcome: str | None = None
        self._token: Any = None
        self._otel_token: Any = None

    def __enter__(self) -> SegmentSpan:
        self._token = SCOPE.set(self.scope)
        self._otel_token = otel_context.attach(self.scope.context)
        return self

    def done(self, outcome: str) -> None:
        self.outcome = outcome

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        otel_context.detach(self._otel_token)
        SCOPE.reset(self._token)
        outcome = self.outcome or ("cancelled" if kind is not None and not issubclass(kind, Exception) else "failed")
        self.scope.span.set_attribute(a.SEGMENT_OUTCOME, outcome)
        if outcome == "failed":
            self.scope.span.set_status(Status(StatusCode.ERROR, getattr(exc, "message", None) or outcome))
        self.scope.close()
