"""A node that misbehaves on purpose, for adversarial tests: redirect loops, empty and lying WAVs, huge bodies,
answers cut mid-stream, and 4xx answers that echo the request's headers and credentials in every form.

It speaks index-tts-vllm v2's ``POST /tts_url`` and ``GET /health``. What it does with a synthesis is picked by
a marker at the start of the text, ``"[wav_1hz] hello"``, or else by ``default`` (``"good"``: a valid WAV):
one node, and one router pool in front of it, serve every scenario.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
from collections.abc import AsyncIterator
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Route

from speech_router.audio.wav import wav_header
from speech_router.emulator import audio
from speech_router.emulator.faults import CutResponse

#: what the node can do; each is a marker ``[name]`` at the start of a text
BEHAVIOURS = ("good", "slow_stream", "redirect_loop", "empty_wav", "wav_8bit", "wav_1hz", "wav_size_lies", "huge_body",
              "close_mid_stream", "echo_headers", "echo_credentials", "long_4xx")
#: bytes a ``huge_body`` answer streams at most (the router should stop reading long before)
HUGE_BYTES = 512 * 1024 * 1024
_MARKER = re.compile(r"^\[(\w+)\]\s*")


def _wav_8bit(rate: int = 22050, n: int = 22050) -> bytes:
    import struct

    header = struct.pack("<4sI4s4sIHHIIHH4sI", b"RIFF", 36 + n, b"WAVE", b"fmt ", 16, 1, 1, rate, rate, 1, 8,
                         b"data", n)
    return header + b"\x80" * n


def _good(text: str) -> bytes:
    return audio.encode(audio.render(text, "misbehaving", audio.INDEX_TTS_RATE), audio.INDEX_TTS_RATE, "wav")


async def _slow(text: str) -> AsyncIterator[bytes]:
    body = _good(text)
    step = max(1, len(body) // 50)
    for i in range(0, len(body), step):  # 50 pieces, 0.1 s apart: 5 s for the whole answer
        yield body[i:i + step]
        await asyncio.sleep(0.1)


async def _huge() -> AsyncIterator[bytes]:
    yield wav_header(audio.INDEX_TTS_RATE)  # "unknown length", then more audio than any text needs
    block = b"\0" * 65536
    for _ in range(HUGE_BYTES // len(block)):
        yield block
        await asyncio.sleep(0)


def _credentials(request: Request) -> str:
    """Every header value bare, the raw header list, and a Basic token's decoded ``user:password``."""
    values = [value for name, value in request.headers.items() if name not in ("host", "content-length")]
    said = [f"values {' | '.join(values)}", f"raw {request.headers.raw}"]
    for value in values:
        scheme, _, token = value.partition(" ")
        if scheme.lower() == "basic":
            said.append(f"token {token} is {base64.b64decode(token).decode('latin-1')}")
    return "; ".join(said)


def create_app(default: str = "good") -> Starlette:
    """The app; ``app.state.calls`` counts syntheses per behaviour (a cached answer never reaches it)."""
    if default not in BEHAVIOURS:
        raise ValueError(f"unknown behaviour {default!r}; one of {', '.join(BEHAVIOURS)}")
    calls: dict[str, int] = {}

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "healthy", "message": "Service is running"})

    async def tts_url(request: Request) -> Response:
        data: Any = json.loads(await request.body())
        text = str(data.get("text", ""))
        match = _MARKER.match(text)
        behaviour = match.group(1) if match and match.group(1) in BEHAVIOURS else default
        calls[behaviour] = calls.get(behaviour, 0) + 1
        rate = audio.INDEX_TTS_RATE
        if behaviour == "redirect_loop":
            return RedirectResponse(str(request.url), status_code=307)
        if behaviour == "empty_wav":
            return Response(wav_header(rate, 1, 0), media_type="audio/wav")
        if behaviour == "wav_8bit":
            return Response(_wav_8bit(), media_type="audio/wav")
        if behaviour == "wav_1hz":
            return Response(wav_header(1, 1, 2000) + b"\0" * 2000, media_type="audio/wav")
        if behaviour == "wav_size_lies":
            return Response(wav_header(rate, 1, 1_000_000) + b"\0" * 4410, media_type="audio/wav")
        if behaviour == "slow_stream":
            return StreamingResponse(_slow(text), media_type="audio/wav")
        if behaviour == "huge_body":
            return StreamingResponse(_huge(), media_type="audio/wav")
        if behaviour == "close_mid_stream":
            body = _good(text)
            return CutResponse([body[: len(body) // 3]], "audio/wav")
        if behaviour == "echo_headers":  # a node that quotes the request back: the pool's secrets in its answer
            return JSONResponse({"detail": f"bad request; headers were {dict(request.headers)}"}, status_code=400)
        if behaviour == "echo_credentials":  # quoted bare, in raw form and decoded: no header name to go by
            return JSONResponse({"detail": _credentials(request)}, status_code=400)
        if behaviour == "long_4xx":
            return JSONResponse({"detail": "\x1b[31mno\u202e " + "x" * 10_000}, status_code=400)
        return Response(_good(text), media_type="audio/wav")

    app = Starlette(routes=[Route("/health", health, methods=["GET"]), Route("/tts_url", tts_url, methods=["POST"])])
    app.state.calls = calls
    return app
