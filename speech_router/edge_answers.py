"""What the HTTP edge answers and logs when it refuses a request or a connection, before the app sees it.

``error_bytes`` is a whole HTTP/1.1 error response in the route's error shape (index-tts-vllm's on ``/tts_url``,
OpenAI's elsewhere) that closes the connection. ``REFUSALS`` logs each kind of refusal at most once per
``REFUSAL_LOG_INTERVAL_S``, with how many happened since, so an attack does not flood the log.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

log = logging.getLogger("speech_router.edge")

#: how often a repeated refusal (same reason) is logged at most; the others are counted into the next line
REFUSAL_LOG_INTERVAL_S = 10.0


class _Refusals:
    """Logs a refusal reason at most once per interval, with how many happened since the last line."""

    def __init__(self) -> None:
        self._last: dict[str, float] = {}
        self._count: dict[str, int] = {}

    def note(self, reason: str, message: str) -> None:
        now = time.monotonic()
        self._count[reason] = self._count.get(reason, 0) + 1
        if now - self._last.get(reason, -REFUSAL_LOG_INTERVAL_S) >= REFUSAL_LOG_INTERVAL_S:
            count, self._count[reason] = self._count[reason], 0
            self._last[reason] = now
            log.warning("%s (%d since the last such line)", message, count)


REFUSALS = _Refusals()

REASONS = {408: "Request Timeout", 431: "Request Header Fields Too Large", 503: "Service Unavailable"}


def error_bytes(status: int, message: str, code: str, path: str | None = None) -> bytes:
    """A whole HTTP/1.1 response that closes the connection, in the route's error shape."""
    if path == "/tts_url":
        body: dict[str, Any] = {"status": "error", "error": message}
    else:
        kind = "server_error" if status >= 500 else "invalid_request_error"
        body = {"error": {"message": message, "type": kind, "param": None, "code": code}}
    data = json.dumps(body, separators=(",", ":")).encode()
    extra = b"retry-after: 1\r\n" if status == 503 else b""
    return (b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\nconnection: close\r\n"
            b"%s\r\n" % (status, REASONS[status].encode(), len(data), extra)) + data
