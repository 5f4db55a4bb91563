"""Shapes passed between the API, the router and backends."""

from __future__ import annotations

import enum
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from .logs import REDACTOR

AudioChunks = AsyncIterator[bytes]


@runtime_checkable
class AsyncClosable(Protocol):
    """What can be closed before its end: an async generator, ``router.body.ReadAhead``."""

    def aclose(self) -> Awaitable[None]: ...


async def aclose_chunks(chunks: AudioChunks) -> None:
    """Stop ``chunks`` early, giving its endpoint's connection back; an iterator without ``aclose`` (a plugin's
    own) has nothing to give back."""
    if isinstance(chunks, AsyncClosable):
        await chunks.aclose()


class EmotionMethod(enum.IntEnum):
    """IndexTTS2's emotion sources, numbered as index-tts-vllm's ``emo_control_method``."""

    SPEAKER = 0
    REFERENCE_AUDIO = 1
    VECTOR = 2
    TEXT = 3


@dataclass
class Emotion:
    """IndexTTS2 emotion controls. Backends without emotion control ignore ``SPEAKER`` and refuse others."""

    method: EmotionMethod = EmotionMethod.SPEAKER
    ref_path: str | None = None
    weight: float = 1.0
    vector: list[float] | None = None
    text: str | None = None
    random: bool = False
    #: the configured parameters of the voice named as the emotion reference (``ref_path`` is its
    #: ``spk_audio_path``), for backends that take the reference in another form (vllm-omni's URLs)
    ref_params: dict[str, Any] = field(default_factory=dict)


@dataclass
class SynthesisRequest:
    """One synthesis as the router sees it, whichever API it came in through.

    ``voice_params`` are the configured parameters of ``voice`` (``spk_audio_path``, ``character``,
    ``espeak``...); each backend type reads the keys it understands. ``passthrough`` carries the
    untouched JSON body of the ``/tts_url`` drop-in route, which index-tts-vllm backends forward as is.
    """

    text: str
    model: str
    voice: str | None = None
    voice_params: dict[str, Any] = field(default_factory=dict)
    emotion: Emotion = field(default_factory=Emotion)
    speed: float = 1.0
    #: the format the client wants in the end; a backend may produce another and the API transcodes
    response_format: str = "wav"
    max_text_tokens_per_sentence: int | None = None
    #: the text's language as the client gave it (IndexTTS-2.5); None: backends that need one guess it
    lang: str | None = None
    request_id: str = ""
    passthrough: dict[str, Any] | None = None
    #: seconds the client will wait (its deadline header); it can only shorten the model's deadline
    timeout: float | None = None
    #: the model's ``fallback_voice`` (name, parameters): what a pool of the route that cannot speak ``voice``
    #: speaks instead; None: such a pool is skipped (a cloned voice is never replaced without being asked)
    fallback_voice: tuple[str, dict[str, Any]] | None = None


@dataclass
class AudioResponse:
    """What a backend returns once the endpoint has accepted the request (status and headers read).

    The body is not read yet: ``chunks`` yields it as the endpoint sends it, so the router can still
    retry elsewhere until the first byte goes to the client. ``close`` releases the connection when
    the consumer stops early.
    """

    format: str
    chunks: AudioChunks
    sample_rate: int | None = None
    content_type: str | None = None
    content_length: int | None = None
    close: Callable[[], Awaitable[None]] | None = None

    async def aclose(self) -> None:
        if self.close is not None:
            await self.close()


@dataclass
class HealthReport:
    """The result of one active health check of an endpoint."""

    healthy: bool
    detail: str = ""
    data: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:  # a node's words, shown by the admin API: its secrets masked as in logs
        self.detail = REDACTOR.redact(self.detail)
