"""What one realtime session did, for its access-log line and the session metrics.

One JSON line per session on ``speech_router.access`` when it ends (as each HTTP request has one), with
``json.dumps`` so nothing a client sends can split it or forge a field; the client key's name, never the key.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone

from ..api.observe import MAX_FIELD_CHARS

log = logging.getLogger("speech_router.access")


@dataclass(eq=False)
class SessionReport:
    """Counters of one session; ``outcome`` is a label of ``speech_router_realtime_sessions_total``."""

    request_id: str
    path: str
    started: float = field(default_factory=time.perf_counter)
    wall: float = field(default_factory=time.time)
    client: str | None = None
    priority: str | None = None
    model: str = ""
    voice: str | None = None
    outcome: str = "client_left"
    close_code: int | None = None
    utterances: int = 0
    sentences: int = 0
    failed: int = 0
    chars: int = 0
    attempts: int = 0
    endpoints: set[str] = field(default_factory=set)
    first_audio_s: float | None = None  # the first utterance's
    max_gap_s: float = 0.0
    audio_seconds: float = 0.0
    bytes: int = 0

    def line(self) -> str:
        record: dict[str, object] = {
            "ts": datetime.fromtimestamp(self.wall, timezone.utc).isoformat(timespec="milliseconds"),
            "request_id": self.request_id,
            "method": "WEBSOCKET",
            "path": self.path[:256],
            "status": 101,  # every session is accepted; a refusal is its close code
            "outcome": self.outcome,
            "close_code": self.close_code,
            "client": self.client,
            "priority": self.priority,
            "model": self.model or None,
            "voice": self.voice[:MAX_FIELD_CHARS] if self.voice else None,
            "chars": self.chars,
            "utterances": self.utterances,
            "sentences": self.sentences,
            "failed_sentences": self.failed,
            "attempts": self.attempts,
            "endpoints": sorted(self.endpoints),
            "first_audio_s": _round(self.first_audio_s),
            "max_gap_s": _round(self.max_gap_s),
            "audio_s": _round(self.audio_seconds),
            "total_s": _round(time.perf_counter() - self.started),
            "bytes": self.bytes,
        }
        return json.dumps(record, ensure_ascii=True, separators=(",", ":"))

    def log(self) -> None:
        if log.isEnabledFor(logging.INFO):
            log.info(self.line())


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)
