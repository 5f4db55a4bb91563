"""The one ASGI middleware in front of every route: request id, the route's access, the observer, the last guard.

For each HTTP request it

1. takes the client's ``x-request-id`` when it is sane (else makes one) and puts it on the response;
2. finds the request's route in the table (``spec.RouteTable``), so its access, error shape and metric label
   are known before any handler runs;
3. checks the key for that access (``auth.Authenticator``): 401, 403 and 429 are answered here, in the route's
   error shape;
4. opens the request's ``observe.Exchange`` (``scope["state"]["exchange"]``), notes status, bytes and first
   byte on the way out, and hands it to the observer when the response is done: metrics and the access line;
5. opens the request's server span when tracing is on (``speech_router.tracing``), its trace id on the
   ``Exchange`` (the access line, the latency exemplars);
6. answers an error nobody expected with a 500 in the route's shape (logged once with the request id), and ends
   a response cut on purpose (``StreamAborted``) quietly; a request the HTTP edge answered itself while the app
   had it (408: its body stopped arriving) is logged and counted with that status (``edge.EDGE_STATUS``).

One middleware, one ``send`` wrapper: each chunk of audio passes one Python frame here, not three.
"""

from __future__ import annotations

import contextvars
import itertools
import logging
import math
import re
import uuid
from typing import cast

from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..edge import EDGE_STATUS
from ..metrics import Metrics
from .auth import MESSAGES, Decision
from .errors import internal_error, shaped_error
from .observe import Exchange, finish
from .spec import Access, ErrorShape
from .state import scope_state

log = logging.getLogger("speech_router.api")

_SAFE_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
#: request ids made here: 32 hex digits, random per process, then a counter (a uuid4 per request costs a syscall)
_ID_PREFIX = uuid.uuid4().hex[:16]
_ID_COUNTER = itertools.count(1)
#: set in a request's task once its response was cut short on purpose (and logged with the request id)
_ABORTED: contextvars.ContextVar[str | None] = contextvars.ContextVar("speech_router_aborted", default=None)
#: what uvicorn logs at ERROR when an app returns mid-response; for our own aborts it is noise
_UVICORN_INCOMPLETE = "ASGI callable returned without completing response."


class StreamAborted(Exception):
    """An endpoint failed after audio reached the client: end the response incomplete (already logged)."""


class _KnownAborts(logging.Filter):
    """Drops uvicorn's line about an incomplete response when we cut it short ourselves (already logged)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.msg == _UVICORN_INCOMPLETE and _ABORTED.get() is not None)


logging.getLogger("uvicorn.error").addFilter(_KnownAborts())


def exchange_of(scope: Scope) -> Exchange:
    """The request's ``Exchange`` (opened by ``Gate``)."""
    ex: Exchange = scope["state"]["exchange"]
    return ex


class Gate:
    """See the module's docstring."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        state = scope_state(scope)
        given = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"x-request-id"), "")
        request_id = given if given and _SAFE_ID.match(given) else f"{_ID_PREFIX}{next(_ID_COUNTER):016x}"
        method, path = scope["method"], scope["path"]
        route = state.routes.match(method, path)
        ex = Exchange(request_id, method, path, route)
        shape = route.errors if route is not None else ErrorShape.OPENAI
        scope_state_ = scope.setdefault("state", {})
        scope_state_["request_id"] = request_id
        scope_state_["exchange"] = ex
        id_header = (b"x-request-id", request_id.encode("latin-1"))
        traced = state.tracing.start(scope, route, request_id) if state.tracing is not None else None
        if traced is not None:
            ex.trace_id, ex.trace_sampled = traced.trace_id, traced.sampled

        async def send_observed(message: Message) -> None:
            kind = message["type"]
            if kind == "http.response.body":
                body = message.get("body", b"")
                if body:
                    if ex.ttfb is None:
                        ex.ttfb = ex.elapsed()
                    ex.sent += len(body)
                if not message.get("more_body", False):
                    ex.complete = True
            elif kind == "http.response.start":
                ex.status = message["status"]
                message["headers"] = [*(h for h in message.get("headers", ()) if h[0].lower() != b"x-request-id"),
                                      id_header]
            await send(message)

        async def receive_observed() -> Message:
            message = await receive()
            if message["type"] == "http.disconnect":
                ex.disconnected = True
            return message

        auth = state.auth
        access = auth.access(route.access if route is not None else None, path)
        failed = False
        try:
            header = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"authorization"), None)
            decision = auth.check(access, header)
            if decision.pending is not None:  # a rate limit the replicas share: counted in the state store
                decision = await auth.settle(decision)
            ex.client, ex.priority = decision.client or None, decision.priority
            scope_state_["client"], scope_state_["client_priority"] = ex.client, decision.priority
            if decision.status != 200:
                await _refuse(decision, shape, state.metrics, scope, receive, send_observed)
                return
            if route is not None and route.serves_itself and method in route.methods:
                await cast(ASGIApp, route.handler)(scope, receive_observed, send_observed)
            else:
                await self.app(scope, receive_observed, send_observed)
        except StreamAborted:
            failed = True
            if ex.status is None:
                raise
            # the status line is out (the abort was logged, with the request id, where it happened): returning
            # leaves the body incomplete, which the client sees, and uvicorn closes the connection
            _ABORTED.set(request_id)
        except ClientDisconnect:
            ex.disconnected = True
            _ABORTED.set(request_id)  # the client left (or the server's body timeout cut it): nobody to answer
        except Exception:
            failed = True
            log.exception("unhandled error on %s %s (request %s)", method, path, request_id)
            if ex.status is not None:  # the connection is cut and the client sees a broken response; logged here
                _ABORTED.set(request_id)
            else:
                await internal_error(shape, scope, send_observed)
        except BaseException:  # cancelled: the server is stopping or the client left
            failed = True
            raise
        finally:
            if ex.status is None and (edge_status := scope.get(EDGE_STATUS)) is not None:
                ex.status, ex.complete, ex.disconnected = edge_status, True, False  # the edge answered (408)
            finish(ex, state.request_metrics, failed=failed, access_log=state.settings.server.access_log,
                   open_path=access is Access.OPEN)
            if traced is not None:
                traced.finish(ex)


async def _refuse(decision: Decision, shape: ErrorShape, metrics: Metrics, scope: Scope, receive: Receive,
                  send: Send) -> None:
    """401, 403 or 429 for a key the route does not take (counted by reason, or by client when rate limited)."""
    if decision.status == 429:
        metrics.rate_limited.labels(decision.client).inc()
        seconds = max(1, math.ceil(decision.retry_after))
        response = shaped_error(shape, 429, f"Rate limit reached for client {decision.client!r}. Try again in "
                                            f"{seconds} s.", type_="rate_limit_error", code="rate_limit_exceeded",
                                headers={"Retry-After": str(seconds)})
    else:
        metrics.auth_rejections.labels(decision.reason).inc()
        headers = {"WWW-Authenticate": "Bearer"} if decision.status == 401 else None
        code = decision.reason if decision.status == 403 else "invalid_api_key"
        response = shaped_error(shape, decision.status, MESSAGES[decision.reason], code=code, headers=headers)
    await response(scope, receive, send)
