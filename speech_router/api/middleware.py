"""ASGI middleware: every response carries a request id, and nothing unexpected escapes as a bare 500.

It wraps the app's routes from outside Starlette's exception handlers, so it also sees errors no
handler knows; it logs them with the request id and answers in the route's error shape.
"""

from __future__ import annotations

import contextvars
import json
import logging
import re
import uuid

from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

_SAFE_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
log = logging.getLogger("speech_router.api")

#: set in a request's task once its response was cut short on purpose (and logged with the request id)
_ABORTED: contextvars.ContextVar[str | None] = contextvars.ContextVar("speech_router_aborted", default=None)
#: what uvicorn logs at ERROR when an app returns mid-response; for our own aborts it is noise
_UVICORN_INCOMPLETE = "ASGI callable returned without completing response."


class _KnownAborts(logging.Filter):
    """Drops uvicorn's line about an incomplete response when we cut it short ourselves (already logged)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.msg == _UVICORN_INCOMPLETE and _ABORTED.get() is not None)


logging.getLogger("uvicorn.error").addFilter(_KnownAborts())


class RequestIdMiddleware:
    """Echo the client's ``x-request-id`` (when it is sane) or make one; put it in scope and response."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"x-request-id"), "")
        request_id = given if _SAFE_ID.match(given) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id

        started = False

        async def send_with_id(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"x-request-id"]
                headers.append((b"x-request-id", request_id.encode("latin-1")))
                message["headers"] = headers
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except StreamAborted:
            if not started:
                raise
            # the status line is out (the abort was logged, with the request id, where it happened): returning
            # leaves the body incomplete, which the client sees, and uvicorn closes the connection
            _ABORTED.set(request_id)
        except ClientDisconnect:
            _ABORTED.set(request_id)  # the client left (or the server's body timeout cut it): nobody to answer
        except Exception:
            log.exception("unhandled error on %s %s (request %s)", scope.get("method"), scope.get("path"), request_id)
            if started:  # the connection is cut and the client sees a broken response; logged once, here
                _ABORTED.set(request_id)
                return
            _count_500(scope)
            await _internal_error(scope, send_with_id)


class StreamAborted(Exception):
    """An endpoint failed after audio reached the client: end the response incomplete (already logged)."""


def _count_500(scope: Scope) -> None:
    """A synthesis answered 500 from here never reached the handlers that count requests: count it."""
    from .app import SYNTHESIS_ROUTES

    route = SYNTHESIS_ROUTES.get(scope.get("path", ""))
    metrics = getattr(getattr(scope.get("app"), "state", None), "metrics", None)
    if route is not None and metrics is not None:
        model = scope.get("state", {}).get("model", "")
        metrics.requests.labels(route=route, model=model, pool="", endpoint="", status="500").inc()


async def _internal_error(scope: Scope, send: Send) -> None:
    if scope.get("path") == "/tts_url":
        body = {"status": "error", "error": "Internal server error."}
    else:
        body = {"error": {"message": "Internal server error.", "type": "server_error", "param": None,
                          "code": "internal_error"}}
    data = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": 500,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]})
    await send({"type": "http.response.body", "body": data})
