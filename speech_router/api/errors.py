"""Errors as HTTP responses, in the route's ``ErrorShape``: OpenAI's on OpenAI, native and admin routes,
index-tts-vllm's on ``/tts_url``.

Nothing from a backend's traceback reaches a client: ``BackendError.detail`` is only logged.
"""

from __future__ import annotations

import json
import math
import re

from starlette.responses import JSONResponse
from starlette.types import Scope, Send

from ..errors import BackendError, BackendOverloaded, BackendRejected, ClientDisconnected, RequestInvalid, Unavailable
from ..logs import REDACTOR
from .spec import ErrorShape

#: what ``describe`` says about an exception: (status, message, type, param, code, headers)
Described = tuple[int, str, str, str | None, str | None, dict[str, str] | None]


def openai_error(status: int, message: str, *, type_: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None, headers: dict[str, str] | None = None) -> JSONResponse:
    body = {"error": {"message": message, "type": type_, "param": param, "code": code}}
    return JSONResponse(body, status_code=status, headers=headers)


def shaped_error(shape: ErrorShape, status: int, message: str, *, type_: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None) -> JSONResponse:
    """An error body in ``shape``; ``/tts_url`` answers as index-tts-vllm does, without its traceback."""
    if shape is ErrorShape.TTS_URL:
        return JSONResponse({"status": "error", "error": message}, status_code=status, headers=headers)
    return openai_error(status, message, type_=type_, param=param, code=code, headers=headers)


def error_response(exc: Exception, shape: ErrorShape) -> JSONResponse:
    """The client's view of ``exc`` in the route's shape."""
    status, message, type_, param, code, headers = describe(exc)
    return shaped_error(shape, status, message, type_=type_, param=param, code=code, headers=headers)


async def internal_error(shape: ErrorShape, scope: Scope, send: Send) -> None:
    """500 for an error nobody expected (already logged with the request id), sent as raw ASGI messages."""
    if shape is ErrorShape.TTS_URL:
        body: dict[str, object] = {"status": "error", "error": "Internal server error."}
    else:
        body = {"error": {"message": "Internal server error.", "type": "server_error", "param": None,
                          "code": "internal_error"}}
    data = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": 500,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]})
    await send({"type": "http.response.body", "body": data})


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


def describe(exc: Exception) -> Described:
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
