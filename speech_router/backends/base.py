"""The Backend interface every backend type implements (built-in or from a plugin).

A backend object talks to one *endpoint*. It turns a ``SynthesisRequest`` into an
``AudioResponse`` and classifies every failure as one of ``speech_router.errors.BackendError``'s
subclasses, so the router never sees a client library's exceptions.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel, ConfigDict

from ..types import AudioResponse, HealthReport, SynthesisRequest

if TYPE_CHECKING:
    from ..config.models import EndpointConfig, PoolConfig
    from .http import HttpSessions


@dataclass(frozen=True)
class Capabilities:
    """What a backend type can do; the router and API read these instead of guessing."""

    #: formats the endpoint can produce itself; anything else is transcoded by the router
    formats: frozenset[str] = frozenset({"wav"})
    #: the endpoint sends audio while it is still synthesizing
    streaming: bool = False
    #: IndexTTS2 emotion controls (reference audio, vector, text)
    emotion: bool = False
    #: the endpoint honours ``speed`` itself
    speed: bool = False
    #: the speeds it honours (IndexTTS-2.5: 0.5-2.0); others are refused before dispatch
    speed_range: tuple[float, float] = (0.25, 4.0)
    #: the voice parameter keys this type needs; a voice without any of them cannot be served
    voice_keys: tuple[str, ...] = ()
    #: endpoints of this type need a ``url``
    needs_url: bool = True
    #: the endpoint understands index-tts-vllm's ``/tts_url`` body (the drop-in route)
    tts_url: bool = False
    #: paths the backend appends to an endpoint's URL; the config loader refuses a URL that already ends with one
    request_paths: tuple[str, ...] = ()


@dataclass
class BackendContext:
    """Things the host hands every backend: its place in the config and shared resources."""

    pool_name: str
    pool: PoolConfig
    sessions: HttpSessions | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class Backend(ABC):
    """One endpoint of a backend type.

    Subclasses set ``type`` (the YAML ``type:``) and ``capabilities``, may define a nested
    ``Options`` model for their pool-level YAML keys, and implement ``synthesize`` and ``health``.
    """

    type: ClassVar[str]
    #: the type's; an endpoint may narrow its own (the formats its pool's options allow, its node's version)
    capabilities: Capabilities = Capabilities()

    class Options(BaseModel):
        """Pool-level YAML keys specific to this backend type (none by default)."""

        model_config = ConfigDict(extra="forbid")

    def __init__(self, endpoint: EndpointConfig, options: BaseModel, context: BackendContext) -> None:
        self.endpoint = endpoint
        self.options = options
        self.context = context

    @classmethod
    def expand_endpoints(cls, pool_name: str, pool: PoolConfig,
                         options: BaseModel) -> list[tuple[EndpointConfig, BaseModel]]:
        """The endpoints to build for a pool, each with the options its backend gets.

        By default the configured endpoints (or one in-process endpoint named ``<pool>-0``), all with
        the pool's options. Types whose endpoints come from elsewhere override it (one per GPU device).
        """
        from ..config.models import EndpointConfig

        return [(ep, options) for ep in pool.endpoints or [EndpointConfig(name=f"{pool_name}-0")]]

    @property
    def name(self) -> str:
        """The endpoint's name, as used in logs, metric labels and response headers."""
        return self.endpoint.name or ""

    async def open(self) -> None:  # noqa: B027 - optional: most types have nothing to open
        """Acquire resources (sessions, engines). Called once before the first request."""

    async def aclose(self) -> None:  # noqa: B027 - optional: most types have nothing to release
        """Release resources. Called once on shutdown; must not raise."""

    @abstractmethod
    async def synthesize(self, request: SynthesisRequest) -> AudioResponse:
        """Start a synthesis; return once the endpoint accepted it. Raise ``BackendError`` subclasses."""

    @abstractmethod
    async def health(self) -> HealthReport:
        """Check the endpoint actively (e.g. ``GET /health``). Must not raise for an unreachable endpoint."""

    def supports_voice(self, voice_params: dict[str, Any]) -> bool:
        """Whether a configured voice has what this backend needs."""
        keys = self.capabilities.voice_keys
        return not keys or any(voice_params.get(k) for k in keys)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, url={self.endpoint.url!r})"
