"""vllm-omni's ``POST /v1/audio/speech`` checks for IndexTTS-2 and 2.5, in its order and in its words.

1. The body is parsed as ``OpenAICreateSpeechRequest``: unknown top-level keys are dropped silently;
   a wrong type or range is vLLM's validation error (400, type ``Bad Request``, ``param`` the field
   as ``body.speed``); streaming with a format other than pcm or wav is one too.
2. A ``model`` other than the served name is 404 ``NotFoundError`` (no ``model`` is fine).
3. Streaming with a speed other than 1.0 is 400, unless the model controls speed itself (2.5).
4. The IndexTTS adapter's checks: text, a reference (``ref_audio`` or an uploaded voice), its URL
   form, ``max_new_tokens`` 1-4096, ``extra_params`` (``emo_vector`` exactly 8 numbers each 0-1.2,
   booleans, 2.5's ``lang`` and ``text_normalization``) and 2.5's speed 0.5-2.0.
Every error body is ``{"error": {"message", "type", "param", "code": <status>}}``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, ValidationError, model_validator
from starlette.responses import JSONResponse

MAX_NEW_TOKENS = 4096
EMOTION_KEYS = ("emo_audio", "emo_vector", "emo_alpha", "emo_text", "use_emo_text", "use_random")
#: IndexTTS-2.5 language codes (a subset of the checkpoint's list) and the names vllm-omni maps to them
LANGUAGES_25 = frozenset({"en", "zh", "de", "es", "ru", "ko", "fr", "ja", "pt", "tr", "it", "ar", "yue", "zh/en",
                          "en/zh", "common", "zhen"})
LANGUAGE_NAMES = {"english": "en", "chinese": "zh", "mandarin": "zh", "cantonese": "yue", "japanese": "ja",
                  "spanish": "es", "german": "de", "french": "fr", "korean": "ko", "russian": "ru",
                  "portuguese": "pt", "turkish": "tr", "castilian": "es"}
REF_FORMS = "a URL (http/https), base64 data URL (data:...), or file URI (file://...)"
SpeechFormat = Literal["wav", "pcm", "flac", "mp3", "opus"]


class OmniError(Exception):
    """An error answered in vLLM's shape; ``extra`` adds fields (an engine error's ``request_id``)."""

    def __init__(self, status: int, message: str, type_: str = "BadRequestError", param: str | None = None,
                 extra: Mapping[str, object] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param = status, message, type_, param
        self.extra = dict(extra or {})

    def body(self) -> dict[str, object]:
        return {"message": self.message, "type": self.type, "param": self.param, "code": self.status, **self.extra}

    def response(self) -> JSONResponse:
        return JSONResponse({"error": self.body()}, status_code=self.status)


class SpeechBody(BaseModel):
    """The fields of vllm-omni's ``OpenAICreateSpeechRequest`` that IndexTTS reads (others are dropped)."""

    model_config = ConfigDict(extra="ignore")

    input: str
    model: str | None = None
    voice: str | None = Field(None, validation_alias=AliasChoices("voice", "speaker"))
    instructions: str | None = None  # accepted, ignored by IndexTTS
    response_format: SpeechFormat = "wav"
    speed: float | None = Field(1.0, ge=0.25, le=4.0)
    stream_format: Literal["sse", "audio"] | None = None
    stream: bool = False
    language: str | None = None  # accepted, ignored by IndexTTS (2.5 reads extra_params.lang)
    ref_audio: str | list[str] | None = None
    ref_text: str | None = None
    max_new_tokens: int | None = None
    seed: int | None = Field(None, ge=0, le=2**63 - 1)
    extra_params: dict[str, object] | None = None

    @property
    def raw_stream(self) -> bool:
        return self.stream_format == "audio"

    @property
    def sse_stream(self) -> bool:
        return (self.stream or self.stream_format == "sse") and not self.raw_stream

    @property
    def streaming(self) -> bool:
        return self.raw_stream or self.sse_stream

    @property
    def extras(self) -> dict[str, object]:
        return self.extra_params or {}

    @model_validator(mode="after")
    def _streaming_formats(self) -> SpeechBody:
        if self.streaming and self.response_format not in ("pcm", "wav"):
            raise ValueError("Streaming (stream=true, stream_format='audio', or stream_format='sse') requires "
                             f"response_format='pcm' or 'wav'. Got response_format='{self.response_format}'.")
        if self.speed is None:
            self.speed = 1.0
        return self


def parse_body(data: object) -> SpeechBody:
    """The body as FastAPI validates it, or vLLM's 400 validation error."""
    try:
        return SpeechBody.model_validate(data)
    except ValidationError as exc:
        raise validation_error(exc) from None


def validation_error(exc: ValidationError) -> OmniError:
    """vLLM's answer to a request validation error: every error listed, ``param`` the first one's field."""
    errors: list[dict[str, Any]] = [{**e, "loc": ("body", *e["loc"])} for e in exc.errors(include_url=False)]
    for e in errors:
        e.pop("ctx", None)
    param = ".".join(str(p) for p in errors[0]["loc"]) if errors else None
    label = "error" if len(errors) == 1 else "errors"
    message = f"{len(errors)} validation {label}:\n" + "".join(f"  {e}\n" for e in errors)
    return OmniError(400, message.rstrip(), "Bad Request", param)


def invalid_json(detail: str) -> OmniError:
    error = {"type": "json_invalid", "loc": ("body", 0), "msg": "JSON decode error", "input": {},
             "ctx": {"error": detail}}
    return OmniError(400, f"1 validation error:\n  {error}", "Bad Request", "body.0")


def check_model(body: SpeechBody, served: str) -> None:
    if body.model is not None and body.model != served:
        raise OmniError(404, f"The model `{body.model}` does not exist.", "NotFoundError", "model")


def check_streaming(body: SpeechBody, native_speed: bool) -> None:
    if body.streaming and body.speed != 1.0 and not native_speed:
        label = "Streaming" if body.raw_stream else "SSE streaming"
        raise OmniError(400, f"{label} is not supported with speed adjustment. Use a non-streaming request or "
                             "remove the speed parameter.")


def check_indextts(body: SpeechBody, version: str, has_uploaded_voice: bool) -> None:
    """The IndexTTS adapter's ``validate``: 400 with its message for the first problem."""
    problem = _indextts_problem(body, version, has_uploaded_voice)
    if problem:
        raise OmniError(400, problem)


def _indextts_problem(body: SpeechBody, version: str, has_uploaded_voice: bool) -> str | None:
    if not body.input.strip():
        return "Input text cannot be empty"
    if body.ref_audio is None and not has_uploaded_voice:
        return "IndexTTS2 requires 'ref_audio' or an uploaded audio voice for voice cloning"
    if body.ref_audio is not None and not _is_ref_url(body.ref_audio):
        return f"ref_audio must be {REF_FORMS}"
    if body.max_new_tokens is not None and not 1 <= body.max_new_tokens <= MAX_NEW_TOKENS:
        return ("max_new_tokens must be at least 1" if body.max_new_tokens < 1
                else f"max_new_tokens cannot exceed {MAX_NEW_TOKENS}")
    problem = _extras_problem(body.extras)
    if problem or version != "2.5":
        return problem
    problem = _extras_25_problem(body.extras)
    if problem:
        return problem
    if not 0.5 <= (body.speed or 1.0) <= 2.0:
        return "IndexTTS 2.5 speed must be between 0.5 and 2.0"
    return None


def _is_ref_url(value: object) -> bool:
    return isinstance(value, str) and value.startswith(("http://", "https://", "data:", "file://"))


def _number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _extras_problem(extras: Mapping[str, object]) -> str | None:
    if "emo_audio" in extras and not _is_ref_url(extras["emo_audio"]):
        return f"extra_params.emo_audio must be {REF_FORMS}"
    if "emo_vector" in extras:
        vector = extras["emo_vector"]
        if not isinstance(vector, list) or len(vector) != 8:
            return "extra_params.emo_vector must be a list of 8 numbers"
        numbers = [v for v in vector if _number(v)]
        if len(numbers) != len(vector):
            return "extra_params.emo_vector must be a list of 8 finite numbers"
        if not all(isinstance(v, (int, float)) and 0.0 <= v <= 1.2 for v in numbers):
            return "extra_params.emo_vector values must be in [0, 1.2]"
    if "emo_alpha" in extras and not _number(extras["emo_alpha"]):
        return "extra_params.emo_alpha must be a finite number"
    if extras.get("emo_text") is not None and not isinstance(extras["emo_text"], str):
        return "extra_params.emo_text must be a string"
    for key in ("use_emo_text", "use_random"):
        if key in extras and not isinstance(extras[key], bool):
            return f"extra_params.{key} must be a boolean"
    return None


def _extras_25_problem(extras: Mapping[str, object]) -> str | None:
    if "lang" in extras:
        lang = extras["lang"]
        if not isinstance(lang, str):
            return "extra_params.lang must be a string"
        if normalize_lang(lang) is None:
            return (f"Unsupported IndexTTS 2.5 language {lang!r}; expected one of "
                    f"{', '.join(sorted(LANGUAGES_25))}")
    if "text_normalization" in extras and not isinstance(extras["text_normalization"], bool):
        return "extra_params.text_normalization must be a boolean"
    return None


def normalize_lang(lang: str) -> str | None:
    """2.5's language code for ``lang`` (a code or an accepted name), or None when unsupported."""
    value = lang.strip().lower()
    value = LANGUAGE_NAMES.get(value, value)
    return value if value in LANGUAGES_25 else None
