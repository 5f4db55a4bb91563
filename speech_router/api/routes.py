"""The public HTTP routes. Each handler turns its API's body into a ``SynthesisRequest`` and hands
it to ``speech_router.api.respond``, which dispatches it and streams the answer."""

from __future__ import annotations

import json
import posixpath
import time
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response

from ..errors import RequestInvalid, RequestTooLarge
from ..plugins.manager import get_plugins
from ..router.voices import resolve_voice
from ..types import Emotion, EmotionMethod, SynthesisRequest
from .respond import synthesize_response
from pydantic import ValidationError

from .schemas import (EmotionSpec, SpeechRequest, SynthesizeRequest, TtsUrlRequest, check_text_everywhere,
                      invalid_from, parse)

OPENAI_SPEECH = "/v1/audio/speech"


async def read_json(request: Request, limit: int) -> Any:
    """The JSON body, refusing more than ``limit`` bytes whatever Content-Length says."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise RequestTooLarge(f"Request body is over the {limit} byte limit.", param=None, code="body_too_large")
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise RequestTooLarge(f"Request body is over the {limit} byte limit.", param=None, code="body_too_large")
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise RequestInvalid("We could not parse the JSON body of your request. Send a JSON object.",
                             param=None, code="invalid_json") from None
    if b"\\u" in body:  # only a \u escape can make a lone surrogate or NUL (raw ones are not valid UTF-8/JSON)
        check_text_everywhere(data)
    return data


def _state(request: Request) -> Any:
    return request.app.state


def _check_model(request: Request, settings: Any, model: str) -> None:
    if model in settings.models:
        request.scope["state"]["model"] = model  # a configured name: safe as a metric label
    else:
        raise RequestInvalid(f"Model {model!r} not found. Available models: {', '.join(settings.models)}.",
                             param="model", code="model_not_found")


def _check_text(settings: Any, text: str, param: str) -> None:
    if not text.strip():
        raise RequestInvalid(f"Invalid '{param}': the text is empty.", param=param, code="empty_input")
    limit = settings.server.max_text_chars
    if len(text) > limit:
        raise RequestInvalid(f"Invalid '{param}': string too long. Expected at most {limit} characters, "
                             f"got {len(text)}.", param=param, code="string_above_max_length")
    if not text.isascii():  # JSON's "\ud800" decodes to a lone surrogate: not text, and no engine can encode it
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise RequestInvalid(f"Invalid '{param}': {text[exc.start]!a} at position {exc.start} is a lone "
                                 "UTF-16 surrogate, not a character.", param=param, code="invalid_text") from None


async def openai_speech(request: Request) -> Response:
    """OpenAI create-speech (``/v1/audio/speech`` and ``/audio/speech``)."""
    state = _state(request)
    settings = state.settings
    body = parse(SpeechRequest, await read_json(request, settings.server.max_body_bytes))
    _check_model(request, settings, body.model)
    _check_text(settings, body.input, "input")
    voice = body.voice_name
    params = resolve_voice(settings, voice)
    emotion = Emotion(EmotionMethod.TEXT, text=body.instructions) if body.instructions else Emotion()
    sreq = SynthesisRequest(text=body.input, model=body.model, voice=voice, voice_params=params, emotion=emotion,
                            speed=body.speed, response_format=body.response_format,
                            request_id=request.scope["state"]["request_id"])
    return await synthesize_response(request, sreq, fmt=body.response_format, sample_rate=None, stream=True,
                                     sse=body.stream_format == "sse", route=OPENAI_SPEECH)


async def synthesize(request: Request) -> Response:
    """The native request: IndexTTS2 emotion controls, voices by name, format and rate options."""
    state = _state(request)
    settings = state.settings
    body = parse(SynthesizeRequest, await read_json(request, settings.server.max_body_bytes))
    model = body.model or next(iter(settings.models))
    _check_model(request, settings, model)
    _check_text(settings, body.text, "text")
    params = resolve_voice(settings, body.voice)
    emotion = Emotion()
    if body.emotion is not None:
        e = body.emotion
        emotion = Emotion(random=e.random, weight=e.weight)
        if e.audio is not None:
            ref_params = resolve_voice(settings, e.audio, param="emotion.audio")
            if not any(ref_params.get(k) for k in ("spk_audio_path", "ref_audio_file", "ref_audio")):
                raise RequestInvalid(f"Voice {e.audio!r} has no reference audio (spk_audio_path, ref_audio_file or "
                                     "ref_audio).", param="emotion.audio")
            emotion.method, emotion.ref_path = EmotionMethod.REFERENCE_AUDIO, ref_params.get("spk_audio_path")
            emotion.ref_params = ref_params
        elif e.vector is not None:
            emotion.method, emotion.vector = EmotionMethod.VECTOR, e.vector
        elif e.text is not None:
            emotion.method, emotion.text = EmotionMethod.TEXT, e.text
    sreq = SynthesisRequest(text=body.text, model=model, voice=body.voice, voice_params=params, emotion=emotion,
                            speed=body.speed, response_format=body.format,
                            max_text_tokens_per_sentence=body.max_text_tokens_per_sentence, lang=body.lang,
                            request_id=request.scope["state"]["request_id"])
    return await synthesize_response(request, sreq, fmt=body.format, sample_rate=body.sample_rate,
                                     stream=body.stream, sse=False, route="/synthesize")


async def tts_url(request: Request) -> Response:
    """Drop-in for index-tts-vllm's ``POST /tts_url``: the same body, forwarded to a healthy node."""
    state = _state(request)
    settings = state.settings
    body = await read_json(request, settings.server.max_body_bytes)
    if not isinstance(body, dict):
        raise RequestInvalid("The request body must be a JSON object.")
    text = body.get("text")
    if not isinstance(text, str):
        raise RequestInvalid("'text' is required and must be a string.", param="text")
    _check_text(settings, text, "text")
    if not any(isinstance(body.get(k), str) or isinstance(body.get(k), list) for k in
               ("spk_audio_path", "audio_paths", "audio_path")):
        raise RequestInvalid("'spk_audio_path' is required and must be a string.", param="spk_audio_path")
    _check_emo_vec(body)
    _check_reference_paths(body, settings.server.tts_url_path_prefixes)
    parse(TtsUrlRequest, body)  # the node crashes (500) on a wrong type; the body itself goes on unchanged
    model = state.tts_url_model
    if model is None:
        raise RequestInvalid("No index-tts-vllm pool is configured for /tts_url.", param=None, code="not_configured")
    request.scope["state"]["model"] = model
    sreq = SynthesisRequest(text=text, model=model, passthrough=body, response_format="wav",
                            request_id=request.scope["state"]["request_id"])
    return await synthesize_response(request, sreq, fmt="wav", sample_rate=None, stream=True, sse=False,
                                     route="/tts_url", check_voice=False)


def _check_emo_vec(body: dict[str, Any]) -> None:
    """The node answers 500 for a bad emotion vector; say 400 first, as the native route does."""
    if body.get("emo_control_method") != 2 or "emo_vec" not in body:
        return
    try:
        EmotionSpec(vector=body["emo_vec"])
    except ValidationError as exc:
        err = invalid_from(exc)
        raise RequestInvalid(err.message.replace("'vector'", "'emo_vec'"), param="emo_vec") from None


#: fields of index-tts-vllm's v1/v2 ``/tts_url`` bodies that name files on the node (any ``*_path(s)`` also counts)
REFERENCE_PATH_FIELDS = ("spk_audio_path", "emo_ref_path", "emo_audio_prompt", "audio_path", "audio_paths")


def _check_reference_paths(body: dict[str, Any], prefixes: list[str]) -> None:
    """With ``server.tts_url_path_prefixes`` set, every path must lie under one of them once normalised.

    The normalised path replaces the given one, so the node never resolves a ``..`` itself.
    """
    if not prefixes:
        return
    roots = [posixpath.normpath(p) for p in prefixes]
    for field, value in body.items():
        if value is None or not (field in REFERENCE_PATH_FIELDS or field.endswith(("_path", "_paths"))):
            continue
        paths = value if isinstance(value, list) else [value]
        for path in paths:
            if not isinstance(path, str) or not path or not any(_under(posixpath.normpath(path), r) for r in roots):
                raise RequestInvalid(f"'{field}' must name a file under one of the allowed paths: "
                                     f"{', '.join(prefixes)}.", param=field, code="path_not_allowed")
        normalised = [posixpath.normpath(p) for p in paths]
        body[field] = normalised if isinstance(value, list) else normalised[0]


def _under(path: str, root: str) -> bool:
    return root == "/" and path.startswith("/") or path == root or path.startswith(root.rstrip("/") + "/")


async def list_models(request: Request) -> JSONResponse:
    state = _state(request)
    data = [{"id": name, "object": "model", "created": state.created, "owned_by": "speech-router"}
            for name in state.settings.models]
    return JSONResponse({"object": "list", "data": data})


async def list_voices(request: Request) -> JSONResponse:
    state = _state(request)
    settings, router = state.settings, state.router
    data = []
    for name, voice in settings.voices.items():
        params = voice.params()
        models = [m for m in settings.models
                  if any(p.endpoints[0].backend.supports_voice(params) for p in router.route(m))]
        data.append({"id": name, "object": "voice", "description": voice.description, "models": models})
    out: dict[str, Any] = {"object": "list", "data": data}
    if settings.voice_dir is not None:
        out["voice_dir"] = settings.voice_dir.path
    return JSONResponse(out)


async def health(request: Request) -> JSONResponse:
    """200 when every model has at least one healthy endpoint, else 503; each endpoint's state."""
    router = _state(request).router
    models = {m: {"healthy": router.model_healthy(m), "pools": [p.name for p in router.route(m)]}
              for m in router.settings.models}
    ok = all(m["healthy"] for m in models.values())
    body = {"status": "healthy" if ok else "unhealthy", "models": models,
            "endpoints": [ep.describe() for ep in router.endpoints]}
    return JSONResponse(body, status_code=200 if ok else 503)


async def livez(request: Request) -> JSONResponse:
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> JSONResponse:
    """Ready once started and at least one model can be served."""
    router = _state(request).router
    ready = router.started and any(router.model_healthy(m) for m in router.settings.models)
    return JSONResponse({"status": "ready" if ready else "not ready"}, status_code=200 if ready else 503)


async def metrics(request: Request) -> Response:
    from ..metrics import CONTENT_TYPE

    state = _state(request)
    for ep in state.router.endpoints:
        state.metrics.inflight.labels(ep.pool, ep.name).set(ep.inflight)
    for model in state.settings.models:
        state.metrics.model_healthy.labels(model).set(1 if state.router.model_healthy(model) else 0)
    return PlainTextResponse(state.metrics.render(), media_type=CONTENT_TYPE)


async def plugins(request: Request) -> JSONResponse:
    return JSONResponse(get_plugins(_state(request).pm))


def started_at() -> int:
    return int(time.time())
