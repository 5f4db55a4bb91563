"""A vllm-omni node's streamed answer read as audio, whether it came as raw bytes or as SSE events.

Asked for ``stream: true`` with ``stream_format: "audio"`` (as the router asks), newer vllm-omni answers raw
bytes, and so do older versions, which know only ``stream``. A version that streams only as events answers
``text/event-stream``: ``speech.audio.delta`` events carry base64 of the next bytes, ``speech.audio.done``
ends it, ``speech.audio.error`` is a failure after the 200. Both are read here into the same bytes.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import AsyncGenerator

import aiohttp

from ..errors import BackendFailed
from .http import mapped_errors

SSE_TYPE = "text/event-stream"
#: the longest event accepted (a delta of a few seconds of audio is far less)
MAX_EVENT_BYTES = 16 * 1024 * 1024


def is_sse(resp: aiohttp.ClientResponse) -> bool:
    return resp.headers.get("Content-Type", "").startswith(SSE_TYPE)


async def sse_audio(resp: aiohttp.ClientResponse, endpoint: str) -> AsyncGenerator[bytes, None]:
    """The audio bytes of an SSE answer, delta by delta; ``BackendFailed`` for an error event, a broken event
    or a stream that ends before ``speech.audio.done``. The connection is given back at the end."""
    buffer = b""
    try:
        with mapped_errors(endpoint):
            async for chunk, _ in resp.content.iter_chunks():
                buffer += chunk.replace(b"\r\n", b"\n")
                while b"\n\n" in buffer:
                    event, buffer = buffer.split(b"\n\n", 1)
                    audio = _audio(event, endpoint)
                    if audio is None:
                        return
                    if audio:
                        yield audio
                if len(buffer) > MAX_EVENT_BYTES:
                    raise BackendFailed(f"endpoint {endpoint} sent an event over {MAX_EVENT_BYTES} bytes",
                                        endpoint=endpoint)
        raise BackendFailed(f"endpoint {endpoint} ended its event stream before speech.audio.done",
                            endpoint=endpoint)
    finally:
        resp.release()


def _audio(event: bytes, endpoint: str) -> bytes | None:
    """A delta's bytes (b"" for events without audio), or None at ``speech.audio.done``."""
    data = b"\n".join(line[5:].lstrip() for line in event.split(b"\n") if line.startswith(b"data:"))
    if not data:
        return b""
    try:
        payload = json.loads(data)
        kind = payload.get("type")
        if kind == "speech.audio.delta":
            return base64.b64decode(payload.get("audio") or "", validate=True)
    except (ValueError, AttributeError, binascii.Error) as exc:
        raise BackendFailed(f"endpoint {endpoint} sent a broken event: {type(exc).__name__}",
                            endpoint=endpoint, detail=data[:200].decode("utf-8", "replace")) from None
    if kind == "speech.audio.done":
        return None
    if kind == "speech.audio.error":
        error = payload.get("error")
        message = error.get("message") if isinstance(error, dict) else None
        raise BackendFailed(f"endpoint {endpoint} failed while streaming", endpoint=endpoint, detail=str(message))
    return b""
