"""speech-router: one stable URL in front of a fleet of text-to-speech servers.

Public API for plugin authors: ``hookimpl``, ``Backend``, ``Capabilities``, ``SynthesisRequest``,
``AudioResponse``, ``HealthReport`` and the error classes.
"""

from .backends.base import Backend, BackendContext, Capabilities
from .errors import (
    BackendError,
    BackendFailed,
    BackendOverloaded,
    BackendRejected,
    BackendTimeout,
    BackendUnavailable,
    ConfigError,
    NoHealthyEndpoint,
    RequestInvalid,
    SpeechRouterError,
)
from .plugins.hookspecs import hookimpl
from .types import AudioResponse, Emotion, EmotionMethod, HealthReport, SynthesisRequest

__version__ = "0.1.0"

__all__ = [
    "AudioResponse", "Backend", "BackendContext", "BackendError", "BackendFailed", "BackendOverloaded",
    "BackendRejected", "BackendTimeout", "BackendUnavailable", "Capabilities", "ConfigError", "Emotion",
    "EmotionMethod", "HealthReport", "NoHealthyEndpoint", "RequestInvalid", "SpeechRouterError", "SynthesisRequest",
    "hookimpl",
]
