"""Broken responses a flaky node or proxy produces: bodies cut short and non-audio bodies."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from starlette.responses import Response
from starlette.types import Receive, Scope, Send

GARBAGE_BODY = b"<html><head><title>502 Bad Gateway</title></head><body><h1>502 Bad Gateway</h1></body></html>\n"


class CutResponse(Response):
    """Sends headers and `sent` chunks, then drops the connection without finishing the body.

    With `promised_length` the headers promise more bytes than arrive (a truncated WAV); without it the
    body is chunked and the terminating chunk never comes (a stream that dies mid-way).
    """

    def __init__(
        self,
        sent: Sequence[bytes],
        media_type: str,
        promised_length: int | None = None,
        on_done: Callable[[], Awaitable[Any]] | None = None,
    ) -> None:
        super().__init__(media_type=media_type)
        self.sent = list(sent)
        self.on_done = on_done
        self.raw_headers = [(k, v) for k, v in self.raw_headers if k != b"content-length"]
        if promised_length is not None:
            self.raw_headers.append((b"content-length", str(promised_length).encode()))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
            for chunk in self.sent:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            # Returning now makes the server close the connection: the client sees a short body.
        finally:
            if self.on_done is not None:
                await self.on_done()


def audio_response(body: bytes, media_type: str, *, truncate: bool, garbage: bool) -> Response:
    """A whole-body audio response as index-tts-vllm sends it, or one of its failure modes."""
    if garbage:
        return Response(GARBAGE_BODY, media_type=media_type)
    if truncate:
        return CutResponse([body[: len(body) // 2]], media_type, promised_length=len(body))
    return Response(body, media_type=media_type)
