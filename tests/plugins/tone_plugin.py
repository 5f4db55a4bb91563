"""A third-party backend plugin, as a separate distribution would ship it.

It registers backend type ``tone`` (an in-process engine that answers a sine WAV whose length
follows the text) and uses the other hooks to leave traces the tests can check.
"""

from __future__ import annotations

import io
import math
import struct
import wave
from typing import Any

from speech_router import AudioResponse, Backend, Capabilities, HealthReport, SynthesisRequest, hookimpl

RATE = 16000
SECONDS_PER_CHAR = 0.02

#: what the hooks saw, for the tests
seen: dict[str, list[Any]] = {"prepare_request": [], "startup": []}


class ToneBackend(Backend):
    type = "tone"
    capabilities = Capabilities(formats=frozenset({"wav"}), voice_keys=("tone_hz",), needs_url=False)

    class Options(Backend.Options):
        amplitude: float = 0.3

    async def synthesize(self, request: SynthesisRequest) -> AudioResponse:
        hz = float(request.voice_params.get("tone_hz", 440))
        n = int(RATE * SECONDS_PER_CHAR * len(request.text))
        amp = self.options.amplitude  # type: ignore[attr-defined]
        frames = b"".join(struct.pack("<h", int(amp * 32767 * math.sin(2 * math.pi * hz * i / RATE))) for i in range(n))
        buf = io.BytesIO()
        with wave.open(buf, "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(RATE)
            w.writeframes(frames)
        data = buf.getvalue()

        async def chunks():
            for i in range(0, len(data), 4096):
                yield data[i:i + 4096]

        return AudioResponse(format="wav", sample_rate=RATE, chunks=chunks(), content_length=len(data))

    async def health(self) -> HealthReport:
        return HealthReport(True, "tone engine ready")


@hookimpl
def register_backends(register):
    register(ToneBackend, aliases=("sine",))


@hookimpl
def prepare_request(request, settings):
    seen["prepare_request"].append(request.text)
    request.text = request.text.strip()


@hookimpl
def startup(router):
    async def note() -> None:
        seen["startup"].append(sorted(router.pools))

    return note()
