"""A session's ``session.config`` as the router's request, checked once before any text, as an HTTP request is.

Each sentence is then that request with its own text (``SessionSpeech.sentence``), dispatched through the
routing core as a fan-out segment is, so every backend type serves realtime sessions.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from ..api.audio_out import check_format
from ..api.facts import ModelFacts, check_capabilities
from ..api.speech import emotion_from, known_model
from ..api.state import AppState
from ..cache.speech import SpeechCache
from ..errors import RequestInvalid
from ..types import Emotion, EmotionMethod, SynthesisRequest
from ..voices.resolve import resolve_voice
from .protocol import SessionConfig
from .text import Granularity


@dataclass(frozen=True)
class SessionSpeech:
    """What every sentence of the session is synthesized with, until the next ``session.config``."""

    sreq: SynthesisRequest  # without text
    fmt: str
    granularity: Granularity
    priority: str
    #: the model's segment rules (``models.<name>.fanout``): the same cuts as a long text gets
    max_chars: int
    min_chars: int
    max_parallel: int
    cache: SpeechCache | None

    @property
    def model(self) -> str:
        return self.sreq.model

    def sentence(self, text: str, request_id: str) -> SynthesisRequest:
        return dataclasses.replace(self.sreq, text=text, request_id=request_id,
                                   emotion=dataclasses.replace(self.sreq.emotion))


def session_speech(state: AppState, config: SessionConfig, *, priority: str, request_id: str) -> SessionSpeech:
    """Check ``config`` against the configuration and the model's route; ``RequestInvalid`` names the field."""
    settings = state.settings
    model = config.model or next(iter(settings.models))
    known_model(settings, model)
    if config.instructions is not None and config.emotion is not None:
        raise RequestInvalid("Give 'instructions' or 'emotion', not both.", param="emotion")
    params = resolve_voice(settings, config.voice)
    if config.emotion is not None:
        emotion = emotion_from(settings, config.emotion)
    elif config.instructions:
        emotion = Emotion(EmotionMethod.TEXT, text=config.instructions)
    else:
        emotion = Emotion()
    fmt = config.response_format
    sreq = SynthesisRequest(text="", model=model, voice=config.voice, voice_params=params, emotion=emotion,
                            speed=1.0 if config.speed is None else config.speed, response_format=fmt,
                            lang=config.language, request_id=request_id)
    check_format(fmt)
    state.router.check_voice(model, config.voice, params)
    if sreq.speed != 1.0 or emotion.method != EmotionMethod.SPEAKER:
        check_capabilities(ModelFacts.of(state.router, model), sreq)
    fanout = settings.models[model].fanout
    cache = state.cache if state.cache.segments_enabled(settings, sreq) else None
    return SessionSpeech(sreq, fmt, config.split_granularity, priority, fanout.max_segment_chars,
                         fanout.min_segment_chars, fanout.max_parallel, cache)
