"""A ``SynthesisRequest`` as vllm-omni's ``POST /v1/audio/speech`` body for IndexTTS-2 and 2.5.

vllm-omni drops unknown top-level keys silently, so every IndexTTS setting goes in ``extra_params``:

- voice: ``ref_audio`` (see ``vllm_omni_refs``) or ``voice`` (a voice uploaded to the node);
- emotion: speaker (nothing sent), reference audio -> ``emo_audio`` + ``emo_alpha``, vector ->
  ``emo_vector`` (exactly 8 numbers, each 0-1.2), text (OpenAI's ``instructions`` too) ->
  ``use_emo_text`` + ``emo_text``; random -> ``use_random``; a weight other than 1 -> ``emo_alpha``;
- speed: ``speed`` on both versions (2.5: native, 0.5-2.0, refused here first; 2.0: the node
  time-stretches the finished audio, 0.25-4.0);
- language (2.5): ``extra_params.lang``, the client's or guessed from the text (``text.language``);
- format: wav, pcm, flac and mp3 are asked from the node as the client wants them; opus (which
  libsndfile cannot write at IndexTTS's 22,050 Hz: the node answers 400) and aac (not offered)
  are asked as wav and encoded by the router.

Streaming: by default the router asks for a whole file. vllm-omni is not incremental for IndexTTS
(the audio arrives when the whole request is done), so a stream would only replace the node's error
status with a cut body or an SSE error event after a 200. With the pool option ``stream: true``
(for versions that do stream), wav and pcm requests use raw audio streaming (``stream_format:
audio``) asked as pcm, so the router frames the WAV itself and a whole file gets its real sizes.
SSE is never used: its base64 costs a third more bytes and its error event says no more than a cut.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..errors import RequestInvalid
from ..text.language import request_lang
from ..types import Emotion, EmotionMethod, SynthesisRequest
from .indextts25 import Version, duration_factor
from .vllm_omni_refs import ReferenceUnavailable, node_file_url, reference_url

JsonValue = str | int | float | bool | None | list["JsonValue"] | dict[str, "JsonValue"]

#: formats the node writes itself at 22,050 Hz (the router transcodes the others from wav)
NODE_FORMATS = frozenset({"wav", "pcm", "flac", "mp3"})
STREAM_FORMATS = frozenset({"wav", "pcm"})
EMO_VECTOR_LEN = 8
EMO_VECTOR_MAX = 1.2
BACKEND = "vllm-omni"


@dataclass
class NodeRequest:
    """The body to post and the audio format it will answer in."""

    body: dict[str, JsonValue]
    format: str
    stream: bool


async def node_request(request: SynthesisRequest, *, model: str | None, version: Version | None,
                       allowed_media_path: str | None, stream: bool = False) -> NodeRequest:
    """The node's body for ``request``; ``RequestInvalid`` for what vllm-omni would refuse."""
    body: dict[str, JsonValue] = {"input": request.text}
    if model:
        body["model"] = model
    body.update(await speaker(request, allowed_media_path))
    extras = await emotion_params(request.emotion, allowed_media_path)
    speed = request.speed
    if speed != 1.0:
        if version == "2.5":
            duration_factor(speed, backend=BACKEND)  # refuses speeds 2.5 does not take
        body["speed"] = speed
    if version != "2":  # 2.0 ignores lang; an undetected version gets it in case it is 2.5
        extras["lang"] = request_lang(request.lang, request.text)
    if extras:
        body["extra_params"] = extras
    fmt = request.response_format if request.response_format in NODE_FORMATS else "wav"
    streaming = stream and fmt in STREAM_FORMATS and (speed == 1.0 or version == "2.5")
    if streaming:
        fmt = "pcm"
        body.update(stream=True, stream_format="audio")
    body["response_format"] = fmt
    return NodeRequest(body, fmt, streaming)


async def speaker(request: SynthesisRequest, allowed_media_path: str | None) -> dict[str, JsonValue]:
    """``ref_audio`` or ``voice`` for the request's voice."""
    name = request.voice or ""
    url = await reference_url(name, request.voice_params, allowed_media_path)
    if url is not None:
        return {"ref_audio": url}
    uploaded = request.voice_params.get("uploaded_voice")
    if isinstance(uploaded, str) and uploaded:
        return {"voice": uploaded}
    raise ReferenceUnavailable(f"voice {name!r} has no reference audio vllm-omni nodes can use (ref_audio_file, "
                               "ref_audio, uploaded_voice, or spk_audio_path under allowed_media_path)")


async def emotion_params(emotion: Emotion, allowed_media_path: str | None) -> dict[str, JsonValue]:
    """IndexTTS's emotion controls as vllm-omni's ``extra_params``."""
    extras: dict[str, JsonValue] = {}
    method = emotion.method
    if method == EmotionMethod.REFERENCE_AUDIO:
        url = await reference_url("emotion reference", emotion.ref_params, allowed_media_path)
        if url is None:
            url = node_file_url(emotion.ref_path, allowed_media_path)
        if url is None:
            raise RequestInvalid("This emotion voice has no reference audio vllm-omni nodes can read (ref_audio_file, "
                                 "ref_audio, or spk_audio_path under the pool's allowed_media_path).",
                                 param="emotion.audio")
        extras["emo_audio"] = url
    elif method == EmotionMethod.VECTOR:
        extras["emo_vector"] = _vector(emotion.vector)
    elif method == EmotionMethod.TEXT:
        extras["use_emo_text"] = True
        if emotion.text:
            extras["emo_text"] = emotion.text
    if method != EmotionMethod.SPEAKER and emotion.weight != 1.0:
        if not math.isfinite(emotion.weight):
            raise RequestInvalid("Invalid 'emotion.weight': must be a finite number.", param="emotion.weight")
        extras["emo_alpha"] = emotion.weight
    if emotion.random:
        extras["use_random"] = True
    return extras


def _vector(vector: list[float] | None) -> list[JsonValue]:
    if vector is None or len(vector) != EMO_VECTOR_LEN:
        raise RequestInvalid(f"Invalid 'emotion.vector': vllm-omni needs exactly {EMO_VECTOR_LEN} numbers.",
                             param="emotion.vector")
    for value in vector:
        if not (math.isfinite(value) and 0.0 <= value <= EMO_VECTOR_MAX):
            raise RequestInvalid(f"Invalid 'emotion.vector': each value must be between 0 and {EMO_VECTOR_MAX:g} "
                                 f"for vllm-omni, got {value!r}.", param="emotion.vector")
    return [float(v) for v in vector]
