"""The long-form jobs API's bodies: what a client submits (validated), and what it gets back (documented).

The answers are built by ``speech_router.jobs.view``; these models describe them in ``/openapi.json`` and the
property-based test checks every answer against them.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from .schemas import AudioFormatName, EmotionSpec, VoiceId

MAX_METADATA = 16


class JobItemRequest(BaseModel):
    """One item of a job: its text, and what it changes from the job's voice, emotion, speed and language."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)

    input: str
    voice: str | VoiceId | None = None
    instructions: str | None = Field(None, max_length=4096)
    emotion: EmotionSpec | None = None
    speed: float | None = Field(None, ge=0.25, le=4.0)
    lang: str | None = Field(None, min_length=1, max_length=24)


class JobRequest(BaseModel):
    """``POST /v1/audio/speech/jobs``: the speech request's fields with one long ``input``, or ``items``."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)

    model: str = Field(min_length=1)
    input: str | None = Field(None, description="the whole text (or give items)")
    items: list[JobItemRequest] | None = Field(None, min_length=1, description="texts spoken one after another "
                                                                               "(chapters, a dialogue's lines)")
    voice: str | VoiceId | None = Field(None, description="every item's voice, unless the item names its own")
    instructions: str | None = Field(None, max_length=4096)
    emotion: EmotionSpec | None = None
    speed: float = Field(1.0, ge=0.25, le=4.0)
    lang: str | None = Field(None, min_length=1, max_length=24)
    response_format: AudioFormatName = "mp3"
    sample_rate: int | None = Field(None, ge=8000, le=48000)
    webhook_url: str | None = Field(None, min_length=1, max_length=2048,
                                    description="POSTed to (signed) when the job ends; must start with one of "
                                                "jobs.webhooks.url_prefixes")
    metadata: dict[str, str] = Field(default_factory=dict, description="up to 16 keys of your own, given back")

    @model_validator(mode="after")
    def _input_or_items(self) -> JobRequest:
        if (self.input is None) == (self.items is None):
            raise ValueError("give either input or items")
        if len(self.metadata) > MAX_METADATA or any(len(k) > 64 or len(v) > 512 for k, v in self.metadata.items()):
            raise ValueError(f"metadata takes at most {MAX_METADATA} keys of 64 characters, values of 512")
        return self


class JobErrorDetail(BaseModel):
    message: str
    code: str


class JobUrls(BaseModel):
    self: str
    content: str


class JobWebhook(BaseModel):
    url: str
    status: Literal["waiting", "pending", "delivered", "failed"] = Field(
        description="waiting: the job has not ended; pending: being sent; failed: every try was refused")


class JobProgress(BaseModel):
    segments_done: int
    segments_total: int
    characters_done: int
    characters_total: int
    audio_seconds: float


class JobItemStatus(BaseModel):
    index: int
    status: Literal["queued", "running", "succeeded", "failed", "cancelled"]
    characters: int
    segments_done: int
    segments_total: int
    audio_seconds: float
    error: JobErrorDetail | None


JobStatusName = Literal["queued", "running", "succeeded", "failed", "cancelled"]


class JobSummary(BaseModel):
    """A job in a list (and the fields every job object has)."""

    id: str
    object: Literal["speech.job"]
    status: JobStatusName
    model: str
    response_format: str
    created_at: float
    started_at: float | None
    finished_at: float | None
    expires_at: float | None = Field(description="when the job and its audio are deleted (Unix seconds)")
    error: JobErrorDetail | None
    metadata: dict[str, str]
    urls: JobUrls
    webhook: JobWebhook | None


class JobObject(JobSummary):
    """One job: where it stands, item by item."""

    progress: JobProgress
    estimated_seconds_left: float | None = Field(description="from this run's pace; null until it is known")
    items: list[JobItemStatus]


class JobList(BaseModel):
    object: Literal["list"]
    data: list[JobSummary]
    has_more: bool
    last_id: str | None = Field(description="pass as `after` for the next page")


class JobDeleted(BaseModel):
    id: str
    object: Literal["speech.job.deleted"]
    deleted: bool


JOB_MODELS: tuple[type[BaseModel], ...] = (JobRequest, JobObject, JobList, JobDeleted)
