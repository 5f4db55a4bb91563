"""``server.realtime``: the limits of realtime speech sessions (``WS /v1/audio/speech/stream``)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

#: vllm-omni's own limits and timeouts for the same protocol (serving_speech_stream.py)
DEFAULT_CONFIG_TIMEOUT_S = 10.0
DEFAULT_IDLE_TIMEOUT_S = 30.0
DEFAULT_MAX_MESSAGE_BYTES = 128 * 1024
DEFAULT_MAX_BUFFERED_SEGMENTS = 8
#: the most any one message may be, whatever is configured: the WebSocket layer closes (1009) past it
WS_MAX_MESSAGE_BYTES = 1024 * 1024
DEFAULT_MAX_SESSIONS = 256
DEFAULT_MAX_SESSIONS_PER_KEY = 16
DEFAULT_MAX_BUFFERED_CHARS = 16 * 1024
DEFAULT_SENTENCE_HOLD_MS = 15


class RealtimeConfig(BaseModel):
    """Timeouts and bounds of one realtime session, and how many may be open."""

    model_config = ConfigDict(extra="forbid")

    config_timeout: float = Field(DEFAULT_CONFIG_TIMEOUT_S, gt=0, description="seconds for the first session.config")
    idle_timeout: float = Field(DEFAULT_IDLE_TIMEOUT_S, gt=0, description="seconds without progress either way (no "
                                "message from the client, no audio it read) before the session is closed")
    max_sessions: int = Field(DEFAULT_MAX_SESSIONS, ge=1, description="open sessions in all; one more is refused")
    max_sessions_per_key: int = Field(DEFAULT_MAX_SESSIONS_PER_KEY, ge=1,
                                      description="open sessions per client key (when keys are configured)")
    max_message_bytes: int = Field(DEFAULT_MAX_MESSAGE_BYTES, ge=1024, le=WS_MAX_MESSAGE_BYTES,
                                   description="one client message; a larger one ends the session (1009)")
    max_buffered_chars: int = Field(DEFAULT_MAX_BUFFERED_CHARS, ge=256, description="text received and not yet "
                                    "delivered as audio; beyond it the session ends (1008)")
    max_buffered_segments: int = Field(DEFAULT_MAX_BUFFERED_SEGMENTS, ge=1, description="sentences synthesized "
                                       "ahead of the client's reading; later ones wait as text, holding no endpoint")
    sentence_hold_ms: int = Field(DEFAULT_SENTENCE_HOLD_MS, ge=0, le=2000, description="a sentence that ends the "
                                  "text so far is sent this long after its last token when no more text came")
