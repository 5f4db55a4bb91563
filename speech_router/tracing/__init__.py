"""OpenTelemetry traces of requests through the router to the nodes (off by default; docs/tracing.md).

Importing this package imports no OpenTelemetry: with tracing off, the request path pays one context-variable
read where it could add a span (``current()`` is None) and nothing else. ``build_tracing`` imports the SDK
(the ``tracing`` extra) only when the configuration turns tracing on.

Each request's work is followed by the ``Scope`` in its task's context: the server span opened by the edge
(``api.gate``), or a fan-out segment's span; the routing core's events (``TracingListener``), the node call
(``backends.http``), the cache and the transcoder add their spans under it.
"""

from __future__ import annotations

import contextvars
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..config.models import TracingConfig
    from .scope import Scope, SegmentSpan
    from .setup import Tracing

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


def build_tracing(config: TracingConfig, env: Mapping[str, str], **kwargs: Any) -> Tracing | None:
    """The app's tracing when ``config`` or the ``OTEL_*`` variables in ``env`` turn it on, else None.

    Raises ``ConfigError`` when tracing is asked for and the OpenTelemetry SDK is not installed."""
    from .setup import wanted

    if not wanted(config, env):
        return None
    from .setup import Tracing

    return Tracing.from_config(config, env, **kwargs)


__all__ = ["SCOPE", "build_tracing", "current", "node_request", "node_status", "segment"]
