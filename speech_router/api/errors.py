"""Errors as HTTP responses: OpenAI's shape on OpenAI and native routes, index-tts-vllm's on ``/tts_url``.

Nothing from a backend's traceback reaches a client: ``BackendError.detail`` is only logged.
"""

from __future__ import annotations

import math
import re

from starlette.requests import Request
from starlette.responses import JSONResponse

from ..logs import REDACTOR
from ..errors import BackendError, BackendOverloaded, BackendRejected, ClientDisconnected, RequestInvalid, Unavailable

def openai_error(status: int, message: str, *, type_: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None, headers: dict[str, str] | None = None) -> JSONResponse:
    body = {"error": {"message": message, "type": type_, "param": param, "code": code}}
    return JSONResponse(body, status_code=status, headers=headers)


def error_response(exc: Exception, request: Request) -> JSONResponse:
    """The client's view of ``exc``; ``/tts_url`` answers in index-tts-vllm's own error shape."""
    status, message, type_, param, code, headers = describe(exc)
    if request.url.path == "/tts_url":
        return JSONResponse({"status": "error", "error": message}, status_code=status, headers=headers)
    return openai_error(status, message, type_=type_, param=param, code=code, headers=headers)


#: longest part of a node's own message quoted to a client
SUMMARY_CHARS = 120
_NOT_PLAIN = re.compile(r"[^\x20-\x7e\u00a0-\ud7ff\ue000-\ufffd]+|[\u200b-\u200f\u2028-\u202e\u2060-\u206f\ufeff]+")


def summarise(message: str) -> str:
    """The first line of a node's message, printable characters only, clipped; empty for a traceback."""
    if "Traceback" in message or "File \"" in message:
        return ""
    message = REDACTOR.redact(message)  # a node may quote the request back, its secrets with it: before clipping
    line = next((part.strip() for part in message.splitlines() if part.strip()), "")
    line = " ".join(_NOT_PLAIN.sub(" ", line).split())
    return line if len(line) <= SUMMARY_CHARS else line[:SUMMARY_CHARS - 3].rstrip() + "..."


def describe(exc: Exception) -> tuple[int, str, str, str | None, str | None, dict[str, str] | None]:
    """(status, message, type, param, code, headers) for an exception."""
    if isinstance(exc, ClientDisconnected):  # nobody reads it: for logs and metrics (nginx's 499)
        return 499, str(exc), "client_closed_request", None, "client_disconnected", None
    if isinstance(exc, RequestInvalid):
        return exc.status_code, exc.message, "invalid_request_error", exc.param, exc.code, None
    if isinstance(exc, Unavailable):
        retry = {"Retry-After": str(max(1, math.ceil(exc.retry_after)))}
        kind = "rate_limit_error" if exc.status_code == 429 else "server_error"
        return exc.status_code, str(exc), kind, None, exc.code, retry
    if isinstance(exc, BackendRejected):
        message = exc.message
        if exc.status is not None:  # a node's own words: summarised, never passed through (any size, any content)
            said = summarise(message)
            message = f"endpoint {exc.endpoint} rejected the request (HTTP {exc.status})" + (f": {said}" if said else "")
        elif exc.endpoint and exc.endpoint not in message:
            message = f"{message} (endpoint {exc.endpoint})"
        return 400, message, "invalid_request_error", exc.param, "backend_rejected", None
    if isinstance(exc, BackendOverloaded):
        return 503, exc.message, "server_error", None, "backend_overloaded", {"Retry-After": "1"}
    if isinstance(exc, BackendError):
        return 502, exc.message, "server_error", None, "backend_error", None
    return 500, "Internal server error.", "server_error", None, "internal_error", None
