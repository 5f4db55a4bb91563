"""Request bodies of the public routes, validated by pydantic, and their errors in OpenAI's words."""

from __future__ import annotations

from typing import Any, Literal, TypeVar

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ..errors import RequestInvalid

ModelT = TypeVar("ModelT", bound=BaseModel)
AudioFormatName = Literal["mp3", "opus", "aac", "flac", "wav", "pcm"]
EMOTIONS = ("happy", "angry", "sad", "afraid", "disgusted", "melancholic", "surprised", "calm")
MAX_EMOTION_SUM = 1.5  # index-tts-vllm answers 500 above this; we answer 400 first


class VoiceId(BaseModel):
    model_config = ConfigDict(strict=True)

    id: str


class SpeechRequest(BaseModel):
    """OpenAI's create-speech body. Unknown fields are ignored, as SDKs may add new ones."""

    model_config = ConfigDict(extra="ignore", strict=True, allow_inf_nan=False)  # strict: "yes" is no boolean

    model: str = Field(min_length=1)
    input: str
    voice: str | VoiceId
    instructions: str | None = Field(None, max_length=4096)
    response_format: AudioFormatName = "mp3"
    speed: float = Field(1.0, ge=0.25, le=4.0)
    stream_format: Literal["audio", "sse"] = "audio"

    @property
    def voice_name(self) -> str:
        return self.voice.id if isinstance(self.voice, VoiceId) else self.voice


class EmotionSpec(BaseModel):
    """IndexTTS2 emotion: at most one of ``audio`` (a configured voice), ``vector`` or ``text``."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)

    audio: str | None = None
    weight: float = Field(1.0, ge=0.0, le=1.0)
    vector: list[float] | None = None
    text: str | None = Field(None, max_length=4096)
    random: bool = False

    @field_validator("vector")
    @classmethod
    def _vector(cls, value: list[float] | None) -> list[float] | None:
        if value is None:
            return value
        if len(value) != len(EMOTIONS):
            raise ValueError(f"must have {len(EMOTIONS)} values ({', '.join(EMOTIONS)})")
        if any(not (0 <= v <= 1) for v in value):  # also refuses NaN
            raise ValueError("each value must be between 0 and 1")
        if sum(value) > MAX_EMOTION_SUM:
            raise ValueError(f"the values must sum to at most {MAX_EMOTION_SUM}")
        return value

    @model_validator(mode="after")
    def _one_source(self) -> EmotionSpec:
        given = [name for name in ("audio", "vector", "text") if getattr(self, name) is not None]
        if len(given) > 1:
            raise ValueError(f"give only one of audio, vector or text (got {', '.join(given)})")
        return self


class SynthesizeRequest(BaseModel):
    """The native ``POST /synthesize`` body."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)

    text: str
    voice: str = Field(min_length=1)
    model: str | None = None
    emotion: EmotionSpec | None = None
    speed: float = Field(1.0, ge=0.25, le=4.0)
    max_text_tokens_per_sentence: int | None = Field(None, ge=1, le=1000)
    format: AudioFormatName = "wav"
    sample_rate: int | None = Field(None, ge=8000, le=48000)
    stream: bool = False
    lang: str | None = Field(None, min_length=1, max_length=24, validation_alias=AliasChoices("lang", "language"),
                             description="the text's language for IndexTTS-2.5 (zh, en, ja, es, yue, ...); "
                                         "default: guessed from the text")


def _absent_not_null(schema: dict[str, Any]) -> None:
    schema.pop("default", None)  # the None default means "absent"; a client may not send null


def _eight_or_absent(schema: dict[str, Any]) -> None:
    _absent_not_null(schema)
    schema.update(minItems=8, maxItems=8)  # the handler refuses other lengths, naming the field


class TtsUrlRequest(BaseModel):
    """index-tts-vllm's ``/tts_url`` body (v2, or v1's ``audio_paths``), forwarded to a node unchanged.

    Strict types, because the node gets the body as sent and crashes (HTTP 500) on a string where it
    reads a number: that must be the client's 400, not a failure counted against the node.
    """

    model_config = ConfigDict(extra="allow", strict=True, allow_inf_nan=False, json_schema_extra={
        "anyOf": [{"required": ["spk_audio_path"]}, {"required": ["audio_paths"]}, {"required": ["audio_path"]}]})

    # documented as the handler checks it (an empty text is a 400 naming it), so generated clients send text
    text: str = Field(json_schema_extra={"minLength": 1})
    spk_audio_path: str | None = Field(None, description="speaker reference audio: a path on the node (v2)")
    # absent or a list, never null: a v1 node indexes it without a None check (as a v2 node does emo_vec)
    audio_paths: list[str] = Field(default_factory=list, min_length=1, description="speaker reference paths (v1)",
                                   json_schema_extra=_absent_not_null)
    audio_path: str | None = Field(None, description="speaker reference path (v1)")
    emo_control_method: int = Field(0, ge=0, le=3, description="0 speaker audio, 1 emo_ref_path, 2 emo_vec, "
                                                                "3 emo_text")
    emo_ref_path: str | None = None
    emo_weight: float = 1.0
    emo_vec: list[float] = Field(default_factory=list,
                                 description="8 weights (happy ... calm), each 0..1, sum at most 1.5",
                                 json_schema_extra=_eight_or_absent)
    emo_text: str | None = None
    emo_random: bool = False
    max_text_tokens_per_sentence: int = Field(120, ge=1)
    seed: int | None = Field(None, description="v1 only")


def check_text_everywhere(data: Any, path: str = "") -> None:
    """Refuse lone UTF-16 surrogates and NUL in every key and string of a decoded JSON body, naming where.

    JSON's ``"\\ud800"`` decodes to a lone surrogate: not text, it cannot be encoded (a node, a log line or a
    cache key would fail on it later, as a 500); NUL ends strings in C libraries (espeak, file paths).
    """
    if isinstance(data, str):
        bad = _bad_char(data)
        if bad is not None:
            raise RequestInvalid(f"Invalid '{path or 'body'}': {data[bad]!a} at position {bad} is not text.",
                                 param=path or None, code="invalid_text")
    elif isinstance(data, dict):
        for key, value in data.items():
            where = f"{path}.{key}" if path else str(key)
            if _bad_char(key) is not None:
                shown = key.encode("ascii", "backslashreplace").decode("ascii")[:64]
                raise RequestInvalid(f"Invalid key '{shown}'{f' in {path!r}' if path else ''}: it is not text.",
                                     param=shown, code="invalid_text")
            check_text_everywhere(value, where)
    elif isinstance(data, list):
        for i, value in enumerate(data):
            check_text_everywhere(value, f"{path}[{i}]")


def _bad_char(text: str) -> int | None:
    if text.isascii():
        index = text.find("\x00")
        return None if index < 0 else index
    for i, ch in enumerate(text):
        if ch == "\x00" or "\ud800" <= ch <= "\udfff":
            return i
    return None


def parse(model: type[ModelT], data: Any) -> ModelT:
    """Validate ``data``; the first problem becomes a ``RequestInvalid`` naming its field."""
    if not isinstance(data, dict):
        raise RequestInvalid("The request body must be a JSON object.", param=None, code="invalid_type")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise invalid_from(exc) from None


def invalid_from(exc: ValidationError) -> RequestInvalid:
    err = exc.errors(include_url=False)[0]
    # union members and validators appear in the location as tags ("str", "VoiceId", "function-after[...]")
    loc = [str(p) for p in err["loc"]
           if not isinstance(p, int) and str(p) not in ("str", "VoiceId") and not str(p).startswith("function-")]
    param = ".".join(loc) or None
    kind, ctx = err["type"], err.get("ctx") or {}
    got = err.get("input")
    if param is None:  # a problem with the body as a whole (a model-level check)
        return RequestInvalid(f"Invalid request body: {str(err['msg']).removeprefix('Value error, ')}.", param=None)
    if kind == "missing":
        return RequestInvalid(f"Missing required parameter: '{param}'.", param=param, code="missing_required_parameter")
    if kind == "extra_forbidden":
        return RequestInvalid(f"Unrecognized request argument supplied: '{param}'.", param=param,
                              code="unknown_parameter")
    if kind == "literal_error":
        return RequestInvalid(f"Invalid value: {got!r}. Supported values are: {ctx.get('expected')}.", param=param)
    if kind in ("greater_than_equal", "less_than_equal", "greater_than", "less_than"):
        return RequestInvalid(f"Invalid '{param}': {err['msg'].lower()}, got {got!r}.", param=param)
    if kind.endswith("_type") or kind.endswith("_parsing"):
        return RequestInvalid(f"Invalid type for '{param}': {err['msg'].lower()}.", param=param, code="invalid_type")
    return RequestInvalid(f"Invalid '{param}': {str(err['msg']).removeprefix('Value error, ')}.", param=param)
