"""The configuration schema: pydantic models with ``extra="forbid"`` so a typo is an error.

Vocabulary: a *pool* is a named group of *endpoints* of one *backend type*; a *model* is the
name a client sends and maps to a *route*, an ordered list of pools (primary first).
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

DEFAULT_HOST = "0.0.0.0"
DEFAULT_PORT = 8000
DEFAULT_MAX_BODY_BYTES = 1024 * 1024
DEFAULT_MAX_TEXT_CHARS = 4096
DEFAULT_MAX_CONCURRENCY = 4
DEFAULT_CONNECT_TIMEOUT_S = 5.0
DEFAULT_READ_TIMEOUT_S = 300.0
DEFAULT_HEALTH_INTERVAL_S = 10.0
DEFAULT_HEALTH_TIMEOUT_S = 2.0
DEFAULT_VOICE_DIR = "/data/voices"
DEFAULT_QUEUE_TIMEOUT_S = 30.0

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:/-]*$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ServerConfig(_Strict):
    """How the router listens and what it accepts from clients."""

    host: str = DEFAULT_HOST
    port: int = Field(DEFAULT_PORT, ge=0, le=65535)
    max_body_bytes: int = Field(DEFAULT_MAX_BODY_BYTES, gt=0)
    max_text_chars: int = Field(DEFAULT_MAX_TEXT_CHARS, gt=0)
    log_level: str = "info"


class TimeoutConfig(_Strict):
    """Time limits for talking to an endpoint, in seconds."""

    connect: float = Field(DEFAULT_CONNECT_TIMEOUT_S, gt=0)
    read: float = Field(DEFAULT_READ_TIMEOUT_S, gt=0, description="longest silence while reading a response")


class HealthCheckConfig(_Strict):
    """Active health checks (``GET /health`` for index-tts-vllm)."""

    enabled: bool = True
    interval: float = Field(DEFAULT_HEALTH_INTERVAL_S, gt=0)
    timeout: float = Field(DEFAULT_HEALTH_TIMEOUT_S, gt=0)


def _check_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("invalid URL")
    try:
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError:
        raise ValueError("invalid URL") from None
    return value.rstrip("/")


class EndpointConfig(_Strict):
    """One running instance: a URL, or nothing for in-process engines."""

    url: str | None = None
    name: str | None = None
    weight: float = Field(1.0, gt=0)
    max_concurrency: int | None = Field(None, ge=1)
    headers: dict[str, str] = Field(default_factory=dict)
    api_key_env: str | None = None

    @field_validator("url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        return None if value is None else _check_url(value)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str | None) -> str | None:
        if value is not None and not _NAME.match(value):
            raise ValueError("invalid name: use letters, digits and _ . : / -")
        return value


class PoolConfig(BaseModel):
    """A named group of endpoints of one backend type.

    Keys other than these belong to the backend type and are checked against its ``Options``
    model by the loader, so ``api: v1`` sits next to ``type: index-tts-vllm``.
    """

    model_config = ConfigDict(extra="allow")

    type: str
    endpoints: list[EndpointConfig] = Field(default_factory=list)
    max_concurrency: int = Field(DEFAULT_MAX_CONCURRENCY, ge=1, description="default for its endpoints")
    timeouts: TimeoutConfig = Field(default_factory=TimeoutConfig)
    health_check: HealthCheckConfig = Field(default_factory=HealthCheckConfig)
    headers: dict[str, str] = Field(default_factory=dict)
    api_key_env: str | None = None
    max_connections: int = Field(100, ge=1, description="aiohttp connection pool size for the whole pool")
    queue_timeout: float = Field(DEFAULT_QUEUE_TIMEOUT_S, ge=0, description="longest wait for a free endpoint")

    @property
    def options(self) -> dict[str, Any]:
        """The backend-specific keys, as written."""
        return dict(self.model_extra or {})


class ModelConfig(_Strict):
    """A model name clients send, and the route (pools in order) that serves it."""

    pools: list[str] = Field(min_length=1)
    description: str = ""

    @model_validator(mode="before")
    @classmethod
    def _from_list(cls, value: Any) -> Any:
        return {"pools": value} if isinstance(value, (list, str)) else value

    @field_validator("pools", mode="before")
    @classmethod
    def _one_pool(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value


class VoiceConfig(BaseModel):
    """A public voice name and its parameters per backend type.

    ``spk_audio_path`` (IndexTTS2: a file on the GPU node), ``character`` (index-tts-vllm v1),
    ``espeak`` (an espeak-ng voice), ``openai_voice`` (the upstream voice name). Plugins may read
    more keys; the loader rejects keys no registered backend type declares.
    """

    model_config = ConfigDict(extra="allow")

    description: str = ""

    def params(self) -> dict[str, Any]:
        return {k: v for k, v in (self.model_extra or {}).items() if v is not None}


class VoiceDirConfig(_Strict):
    """Voices not listed in ``voices`` resolve to ``<path>/<name><extension>`` on the nodes (seed behaviour)."""

    path: str = DEFAULT_VOICE_DIR
    extension: str = ".wav"


class Settings(_Strict):
    """The whole configuration."""

    server: ServerConfig = Field(default_factory=ServerConfig)
    pools: dict[str, PoolConfig] = Field(min_length=1)
    models: dict[str, ModelConfig] = Field(min_length=1)
    voices: dict[str, VoiceConfig] = Field(default_factory=dict)
    voice_dir: VoiceDirConfig | None = None
    #: where the config came from, for logs ("file examples/x.yaml", "TTS_REMOTE_URL", "embedded default")
    source: str = Field("", exclude=True)

    @field_validator("pools", "models", "voices")
    @classmethod
    def _names(cls, value: dict[str, Any]) -> dict[str, Any]:
        for key in value:
            if not _NAME.match(key):
                raise ValueError(f"invalid name {key!r}: use letters, digits and _ . : / -")
        return value
