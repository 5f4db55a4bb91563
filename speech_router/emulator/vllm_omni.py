"""Emulated vllm-omni node serving IndexTTS-2 or IndexTTS-2.5 (github vllm-project/vllm-omni).

Routes as the real server has them: ``POST /v1/audio/speech`` (checks in ``vllm_omni_request``,
references in ``vllm_omni_media``), ``GET /v1/models``, ``GET /health`` (200, or 503 once the engine
is dead; ``health_body: false`` answers 200 with an empty body, as older versions do), ``GET /ready``
(503 ``{"ready": false}`` while warming up; ``has_ready: false`` for versions without it: 404),
``GET /metrics`` with ``vllm_omni:num_requests_running`` / ``..._waiting``, ``GET /load`` (only
with ``server_load_tracking``), the voice API ``POST|GET /v1/audio/voices``,
``DELETE /v1/audio/voices/{name}``, and the streaming-text WebSocket ``/v1/audio/speech/stream``
(``vllm_omni_stream``).

Knobs are ``VllmOmniConfig`` (in ``vllm_omni_speech``, with the speech route). Like the real engine
it has no admission control: ``slots`` requests run (``max_num_seqs``), every other one waits.
"""

from __future__ import annotations

import json
import time

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route, WebSocketRoute

from speech_router.emulator.control import build_app, state_of
from speech_router.emulator.state import EmulatorState, NodeStopped
from speech_router.emulator.vllm_omni_media import MediaError, VoiceStore, parse_form
from speech_router.emulator.vllm_omni_request import OmniError
from speech_router.emulator.vllm_omni_speech import (
    SpeakerCache,
    VllmOmniConfig,
    authorized,
    node_config,
    speaker_cache,
    speech,
    voice_store,
)
from speech_router.emulator.vllm_omni_stream import stream

__all__ = ["VllmOmniConfig", "create_app"]


def create_app(config: VllmOmniConfig | None = None) -> Starlette:
    """A Starlette app speaking vllm-omni's API; ``app.state.emulator`` and ``app.state.voices`` hold its state."""
    config = VllmOmniConfig() if config is None else config
    state = EmulatorState(config)
    routes: list[BaseRoute] = [
        Route("/v1/audio/speech", speech, methods=["POST"]),
        Route("/v1/audio/voices", _list_voices, methods=["GET"]),
        Route("/v1/audio/voices", _upload_voice, methods=["POST"]),
        Route("/v1/audio/voices/{name}", _delete_voice, methods=["DELETE"]),
        Route("/v1/models", _models, methods=["GET"]),
        Route("/health", _health, methods=["GET"]),
        Route("/ready", _ready, methods=["GET"]),
        Route("/metrics", _metrics, methods=["GET"]),
        Route("/load", _load, methods=["GET"]),
        WebSocketRoute("/v1/audio/speech/stream", stream),
    ]
    app = build_app(state, routes, exception_handlers={HTTPException: _http_error})
    app.state.voices = VoiceStore()
    app.state.speakers = SpeakerCache()
    return app


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)  # vLLM answers unknown paths and methods in its error shape
    return OmniError(exc.status_code, str(exc.detail), str(exc.detail)).response()


async def _hang_probe(state: EmulatorState) -> Response | None:
    if node_config(state).hang_health:
        try:
            await state.pause(None)
        except NodeStopped:
            return Response(status_code=503)
    return None


async def _health(request: Request) -> Response:
    state = state_of(request)
    config = node_config(state)
    if (hung := await _hang_probe(state)) is not None:
        return hung
    if config.dead:
        return JSONResponse({"status": "unhealthy"}, status_code=503)
    return JSONResponse({"status": "healthy"}) if config.health_body else Response(status_code=200)


async def _ready(request: Request) -> Response:
    state = state_of(request)
    config = node_config(state)
    if not config.has_ready:
        return OmniError(404, "Not Found", "Not Found").response()
    if (hung := await _hang_probe(state)) is not None:
        return hung
    ready = config.ready and not config.dead
    return JSONResponse({"ready": ready}, status_code=200 if ready else 503)


async def _models(request: Request) -> Response:
    state = state_of(request)
    config = node_config(state)
    if (denied := authorized(request, config)) is not None:
        return denied
    if (hung := await _hang_probe(state)) is not None:
        return hung
    card = {"id": config.model, "object": "model", "created": int(time.time()), "owned_by": "vllm",
            "root": config.root or config.model, "parent": None, "max_model_len": 4096}
    return JSONResponse({"object": "list", "data": [card]})


async def _metrics(request: Request) -> Response:
    state = state_of(request)
    config = node_config(state)
    running, waiting = state.busy, max(0, state.in_flight - state.busy)
    label = json.dumps(config.model)
    lines = []
    for name, value, help_ in (("running", running, "Number of requests currently running across all pipeline "
                                "stages."), ("waiting", waiting, "Number of requests waiting to be scheduled.")):
        metric = f"vllm_omni:num_requests_{name}"
        lines += [f"# HELP {metric} {help_}", f"# TYPE {metric} gauge", f"{metric}{{model_name={label}}} {value:.1f}"]
    lines += ["# HELP vllm_omni:requests_success_total Total requests by completion reason.",
              "# TYPE vllm_omni:requests_success_total counter",
              f'vllm_omni:requests_success_total{{finished_reason="stop",model_name={label}}} {state.served:.1f}',
              "# HELP emulator_speaker_cache_misses_total Voices whose conditioning was computed (emulator only).",
              "# TYPE emulator_speaker_cache_misses_total counter",
              f"emulator_speaker_cache_misses_total {speaker_cache(request).misses:.1f}"]
    return Response("\n".join(lines) + "\n", media_type="text/plain; version=0.0.4; charset=utf-8")


async def _load(request: Request) -> Response:
    state = state_of(request)
    if not node_config(state).server_load_tracking:
        return OmniError(404, "Not Found", "Not Found").response()
    return JSONResponse({"server_load": state.in_flight})


async def _list_voices(request: Request) -> Response:
    if (denied := authorized(request, node_config(state_of(request)))) is not None:
        return denied
    voices = voice_store(request).voices
    return JSONResponse({"voices": sorted(voices), "uploaded_voices": [v.public() for v in voices.values()]})


async def _upload_voice(request: Request) -> Response:
    config = node_config(state_of(request))
    if (denied := authorized(request, config)) is not None:
        return denied
    fields, files = parse_form(await request.body(), request.headers.get("content-type", ""))
    missing = [name for name in ("consent", "name") if name not in fields]
    if missing:
        errors = [{"type": "missing", "loc": ("body", name), "msg": "Field required", "input": None}
                  for name in missing]
        label = "error" if len(errors) == 1 else "errors"
        message = f"{len(errors)} validation {label}:\n" + "".join(f"  {e}\n" for e in errors)
        return OmniError(400, message.rstrip(), "Bad Request", f"body.{missing[0]}").response()
    sample = files.get("audio_sample")
    if sample is None:
        return OmniError(400, "Either 'audio_sample' or 'speaker_embedding' must be provided").response()
    try:
        voice = voice_store(request).add(fields["name"], fields["consent"], sample.data, sample.filename,
                                     sample.content_type, fields.get("ref_text"), fields.get("speaker_description"))
    except MediaError as exc:
        return OmniError(400, str(exc)).response()
    return JSONResponse({"success": True, "voice": voice.public()})


async def _delete_voice(request: Request) -> Response:
    config = node_config(state_of(request))
    if (denied := authorized(request, config)) is not None:
        return denied
    name = request.path_params["name"]
    if not voice_store(request).delete(name):
        return OmniError(404, f"Voice '{name}' not found", "NotFoundError").response()
    return JSONResponse({"success": True, "message": f"Voice '{name}' deleted successfully"})


