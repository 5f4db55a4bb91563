"""The speech route of the emulated vllm-omni node: accept a request, then answer it whole or streamed.

A request is checked in vllm-omni's order (``vllm_omni_request``), its references are fetched and
decoded (``vllm_omni_media``), then it waits for an engine slot without bound (no admission
control), takes its time and may fail like a GPU stage does (``EngineGenerateError``: 500 before
the answer started; after a stream's 200, a cut raw stream or a ``speech.audio.error`` event).
Audio is 22,050 Hz mono; a non-streamed answer is a whole file in the asked format (opus fails at
that rate, as it does on a real node: 400 "Speech generation failed"). On 2.5, a single request
longer than ``mel_cap_s`` comes back squeezed into that length (vllm-omni issue #7378).

Speaker conditioning: the first use of a voice on a node costs ``speaker_first_use_s`` more, in its
engine slot, and the node then keeps it in an LRU of ``speaker_cache`` voices (vllm-omni's 512 MiB
speaker cache, counted in voices), so sending a voice to the node that used it lately saves GPU time.
"""

from __future__ import annotations

import base64
import json
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Literal

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from speech_router.emulator import audio
from speech_router.emulator.control import state_of
from speech_router.emulator.faults import GARBAGE_BODY, audio_response
from speech_router.emulator.state import EmulatorState, Knobs, NodeStopped
from speech_router.emulator.vllm_omni_media import MediaError, VoiceStore, check_audio, fetch_reference, reference_key
from speech_router.emulator.vllm_omni_request import (
    OmniError,
    SpeechBody,
    check_indextts,
    check_model,
    check_streaming,
    invalid_json,
    parse_body,
)

RATE = audio.INDEX_TTS_RATE
STREAM_SIZE = 0xFFFFFFFF  # the "unknown length" a streamed WAV header carries
OOM = "CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 23.55 GiB total capacity)"


@dataclass(kw_only=True)
class VllmOmniConfig(Knobs):
    """Knobs of one emulated vllm-omni node; mutate them while it runs (``version`` too)."""

    model: str = "IndexTeam/IndexTTS-2"  # the served model name (``--served-model-name``)
    root: str | None = None  # the model path in /v1/models; default: the served name
    version: Literal["2", "2.5"] = "2"
    slots: int | None = 4  # max_num_seqs: requests beyond it wait inside the engine, without limit
    allowed_media_path: str | None = None  # --allowed-local-media-path, for file:// references
    api_key: str | None = None  # --api-key: /v1/* needs `Authorization: Bearer <key>`
    dead: bool = False  # the engine died: /health 503, synthesis 500
    ready: bool = True  # False: GET /ready says 503 {"ready": false} (warming up)
    has_ready: bool = True  # False: a version without GET /ready (404)
    health_body: bool = True  # False: GET /health answers 200 with an empty body
    server_load_tracking: bool = False  # --enable-server-load-tracking: GET /load
    chunks: int = 1  # pieces a stream's audio is sent in (IndexTTS is not incremental: one)
    mel_cap_s: float | None = 60.0  # 2.5: longer single requests are squeezed into this many seconds
    speaker_first_use_s: float = 0.0  # extra engine time the first time a voice is used (speaker conditioning)
    speaker_cache: int = 64  # voices whose conditioning the node keeps (LRU); 0 keeps none
    #: how a stream is answered: as the request asks (stream_format), or always SSE events (a version that streams
    #: only so), or always raw bytes (an older version: stream: true is raw, stream_format unknown)
    stream_shape: Literal["request", "sse", "raw"] = "request"


class SpeakerCache:
    """The voices a node holds the conditioning of, least recently used first; counts misses for benchmarks."""

    def __init__(self) -> None:
        self.voices: OrderedDict[str, None] = OrderedDict()
        self.misses = 0

    def __repr__(self) -> str:
        return f"SpeakerCache(voices={len(self.voices)}, misses={self.misses})"

    def use(self, voice: str, size: int) -> bool:
        """Record a use of ``voice``; True when it was not held (its conditioning must be computed)."""
        if voice in self.voices:
            self.voices.move_to_end(voice)
            return False
        self.misses += 1
        self.voices[voice] = None
        while len(self.voices) > max(0, size):
            self.voices.popitem(last=False)
        return True


class EngineError(Exception):
    """Stands in for vLLM's EngineGenerateError (an OOM in the GPU stages)."""


def node_config(state: EmulatorState) -> VllmOmniConfig:
    config = state.config
    assert isinstance(config, VllmOmniConfig)
    return config


def speaker_cache(request: Request) -> SpeakerCache:
    speakers: SpeakerCache = request.app.state.speakers
    return speakers


def voice_store(request: Request) -> VoiceStore:
    voices: VoiceStore = request.app.state.voices
    return voices


def authorized(request: Request, config: VllmOmniConfig) -> Response | None:
    """vLLM's --api-key check: paths under /v1 need the bearer key; 401 ``{"error": "Unauthorized"}``."""
    if config.api_key is None:
        return None
    scheme, _, key = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and key == config.api_key:
        return None
    return JSONResponse({"error": "Unauthorized"}, status_code=401)


async def speech(request: Request) -> Response:
    """``POST /v1/audio/speech``: every check first (their errors keep their status), then the engine."""
    state = state_of(request)
    config = node_config(state)
    await state.record(request)
    if (denied := authorized(request, config)) is not None:
        return denied
    try:
        try:
            data = await request.json()
        except ValueError as exc:
            raise invalid_json(str(exc)) from None
        plan = await accept(data, config, voice_store(request), speaker_cache(request))
    except OmniError as exc:
        return exc.response()
    if plan.body.streaming:
        return StreamingResponse(_stream(state, plan), media_type=plan.stream_media_type)
    return await _whole(state, plan)


async def accept(data: object, config: VllmOmniConfig, voices: VoiceStore, speakers: SpeakerCache) -> SpeechPlan:
    """A speech request's checks in vllm-omni's order (``OmniError`` for the first failing one), then its plan."""
    body = parse_body(data)
    check_model(body, config.model)
    if config.dead:
        raise OmniError(500, "EngineCore encountered an issue. See stack trace (above) for the root cause.",
                        "InternalServerError", extra={"request_id": _request_id(), "error_stage_id": 0})
    check_streaming(body, native_speed=config.version == "2.5")
    uploaded = voices.get(body.voice) if body.ref_audio is None else None
    check_indextts(body, config.version, uploaded is not None)
    speaker = uploaded.data if uploaded is not None else await _reference(str(body.ref_audio), config)
    emo_audio = body.extras.get("emo_audio")
    if isinstance(emo_audio, str):
        await _reference(emo_audio, config)
    return SpeechPlan(body, reference_key(speaker), config, speakers)


async def _reference(ref: str, config: VllmOmniConfig) -> bytes:
    try:
        data = await fetch_reference(ref, config.allowed_media_path)
        check_audio(data)
    except MediaError as exc:
        raise OmniError(400, str(exc)) from None
    return data


def _request_id() -> str:
    return f"speech-{uuid.uuid4().hex}"


class SpeechPlan:
    """What one accepted request will produce."""

    def __init__(self, body: SpeechBody, voice: str, config: VllmOmniConfig, speakers: SpeakerCache) -> None:
        self.body, self.voice, self.speakers = body, voice, speakers
        self.sse = body.sse_stream if config.stream_shape == "request" else config.stream_shape == "sse"
        self.text = body.input
        self.format = body.response_format
        speed = body.speed or 1.0
        seconds = audio.duration_s(self.text, speed)
        if config.version == "2.5" and config.mel_cap_s is not None and seconds > config.mel_cap_s:
            speed *= seconds / config.mel_cap_s  # capped near 1500 mel codes: the same words, squeezed
        self.speed = speed

    @property
    def stream_media_type(self) -> str:
        if self.sse:
            return "text/event-stream"
        return "audio/wav" if self.format == "wav" else "audio/pcm"

    def samples(self) -> bytes:
        return audio.render(self.text, self.voice, RATE, self.speed).astype("<i2").tobytes()


async def generate(state: EmulatorState, plan: SpeechPlan) -> None:
    """The engine's part: wait for a slot (no bound on the wait), take the time, maybe fail."""
    config = node_config(state)
    await state.hung()
    async with state.slot():
        first_use = plan.speakers.use(plan.voice, config.speaker_cache)
        extra = config.speaker_first_use_s * config.slowdown if first_use else 0.0
        await state.pause(config.latency_s(plan.text) + extra)
        if config.fails(plan.text):
            raise EngineError(OOM)


async def _whole(state: EmulatorState, plan: SpeechPlan) -> Response:
    config = node_config(state)
    state.in_flight += 1
    try:
        await generate(state, plan)
        samples = audio.render(plan.text, plan.voice, RATE, plan.speed)
        try:
            data = audio.encode(samples, RATE, plan.format)
        except Exception as exc:  # noqa: BLE001 - create_speech answers any encoding failure like this
            return OmniError(400, f"Speech generation failed: {exc}").response()
        state.served += 1
        return audio_response(data, audio.FORMATS[plan.format][0], truncate=config.truncate, garbage=config.garbage)
    except EngineError as exc:
        return OmniError(500, f"EngineGenerateError: {exc}", "InternalServerError",
                         extra={"request_id": _request_id(), "error_stage_id": 1}).response()
    except NodeStopped:
        return Response(status_code=503)
    finally:
        state.in_flight -= 1


def _wav_header() -> bytes:
    byte_rate, align = RATE * 2, 2
    return (b"RIFF" + STREAM_SIZE.to_bytes(4, "little") + b"WAVEfmt " + (16).to_bytes(4, "little") +
            (1).to_bytes(2, "little") + (1).to_bytes(2, "little") + RATE.to_bytes(4, "little") +
            byte_rate.to_bytes(4, "little") + align.to_bytes(2, "little") + (16).to_bytes(2, "little") + b"data" +
            STREAM_SIZE.to_bytes(4, "little"))


def _sse(payload: dict[str, object]) -> bytes:
    kind = payload["type"]
    return f"event: {kind}\ndata: {json.dumps(payload, separators=(',', ':'))}\n\n".encode()


async def _stream(state: EmulatorState, plan: SpeechPlan) -> AsyncIterator[bytes]:
    """A stream's body; the 200 went out when the request was accepted."""
    config = node_config(state)
    sse = plan.sse
    state.in_flight += 1
    try:
        try:
            await generate(state, plan)
        except EngineError as exc:
            if not sse:
                raise  # the connection is cut: the client sees a chunked body without its end
            error = {"message": str(exc), "type": "server_error", "param": None, "code": 500}
            yield _sse({"type": "speech.audio.error", "error": error})
            return
        pcm = plan.samples()
        size = -(-len(pcm) // max(1, config.chunks))
        pieces = [pcm[i:i + size] for i in range(0, len(pcm), size)]
        if plan.format == "wav":
            pieces.insert(0, _wav_header())
        if config.garbage:
            pieces = [GARBAGE_BODY]
        if config.truncate:
            pieces = pieces[: max(1, len(pieces) // 2)]
        for piece in pieces:
            if sse:
                yield _sse({"type": "speech.audio.delta", "audio": base64.b64encode(piece).decode(),
                            "response_format": plan.format})
            else:
                yield piece
        if config.truncate:
            raise EngineError("emulated truncation")
        state.served += 1
        if sse:
            chars, frames = len(plan.text), len(pcm) // 2 // 441
            usage = {"input_tokens": chars, "output_tokens": frames, "total_tokens": chars + frames}
            yield _sse({"type": "speech.audio.done", "usage": usage})
    except NodeStopped:
        return
    finally:
        state.in_flight -= 1
