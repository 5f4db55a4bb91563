"""What a job is: its state, what each item asks, and the records the store keeps.

A job is cut into segments at submit time; a segment is the unit of work and of durability: it is either
done (its audio kept) or not, so a resumed job redoes nothing that was finished. States follow OpenAI's
Batch API in fewer words: ``queued`` (waiting for a router to work it), ``running``, and three ends,
``succeeded`` (every item has audio), ``failed`` (an item failed, or the job could not go on) and
``cancelled``.
"""

from __future__ import annotations

import enum
import secrets
from dataclasses import asdict, dataclass, field
from typing import Any

from ..types import Emotion, EmotionMethod

#: a job id: made here, checked before it names a file
ID_PREFIX = "job_"
ID_HEX = 24


class JobState(str, enum.Enum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def open(self) -> bool:
        return self in (JobState.QUEUED, JobState.RUNNING)


def new_job_id() -> str:
    return ID_PREFIX + secrets.token_hex(ID_HEX // 2)


def valid_job_id(job_id: str) -> bool:
    hexpart = job_id.removeprefix(ID_PREFIX)
    return job_id.startswith(ID_PREFIX) and len(hexpart) == ID_HEX and all(c in "0123456789abcdef" for c in hexpart)


@dataclass
class ItemSpec:
    """One item as submitted, its voice and emotion already resolved (a reload does not change a running book)."""

    voice: str | None
    voice_params: dict[str, Any] = field(default_factory=dict)
    emotion: dict[str, Any] = field(default_factory=dict)  # ``Emotion`` as JSON
    speed: float = 1.0
    lang: str | None = None

    def emotion_value(self) -> Emotion:
        data = dict(self.emotion)
        return Emotion(**{**data, "method": EmotionMethod(data.get("method", 0))})

    @staticmethod
    def emotion_json(emotion: Emotion) -> dict[str, Any]:
        data = asdict(emotion)
        data["method"] = int(emotion.method)
        return data


@dataclass
class JobSpec:
    """What the whole job's audio is: its format, rate and the silence between segments; who hears of its end."""

    response_format: str = "mp3"
    sample_rate: int | None = None
    items: int = 1
    silence_ms: int = 200
    webhook_url: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)


@dataclass
class NewJob:
    """A job ready to keep: ``texts[i]`` are item i's segments, in order."""

    owner: str
    model: str
    spec: JobSpec
    items: list[ItemSpec]
    texts: list[list[str]]
    estimated_bytes: int
    id: str = field(default_factory=new_job_id)

    @property
    def chars(self) -> int:
        return sum(len(t) for segments in self.texts for t in segments)


@dataclass
class JobRecord:
    """A job as stored. Times are Unix seconds (they outlive the process); ``run_*`` mark when the current run
    began and how many characters were done then, for the estimate of the time left."""

    id: str
    owner: str
    model: str
    state: JobState
    spec: JobSpec
    created: float
    chars: int
    segments: int
    reserved_bytes: int = 0
    stored_bytes: int = 0
    started: float | None = None
    finished: float | None = None
    expires: float | None = None
    error: dict[str, str] | None = None
    webhook: str | None = None  # None, "pending", "delivered" or "failed"
    run_started: float | None = None
    run_chars: int = 0


@dataclass
class ItemProgress:
    """One item's progress, from its segments."""

    index: int
    chars: int
    segments: int
    segments_done: int = 0
    chars_done: int = 0
    audio_seconds: float = 0.0
    error: dict[str, str] | None = None


@dataclass(frozen=True)
class Segment:
    """One unit of work: item ``item``'s segment ``index``."""

    item: int
    index: int
    text: str


@dataclass(frozen=True)
class DoneSegment:
    """A finished segment's audio as kept: ``size`` bytes of mono int16 PCM at ``rate``."""

    item: int
    index: int
    size: int
    rate: int
