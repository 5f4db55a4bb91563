"""OpenTelemetry traces of requests through the router to the nodes (off by default; docs/tracing.md).

Importing this package imports no OpenTelemetry: with tracing off, the request path pays one context-variable
read where it could add a span (``current()`` is None) and nothing else. ``setup.build_tracing`` imports the SDK
(the ``tracing`` extra) only when the configuration turns tracing on; this module imports nothing of the
router's, so the node calls below it (``backends.http``) can add their spans.

Each request's work is followed by the ``Scope`` in its task's context: the server span opened by the edge
(``api.gate``), or a fan-out segment's span; the routing core's events (``TracingListener``), the node call
(``backends.http``), the cache and the transcoder add their spans under it.
"""

from __future__ import annotations

import contextvars
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .scope import Scope, SegmentSpan

#: the trace scope of the request (or segment) this task works for; None: not traced
SCOPE: contextvars.ContextVar[Scope | None] = contextvars.ContextVar("speech_router_trace", default=None)


def current() -> Scope | None:
    """The scope of the request this task works for, or None when tracing is off or the request is not traced."""
    return SCOPE.get()


def node_request(headers: dict[str, str], endpoint: str, url: str | None) -> None:
    """A synthesis request to ``endpoint`` is about to leave: open its node-call span, add ``traceparent``."""
    scope = SCOPE.get()
    if scope is not None:
        scope.node_call(endpoint, url, headers)


def node_status(endpoint: str, status: int) -> None:
    """The node answered with ``status`` (its node-call span says so)."""
    scope = SCOPE.get()
    if scope is not None:
        scope.node_status(endpoint, status)


class _NoSegment:
    """What ``segment`` gives when nothing is traced: a context manager that does nothing."""

    def __enter__(self) -> _NoSegment:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def done(self, outcome: str) -> None:
        return None


_NO_SEGMENT = _NoSegment()


def segment(index: int, chars: int, of: int) -> SegmentSpan | _NoSegment:
    """A fan-out segment's span, current in its task while the ``with`` block runs (a no-op when not traced)."""
    scope = SCOPE.get()
    if scope is None or not scope.recording:
        return _NO_SEGMENT
    return scope.segment(index, chars, of)


__all__ = ["SCOPE", "current", "node_request", "node_status", "segment"]
