"""The synthesis APIs' bodies: each turns its request into a ``Plan`` (``speech_router.api.plan``) for
``speech_router.api.synthesis``: OpenAI's create-speech, the native ``/synthesize`` with IndexTTS2's
emotion controls, and index-tts-vllm's ``/tts_url``, whose body goes on to the node unchanged."""

from __future__ import annotations

import json
import posixpath
import re
from typing import Any

from pydantic import ValidationError
from starlette.requests import Request

from ..config.models import Settings
from ..errors import RequestInvalid, RequestTooLarge
from ..types import Emotion, EmotionMethod, SynthesisRequest
from ..voices.resolve import resolve_voice
from .gate import exchange_of
from .plan import Plan
from .schemas import (
    EmotionSpec,
    SpeechRequest,
    SynthesizeRequest,
    TtsUrlRequest,
    check_text_everywhere,
    invalid_from,
    parse,
)
from .state import AppState

#: fields of index-tts-vllm's v1/v2 ``/tts_url`` bodies that name files on the node (any ``*_path(s)`` also counts)
REFERENCE_PATH_FIELDS = ("spk_audio_path", "emo_ref_path", "emo_audio_prompt", "audio_path", "audio_paths")
#: C0 and C1 control characters (NUL is refused in any body already)
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")


async def read_json(request: Request, limit: int) -> Any:
    """The JSON body, refusing more than ``limit`` bytes whatever Content-Length says."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise RequestTooLarge(f"Request body is over the {limit} byte limit.", param=None, code="body_too_large")
    parts: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise RequestTooLarge(f"Request body is over the {limit} byte limit.", param=None, code="body_too_large")
        parts.append(chunk)
    body = parts[0] if len(parts) == 1 else b"".join(parts)
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise RequestInvalid("We could not parse the JSON body of your request. Send a JSON object.",
                             param=None, code="invalid_json") from None
    if b"\\u" in body:  # only a \u escape can make a lone surrogate or NUL (raw ones are not valid UTF-8/JSON)
        check_text_everywhere(data)
    return data


def check_model(request: Request, settings: Settings, model: str) -> None:
    known_model(settings, model)
    exchange_of(request.scope).model = model  # a configured name: safe as a metric label


def known_model(settings: Settings, model: str) -> None:
    if model not in settings.models:
        raise RequestInvalid(f"Model {model!r} not found. Available models: {', '.join(settings.models)}.",
                             param="model", code="model_not_found")


def fallback_voice(settings: Settings, model: str) -> tuple[str, dict[str, Any]] | None:
    """The model's ``fallback_voice``, with its parameters: what pools that cannot speak the asked voice speak."""
    name = settings.models[model].fallback_voice
    return None if name is None else (name, settings.voices[name].params())


async def shared_voice(state: AppState, name: str) -> None:
    """With a state store, an uploaded voice this replica has not mirrored yet is fetched before it is resolved."""
    if state.shared is not None and name not in state.settings.voices and state.settings.voice_store.enabled:
        await state.shared.voices.ensure(name)


def check_text(settings: Settings, text: str, param: str) -> None:
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


async def openai_speech(request: Request, state: AppState) -> Plan:
    """OpenAI create-speech (``/v1/audio/speech`` and ``/audio/speech``)."""
    settings = state.settings
    body = parse(SpeechRequest, await read_json(request, settings.server.max_body_bytes))
    check_model(request, settings, body.model)
    check_text(settings, body.input, "input")
    voice = body.voice_name
    await shared_voice(state, voice)
    params = resolve_voice(settings, voice)
    emotion = emotion_from(settings, None, body.instructions)
    sreq = SynthesisRequest(text=body.input, model=body.model, voice=voice, voice_params=params, emotion=emotion,
                            speed=body.speed, response_format=body.response_format,
                            request_id=exchange_of(request.scope).request_id,
                            fallback_voice=fallback_voice(settings, body.model))
    return Plan(sreq, body.response_format, sse=body.stream_format == "sse")


async def native(request: Request, state: AppState) -> Plan:
    """The native request: IndexTTS2 emotion controls, voices by name, format and rate options."""
    settings = state.settings
    body = parse(SynthesizeRequest, await read_json(request, settings.server.max_body_bytes))
    model = body.model or next(iter(settings.models))
    check_model(request, settings, model)
    check_text(settings, body.text, "text")
    await shared_voice(state, body.voice)
    params = resolve_voice(settings, body.voice)
    if body.emotion is not None and body.emotion.audio is not None:
        await shared_voice(state, body.emotion.audio)  # a voice uploaded through another replica
    emotion = emotion_from(settings, body.emotion)
    sreq = SynthesisRequest(text=body.text, model=model, voice=body.voice, voice_params=params, emotion=emotion,
                            speed=body.speed, response_format=body.format,
                            max_text_tokens_per_sentence=body.max_text_tokens_per_sentence, lang=body.lang,
                            request_id=exchange_of(request.scope).request_id,
                            fallback_voice=fallback_voice(settings, model))
    return Plan(sreq, body.format, body.sample_rate, stream=body.stream)


def emotion_from(settings: Settings, spec: EmotionSpec | None, instructions: str | None = None,
                 param: str = "emotion") -> Emotion:
    """The native ``emotion`` object (``param`` names it in errors), else OpenAI's ``instructions`` as emotion
    text, else the speaker's own emotion."""
    if spec is None:
        return Emotion(EmotionMethod.TEXT, text=instructions) if instructions else Emotion()
    emotion = Emotion(random=spec.random, weight=spec.weight)
    if spec.audio is not None:
        ref_params = resolve_voice(settings, spec.audio, param=f"{param}.audio")
        if not any(ref_params.get(k) for k in ("spk_audio_path", "ref_audio_file", "ref_audio")):
            raise RequestInvalid(f"Voice {spec.audio!r} has no reference audio (spk_audio_path, ref_audio_file or "
                                 "ref_audio).", param=f"{param}.audio")
        emotion.method, emotion.ref_path = EmotionMethod.REFERENCE_AUDIO, ref_params.get("spk_audio_path")
        emotion.ref_params = ref_params
    elif spec.vector is not None:
        emotion.method, emotion.vector = EmotionMethod.VECTOR, spec.vector
    elif spec.text is not None:
        emotion.method, emotion.text = EmotionMethod.TEXT, spec.text
    return emotion


async def tts_url(request: Request, state: AppState) -> Plan:
    """Drop-in for index-tts-vllm's ``POST /tts_url``: the same body, forwarded to a healthy node."""
    settings = state.settings
    body = await read_json(request, settings.server.max_body_bytes)
    if not isinstance(body, dict):
        raise RequestInvalid("The request body must be a JSON object.")
    text = body.get("text")
    if not isinstance(text, str):
        raise RequestInvalid("'text' is required and must be a string.", param="text")
    check_text(settings, text, "text")
    if not any(isinstance(body.get(k), str) or isinstance(body.get(k), list) for k in
               ("spk_audio_path", "audio_paths", "audio_path")):
        raise RequestInvalid("'spk_audio_path' is required and must be a string.", param="spk_audio_path")
    _check_emo_vec(body)
    _refuse_control_characters(body)
    _check_reference_paths(body, settings.server.tts_url_path_prefixes)
    parse(TtsUrlRequest, body)  # the node crashes (500) on a wrong type; the body itself goes on unchanged
    model = state.tts_url_model
    if model is None:
        raise RequestInvalid("No index-tts-vllm pool is configured for /tts_url.", param=None, code="not_configured")
    ex = exchange_of(request.scope)
    ex.model = model
    sreq = SynthesisRequest(text=text, model=model, passthrough=body, response_format="wav", request_id=ex.request_id)
    return Plan(sreq, "wav", check_voice=False)


def _check_emo_vec(body: dict[str, Any]) -> None:
    """The node answers 500 for a bad emotion vector; say 400 first, as the native route does."""
    if body.get("emo_control_method") != 2 or "emo_vec" not in body:
        return
    try:
        EmotionSpec(vector=body["emo_vec"])
    except ValidationError as exc:
        err = invalid_from(exc)
        raise RequestInvalid(err.message.replace("'vector'", "'emo_vec'"), param="emo_vec") from None


def _refuse_control_characters(body: dict[str, Any]) -> None:
    """No file a client means has a tab, a newline or another control character in its name: 400 before a node
    answers it with a traceback (the node's answer would be read as the client's mistake too, but need not be)."""
    for field, value in body.items():
        if value is None or not _is_path_field(field):
            continue
        for path in value if isinstance(value, list) else [value]:
            if isinstance(path, str) and _CONTROL.search(path):
                raise RequestInvalid(f"'{field}' holds a control character (a tab, a newline, ...): no reference "
                                     "file is named so.", param=field, code="invalid_path")


def _is_path_field(field: str) -> bool:
    return field in REFERENCE_PATH_FIELDS or field.endswith(("_path", "_paths"))


def _check_reference_paths(body: dict[str, Any], prefixes: list[str]) -> None:
    """With ``server.tts_url_path_prefixes`` set, every path must lie under one of them once normalised.

    The normalised path replaces the given one, so the node never resolves a ``..`` itself.
    """
    if not prefixes:
        return
    roots = [posixpath.normpath(p) for p in prefixes]
    for field, value in body.items():
        if value is None or not _is_path_field(field):
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
