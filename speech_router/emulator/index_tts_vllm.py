"""Emulated index-tts-vllm node: `api_server_v2.py` (IndexTTS2) or `api_server.py` (IndexTTS 1/1.5).

Request parsing follows the real handlers line by line, so a body the real node rejects fails here the
same way: a 500 whose JSON `error` is a genuine Python traceback (KeyError, AttributeError, ...).
The model is replaced by `FakeIndexTTS2`, driven by the knobs in `EmulatorConfig`.
"""

from __future__ import annotations

import asyncio
import time
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from speech_router.emulator import audio
from speech_router.emulator.control import build_app, state_of
from speech_router.emulator.engine import FakeIndexTTS2, node_path
from speech_router.emulator.faults import audio_response
from speech_router.emulator.state import EmulatorState, Knobs, NodeStopped

EMO_VEC_SUM_ERROR = "情感向量之和不能超过1.5，请调整后重试。"
DEFAULT_SPEAKERS: dict[str, list[str]] = {
    "default": ["assets/default.wav"],
    "narrator": ["assets/narrator.wav"],
}

Parse = Callable[[Any, "EmulatorConfig"], "Response | dict[str, Any]"]


@dataclass(kw_only=True)
class EmulatorConfig(Knobs):
    """Knobs for one emulated node; mutate them while it runs (`api` is read once, by create_app)."""

    api: Literal["v2", "v1"] = "v2"
    loaded: bool = True  # False: /health 503 and synthesis fails as with the real server's `tts = None`
    known_paths: set[str] | None = None  # reference files on the node; None: any path without "missing"
    speakers: dict[str, list[str]] = field(default_factory=lambda: {k: list(v) for k, v in DEFAULT_SPEAKERS.items()})


def create_app(config: EmulatorConfig | None = None) -> Starlette:
    """A Starlette app speaking `config.api`; its `app.state.emulator` holds the request log and counters."""
    config = EmulatorConfig() if config is None else config
    state = EmulatorState(config)
    engine = FakeIndexTTS2(state)
    routes: list[BaseRoute] = [Route("/health", _health, methods=["GET"])]
    if config.api == "v2":
        routes.append(Route("/tts_url", _synthesis(_parse_v2, engine), methods=["POST"]))
    elif config.api == "v1":
        routes += [
            Route("/tts_url", _synthesis(_parse_v1_tts_url, engine), methods=["POST"]),
            Route("/tts", _synthesis(_parse_v1_tts, engine), methods=["POST"]),
            Route("/audio/voices", _voices, methods=["GET"]),
            Route("/audio/speech", _synthesis(_parse_v1_speech, engine), methods=["POST"]),
        ]
    else:
        raise ValueError(f"unknown api {config.api!r}; expected 'v2' or 'v1'")
    return build_app(state, routes, exception_handlers={HTTPException: _fastapi_http_error})


def _error(status: int, message: str) -> Response:
    return JSONResponse({"status": "error", "error": message}, status_code=status)


def _traceback_error(ex: BaseException) -> Response:
    # Exactly what the real handlers' `except Exception as ex:` branch returns.
    tb_str = "".join(traceback.format_exception(type(ex), ex, ex.__traceback__))
    return _error(500, tb_str)


async def _fastapi_http_error(request: Request, exc: Exception) -> Response:
    # FastAPI answers unknown paths and wrong methods with {"detail": ...}, not plain text.
    assert isinstance(exc, HTTPException)
    return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers)


async def _health(request: Request) -> Response:
    state = state_of(request)
    config = state.config
    if config.hang_health:
        try:
            await state.pause(None)
        except NodeStopped:
            return Response(status_code=503)
    assert isinstance(config, EmulatorConfig)
    if not config.loaded:
        return JSONResponse({"status": "unhealthy", "message": "TTS model not initialized"}, status_code=503)
    return JSONResponse({"status": "healthy", "message": "Service is running", "timestamp": time.time()})


async def _voices(request: Request) -> Response:
    config = state_of(request).config
    assert isinstance(config, EmulatorConfig)
    return JSONResponse(config.speakers)


def _synthesis(parse: Parse, engine: FakeIndexTTS2) -> Callable[[Request], Awaitable[Response]]:
    """Endpoint shared by every synthesis route: parse as the real handler does, infer, answer WAV."""

    async def endpoint(request: Request) -> Response:
        state: EmulatorState = state_of(request)
        config = state.config
        assert isinstance(config, EmulatorConfig)
        await state.record(request)
        state.in_flight += 1
        try:
            data = await request.json()
            args = parse(data, config)
            if isinstance(args, Response):
                return args
            tts: Any = engine if config.loaded else None  # the real server's global, None until loaded
            sr, wav = await _unless_disconnected(request, state, tts.infer(**args))
            wav_bytes = audio.encode(wav, sr, "wav")
            state.served += 1
            return audio_response(wav_bytes, "audio/wav", truncate=config.truncate, garbage=config.garbage)
        except NodeStopped:
            return Response(status_code=503)  # the client is gone; nobody reads this
        except Exception as ex:
            return _traceback_error(ex)
        finally:
            state.in_flight -= 1

    return endpoint


async def _unless_disconnected(request: Request, state: EmulatorState, work: Awaitable[Any]) -> Any:
    """Run ``work``; a client that leaves is counted, and stops it with ``abort_on_disconnect``."""
    job = asyncio.ensure_future(work)
    watch = asyncio.ensure_future(state.until_disconnected(request))
    try:
        while True:
            done, _ = await asyncio.wait({job, watch}, return_when=asyncio.FIRST_COMPLETED)
            if job in done:
                return job.result()
            if state.config.abort_on_disconnect:
                job.cancel()
                raise NodeStopped
            await asyncio.wait({job})
    finally:
        for task in (job, watch):
            task.cancel()
        await asyncio.gather(job, watch, return_exceptions=True)


def _parse_v2(data: Any, config: EmulatorConfig) -> Response | dict[str, Any]:
    # api_server_v2.py tts_api_url, statement for statement.
    emo_control_method = data.get("emo_control_method", 0)
    text = data["text"]
    spk_audio_path = data["spk_audio_path"]
    emo_ref_path = data.get("emo_ref_path", None)
    emo_weight = data.get("emo_weight", 1.0)
    emo_vec = data.get("emo_vec", [0] * 8)
    emo_text = data.get("emo_text", None)
    emo_random = data.get("emo_random", False)
    max_text_tokens_per_sentence = data.get("max_text_tokens_per_sentence", 120)

    if type(emo_control_method) is not int:
        emo_control_method = emo_control_method.value
    if emo_control_method == 0:
        emo_ref_path = None
        emo_weight = 1.0
    if emo_control_method == 2:
        vec = emo_vec
        vec_sum = sum(vec)
        if vec_sum > 1.5:
            return _error(500, EMO_VEC_SUM_ERROR)
    else:
        vec = None
    return {
        "spk_audio_prompt": spk_audio_path,
        "text": text,
        "output_path": None,
        "emo_audio_prompt": emo_ref_path,
        "emo_alpha": emo_weight,
        "emo_vector": vec,
        "use_emo_text": (emo_control_method == 3),
        "emo_text": emo_text,
        "use_random": emo_random,
        "max_text_tokens_per_sentence": int(max_text_tokens_per_sentence),
    }


def _speaker_audio_dict(config: EmulatorConfig) -> dict[str, str]:
    # api_server.py's lifespan: the first path of each speaker.json entry, relative to the server.
    return {name: node_path(paths[0]) for name, paths in config.speakers.items() if paths}


def _parse_v1_tts_url(data: Any, config: EmulatorConfig) -> Response | dict[str, Any]:
    text = data["text"]
    audio_path = data.get("audio_path") or data.get("audio_paths", [None])[0]
    if not audio_path:
        return _error(400, "audio_path or audio_paths is required")
    return {"spk_audio_prompt": audio_path, "text": text, "output_path": None}


def _parse_v1_tts(data: Any, config: EmulatorConfig) -> Response | dict[str, Any]:
    text = data["text"]
    character = data["character"]
    speakers = _speaker_audio_dict(config)
    if character not in speakers:
        return _error(404, f"Speaker '{character}' not found")
    return {"spk_audio_prompt": speakers[character], "text": text, "output_path": None}


def _parse_v1_speech(data: Any, config: EmulatorConfig) -> Response | dict[str, Any]:
    text = data["input"]
    character = data["voice"]
    _model = data.get("model", "tts-1")  # ignored, like response_format and speed
    speakers = _speaker_audio_dict(config)
    if character not in speakers:
        return _error(404, f"Voice '{character}' not found")
    return {"spk_audio_prompt": speakers[character], "text": text, "output_path": None}
