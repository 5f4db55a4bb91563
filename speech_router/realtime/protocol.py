"""vllm-omni's streaming-speech WebSocket protocol (``/v1/audio/speech/stream``): what a client may send, what the
router answers, and how a connection is refused.

Client messages are JSON text: ``session.config`` (first, within ``config_timeout``; again between utterances),
``input.text`` chunks of any size, ``input.done`` (ends the utterance; the connection stays open) and
``session.close``. The router answers per sentence ``audio.start``, binary frames of audio, ``audio.done``; per
utterance ``session.done``; and ``error`` events. Errors after a valid config keep the connection, as vllm-omni's
do; a refusal (``Refusal``: a limit, a key, a timeout, a broken first message) is an ``error`` event and then a
close with the code below. The router adds ``code`` (and ``param`` where a field is at fault) to vllm-omni's
``error`` event; a vllm-omni client reads ``message`` as before.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Mapping
from typing import Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, field_validator

from ..api.schemas import AudioFormatName, EmotionSpec, check_text_everywhere, parse
from ..errors import RequestInvalid
from .text import Granularity


class CloseCode(enum.IntEnum):
    """WebSocket close codes (RFC 6455) the router ends a session with."""

    NORMAL = 1000  # session.close
    GOING_AWAY = 1001  # the router is stopping
    UNSUPPORTED = 1003  # a binary message: this protocol is JSON text
    INVALID = 1007  # the first message is not a valid session.config
    POLICY = 1008  # no key or an unknown one, a timeout, too much text buffered
    TOO_BIG = 1009  # a message over max_message_bytes
    INTERNAL = 1011  # an error in the router itself
    TRY_AGAIN = 1013  # too many open sessions, or the key's rate limit


class Refusal(Exception):
    """The session ends: an ``error`` event with ``message`` and ``code``, then a close with ``close``.

    ``outcome`` labels ``speech_router_realtime_sessions_total`` (a small fixed set).
    """

    def __init__(self, message: str, *, code: str, close: CloseCode, outcome: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message, self.code, self.close, self.outcome, self.param = message, code, close, outcome, param


class SessionConfig(BaseModel):
    """``session.config``: the speech request's fields (OpenAI's and the native route's) and the stream's own.

    vllm-omni's fields that IndexTTS ignores there (``task_type``, ``ref_text``, ``max_new_tokens``, ...) are
    accepted and ignored here too; a voice is a configured or uploaded name, never audio in the message.
    """

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)

    type: Literal["session.config"]
    ref_audio: None = None
    speaker_embedding: None = None
    model: str | None = Field(None, min_length=1)
    voice: str = Field(min_length=1, validation_alias=AliasChoices("voice", "speaker"))
    response_format: AudioFormatName = "wav"
    speed: float | None = Field(1.0, ge=0.25, le=4.0)
    instructions: str | None = Field(None, max_length=4096)
    emotion: EmotionSpec | None = None
    language: str | None = Field(None, min_length=1, max_length=24, validation_alias=AliasChoices("language", "lang"))
    split_granularity: Granularity = "sentence"
    stream_audio: bool = False
    word_timestamps: bool = False
    text_input_mode: Literal["buffered"] = "buffered"
    # vllm-omni's, without meaning for IndexTTS: accepted and ignored
    task_type: str | None = None
    ref_text: str | None = None
    max_new_tokens: int | None = Field(None, ge=1)
    initial_codec_chunk_frames: int | None = Field(None, ge=0)
    non_streaming_mode: bool | None = None
    x_vector_only_mode: bool | None = None
    seed: int | None = Field(None, ge=0)

    @field_validator("ref_audio", "speaker_embedding", mode="before")
    @classmethod
    def _no_audio(cls, value: object) -> None:
        if value is not None:
            raise ValueError("the router speaks configured or uploaded voices: name one in 'voice' (upload one with "
                             "POST /v1/audio/voices)")
        return None

    @field_validator("word_timestamps")
    @classmethod
    def _no_timestamps(cls, value: bool) -> bool:
        if value:
            raise ValueError("word timestamps are not available through the router; send false or leave it out")
        return value


class InputText(BaseModel):
    """``input.text``: the next piece of the utterance (other keys are ignored, as vllm-omni does)."""

    model_config = ConfigDict(extra="ignore", strict=True)

    type: Literal["input.text"]
    text: str


#: the messages a client sends
MESSAGE_TYPES: tuple[str, ...] = ("session.config", "input.text", "input.done", "session.close")


def decode(message: Mapping[str, object], limit: int, configured: bool) -> dict[str, object]:
    """A client's WebSocket message as a JSON object with a known ``type``.

    Raises ``Refusal`` for what ends the session (a binary or oversized message; anything but a valid JSON
    object before the first config) and ``RequestInvalid`` for what only gets an ``error`` event.
    """
    text = message.get("text")
    if not isinstance(text, str):
        raise Refusal("Binary messages are not part of this protocol: send JSON text messages.",
                      code="binary_message", close=CloseCode.UNSUPPORTED, outcome="invalid")
    size = len(text.encode("utf-8", "surrogatepass")) if not text.isascii() else len(text)
    if size > limit:
        raise Refusal(f"WebSocket message too large: {size} bytes, at most {limit} "
                      "(server.realtime.max_message_bytes); send the text in smaller input.text chunks.",
                      code="message_too_large", close=CloseCode.TOO_BIG, outcome="too_large")
    try:
        data = json.loads(text)
    except (ValueError, RecursionError):
        data = None
        problem = "Invalid JSON message: each message is one JSON object."
    else:
        problem = "" if isinstance(data, dict) else "WebSocket messages must be JSON objects."
    if problem:
        if not configured:
            raise Refusal(problem, code="invalid_json", close=CloseCode.INVALID, outcome="invalid")
        raise RequestInvalid(problem, code="invalid_json")
    assert isinstance(data, dict)
    kind = data.get("type")
    if not configured and kind != "session.config":
        raise Refusal(f"Expected session.config first, got: {_shown(kind)}.", code="config_expected",
                      close=CloseCode.INVALID, outcome="invalid", param="type")
    if kind not in MESSAGE_TYPES:
        raise RequestInvalid(f"Unknown message type: {_shown(kind)}. Expected one of {', '.join(MESSAGE_TYPES)}.",
                             param="type", code="unknown_message_type")
    if not text.isascii() or "\\u" in text:
        try:
            check_text_everywhere(data)
        except RecursionError:
            raise RequestInvalid("The message is nested too deeply.", code="invalid_json") from None
    return data


def session_config(data: dict[str, object]) -> SessionConfig:
    """A ``session.config`` message, validated; ``RequestInvalid`` names the field at fault."""
    return parse(SessionConfig, data)


def input_text(data: dict[str, object]) -> str:
    """The text of an ``input.text`` message; ``RequestInvalid`` when it is not a string."""
    return parse(InputText, data).text


def _shown(value: object) -> str:
    return repr(value)[:64]


# --- what the router sends ---------------------------------------------------------------------------------


def error_event(message: str, code: str, param: str | None = None, **where: int) -> dict[str, object]:
    """``error``: vllm-omni's ``message``, plus ``code``, ``param`` and the sentence it is about, if any."""
    return {"type": "error", "message": message, "code": code, "param": param, **where}


def audio_start(utterance: int, sentence: int, text: str, fmt: str, sample_rate: int) -> dict[str, object]:
    event: dict[str, object] = {"type": "audio.start", "utterance_index": utterance, "sentence_index": sentence,
                             "sentence_text": text, "format": fmt}
    if fmt == "pcm":  # raw samples say nothing about themselves (vllm-omni describes streamed pcm the same way)
        event.update(sample_rate=sample_rate, channels=1)
    return event


def audio_done(utterance: int, sentence: int, total_bytes: int, error: bool) -> dict[str, object]:
    return {"type": "audio.done", "utterance_index": utterance, "sentence_index": sentence,
            "total_bytes": total_bytes, "error": error}


def session_done(utterance: int, sentences: int) -> dict[str, object]:
    return {"type": "session.done", "utterance_index": utterance, "total_sentences": sentences}
