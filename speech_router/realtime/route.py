"""``WS /v1/audio/speech/stream``: one WebSocket from handshake to close (``api.stream`` hands it over).

Before a session starts its client is checked as an HTTP request is (``Authenticator``: the same keys, the
same rate limit, ``server.auth.open_paths``), then counted against ``server.realtime.max_sessions`` and
``max_sessions_per_key``. The key comes in the ``Authorization: Bearer`` header, or, from a browser (which cannot
set headers on a WebSocket), as a subprotocol ``bearer.KEY`` or OpenAI's ``openai-insecure-api-key.KEY``; the
router answers with the first subprotocol offered that carries no key (browsers need one back), never the key.
A key in the URL's query string is not read: uvicorn logs the query string with every WebSocket.

Every refusal is accepted first, then answered with an ``error`` event and a close code (``protocol``), so
browsers, which see nothing of a refused handshake, can show why.
"""

from __future__ import annotations

import logging
import re
import uuid

from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocket

from ..api.auth import MESSAGES
from ..api.plan import header, request_priority
from ..api.spec import Access
from ..api.state import AppState
from ..errors import RequestInvalid
from .hub import hub_of
from .outbox import Outbox
from .protocol import CloseCode, Refusal, error_event
from .report import SessionReport
from .session import Session

log = logging.getLogger("speech_router.realtime")

#: subprotocol prefixes that carry a client key (browsers cannot send an Authorization header)
KEY_PROTOCOLS = ("bearer.", "openai-insecure-api-key.")
_SAFE_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


async def serve_session(scope: Scope, receive: Receive, send: Send, state: AppState) -> None:
    """One WebSocket, from handshake to close; logged and counted once it ends."""
    ws = WebSocket(scope, receive, send)
    given = header(scope["headers"], "x-request-id") or ""
    report = SessionReport(given if _SAFE_ID.match(given) else uuid.uuid4().hex, scope["path"])
    authorization, offered = _credentials(scope)
    metrics, hub, key = state.metrics, hub_of(state), None
    await ws.accept(subprotocol=offered, headers=[(b"x-request-id", report.request_id.encode("latin-1"))])
    admitted = False
    try:
        key, priority = _admit(state, authorization, report, scope["headers"])
        hub.admit(key, state.settings.server.realtime)
        admitted = True
        metrics.realtime_sessions_open.inc()
        await Session(ws, state, report, priority).run()
    except Refusal as refusal:
        report.outcome, report.close_code = refusal.outcome, refusal.close
        await _refuse(ws, refusal)
    except Exception:
        report.outcome, report.close_code = "error", CloseCode.INTERNAL
        log.exception("realtime session %s failed", report.request_id)
        await _refuse(ws, Refusal("Internal error in the router (logged with the request id).",
                                  code="internal_error", close=CloseCode.INTERNAL, outcome="error"))
    finally:
        if admitted:
            hub.release(key)
            metrics.realtime_sessions_open.dec()
        metrics.realtime_sessions.labels(report.outcome).inc()
        if state.settings.server.access_log:
            report.log()


def _credentials(scope: Scope) -> tuple[str | None, str | None]:
    """The ``Authorization`` header (or a key offered as a subprotocol, as one) and the subprotocol to answer."""
    authorization = header(scope["headers"], "authorization")
    answer = None
    for protocol in scope.get("subprotocols", ()):
        prefix = next((p for p in KEY_PROTOCOLS if protocol.startswith(p)), None)
        if prefix is None:
            answer = answer or protocol
        elif authorization is None:
            authorization = "Bearer " + protocol[len(prefix):]
    return authorization, answer


def _admit(state: AppState, authorization: str | None, report: SessionReport,
           headers: list[tuple[bytes, bytes]]) -> tuple[str | None, str]:
    """The client's key name (None without client keys) and priority, or a ``Refusal``."""
    auth = state.auth
    decision = auth.check(auth.access(Access.CLIENT, report.path), authorization)
    report.client, report.priority = decision.client or None, decision.priority
    if decision.status == 429:
        state.metrics.rate_limited.labels(decision.client).inc()
        raise Refusal(f"Rate limit reached for client {decision.client!r}. Try again in "
                      f"{max(1, round(decision.retry_after))} s.", code="rate_limit_exceeded",
                      close=CloseCode.TRY_AGAIN, outcome="rate_limited")
    if decision.status != 200:
        state.metrics.auth_rejections.labels(decision.reason).inc()
        raise Refusal(MESSAGES[decision.reason] + " From a browser, offer the subprotocol bearer.YOUR_KEY.",
                      code="invalid_api_key", close=CloseCode.POLICY, outcome="unauthorized")
    try:
        priority = request_priority(header(headers, state.settings.server.priority_header), decision.priority,
                                    state.settings)
    except RequestInvalid as exc:
        raise Refusal(exc.message, code=exc.code, param=exc.param, close=CloseCode.POLICY,
                      outcome="invalid") from None
    report.priority = priority
    return (decision.client if auth.enabled and decision.client else None), priority


async def _refuse(ws: WebSocket, refusal: Refusal) -> None:
    """A refusal before the session ran: its error event, then the close (if the client is still there)."""
    await Outbox(ws).farewell(error_event(refusal.message, refusal.code, refusal.param), refusal.close, refusal.code)
