"""The server span: one per traced request, continuing the client's ``traceparent``, current in its task.

Only requests that make or change something are traced: the POST and DELETE routes of the route table
(synthesis, voice uploads, admin actions). Reads (listings, health, metrics, the page, its polling) are not,
so probes and dashboards do not fill the trace store. Attributes follow the HTTP server conventions; the
``Authorization`` header, the query string and the body are never read.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from . import SCOPE
from . import attrs as a
from .scope import PROPAGATOR, Scope

if TYPE_CHECKING:
    from starlette.types import Scope as AsgiScope

    from ..api.observe import Exchange
    from ..api.spec import ApiRoute

#: methods whose requests are traced
TRACED_METHODS = frozenset({"POST", "DELETE", "PUT", "PATCH"})
#: longest client-given string put on a span (user agent, path, voice)
MAX_VALUE_CHARS = 256
_CARRIED = (b"traceparent", b"tracestate")


class Request:
    """A traced request: its scope is current in the request's task until ``finish``."""

    def __init__(self, scope: Scope) -> None:
        self.scope = scope
        self.trace_id = scope.trace_id
        self.sampled = scope.sampled
        self._token = SCOPE.set(scope)
        self._otel_token = otel_context.attach(scope.context)

    def __repr__(self) -> str:
        return f"Request(trace_id={self.trace_id!r}, sampled={self.sampled})"

    def finish(self, ex: Exchange) -> None:
        """What the request came to (from its ``Exchange``), then end its span."""
        otel_context.detach(self._otel_token)
        SCOPE.reset(self._token)
        span = self.scope.span
        if span.is_recording():
            status = ex.status if ex.status is not None else 500
            found: dict[str, Any] = {a.HTTP_STATUS: status, a.CLIENT: ex.client, a.MODEL: ex.model or None,
                                     a.CHARS: ex.chars, a.POOL: ex.pool or None, a.ENDPOINT: ex.endpoint or None,
                                     a.ATTEMPTS: ex.attempts, a.CACHE: ex.cache, a.PRIORITY: ex.priority,
                                     a.VOICE: ex.voice[:MAX_VALUE_CHARS] if isinstance(ex.voice, str) else None}
            span.set_attributes({k: v for k, v in found.items() if v is not None})
            if status >= 500:  # a server span's error (a 4xx is the client's, and so is leaving early)
                span.set_attribute(a.ERROR_TYPE, str(status))
                span.set_status(Status(StatusCode.ERROR, str(status)))
            if ex.disconnected:
                span.add_event("client disconnected")
        self.scope.close()


def start_request(tracer: trace.Tracer, asgi: AsgiScope, route: ApiRoute | None, request_id: str) -> Request | None:
    """Open the server span of a request to ``route``, or None for a request that is not traced."""
    method = asgi["method"]
    if route is None or method not in TRACED_METHODS:
        return None
    carrier: dict[str, str] = {}
    agent = ""
    for key, value in asgi["headers"]:
        if key in _CARRIED:
            carrier[key.decode("latin-1")] = value.decode("latin-1")
        elif key == b"user-agent":
            agent = value.decode("latin-1")[:MAX_VALUE_CHARS]
    parent = PROPAGATOR.extract(carrier) if carrier else None
    attributes: dict[str, Any] = {a.HTTP_METHOD: method, a.HTTP_ROUTE: route.path, a.REQUEST_ID: request_id,
                                  a.URL_PATH: asgi["path"][:MAX_VALUE_CHARS], a.URL_SCHEME: asgi.get("scheme", "http"),
                                  a.PROTOCOL_VERSION: asgi.get("http_version", "1.1")}
    client = asgi.get("client")
    if client:
        attributes[a.CLIENT_ADDRESS] = client[0]
    if agent:
        attributes[a.USER_AGENT] = agent
    span = tracer.start_span(f"{method} {route.path}", context=parent, kind=SpanKind.SERVER, attributes=attributes)
    return Request(Scope(tracer, span))
