"""One JSON line per HTTP request on the ``speech_router.access`` logger, written when the response is done.

Route handlers put what they know about a synthesis in ``scope["state"]["access"]`` (model, voice,
chars, endpoint, pool, attempts, fallback, queue wait); this middleware adds the request id, the client
key's name, status, timings and bytes sent. The line is ``json.dumps`` output, so nothing a client sends
can break it into two lines or forge a field.
"""

from __future__ import annotations

import json
import logging
import time
from datetime import datetime, timezone
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger("speech_router.access")

#: probes and scrapes: logged at debug so they do not flood the log
QUIET_PATHS = frozenset({"/livez", "/readyz", "/metrics"})
#: longest client-given string kept in a line (voice names)
MAX_FIELD_CHARS = 64


class AccessLogMiddleware:
    """Log one line per request once its last body chunk is sent, the client went away or it failed."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["app"].state.settings.server.access_log:
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        wall = time.time()
        state = scope.setdefault("state", {})
        state.setdefault("access", {})
        status: int | None = None
        sent = 0
        first_byte: float | None = None
        complete = disconnected = False

        async def watching_receive() -> Message:
            nonlocal disconnected
            message = await receive()
            if message["type"] == "http.disconnect":
                disconnected = True
            return message

        async def watching_send(message: Message) -> None:
            nonlocal status, sent, first_byte, complete
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body":
                body = message.get("body", b"")
                if body and first_byte is None:
                    first_byte = time.perf_counter() - started
                sent += len(body)
                if not message.get("more_body", False):
                    complete = True
            await send(message)

        failed = False
        try:
            await self.app(scope, watching_receive, watching_send)
        except BaseException:  # includes cancellation when the client disconnects
            failed = True
            raise
        finally:
            outcome = "complete" if complete else "client_disconnected" if disconnected else "error" if failed \
                else "incomplete"
            line = access_line(scope, status=status if status is not None else 500, outcome=outcome, wall=wall,
                               ttfb=first_byte, total=time.perf_counter() - started, sent=sent)
            level = logging.DEBUG if scope["path"] in QUIET_PATHS else logging.INFO
            log.log(level, line)


def access_line(scope: Scope, *, status: int, outcome: str, wall: float, ttfb: float | None, total: float,
                sent: int) -> str:
    """The JSON line for one finished request."""
    state = scope.get("state", {})
    access: dict[str, Any] = state.get("access", {})
    voice = access.get("voice")
    record: dict[str, Any] = {
        "ts": datetime.fromtimestamp(wall, timezone.utc).isoformat(timespec="milliseconds"),
        "request_id": state.get("request_id"),
        "method": scope.get("method"),
        "path": _clip(scope.get("path", ""), 256),
        "status": status,
        "outcome": outcome,
        "client": state.get("client", "anonymous"),
        "priority": access.get("priority"),
        "model": access.get("model", state.get("model")),
        "voice": _clip(voice, MAX_FIELD_CHARS) if isinstance(voice, str) else None,
        "chars": access.get("chars"),
        "backend": access.get("backend"),
        "pool": access.get("pool"),
        "attempts": access.get("attempts"),
        "fallback": access.get("fallback"),
        "queue_wait_s": _round(access.get("queue_wait_s")),
        "ttfb_s": _round(ttfb),
        "total_s": _round(total),
        "bytes": sent,
    }
    return json.dumps(record, ensure_ascii=True, separators=(",", ":"))


def _clip(value: str, limit: int) -> str:
    return value if len(value) <= limit else value[:limit]


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)
