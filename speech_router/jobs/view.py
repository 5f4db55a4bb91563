"""A job as clients see it: the JSON of ``GET /v1/audio/speech/jobs/{id}``, its list entry, its webhook event.

The shapes are documented by ``speech_router.api.job_schemas`` (``JobObject``); a test holds them together.
"""

from __future__ import annotations

from typing import Any

from .model import ItemProgress, JobRecord, JobState

JOBS_PATH = "/v1/audio/speech/jobs"


def job_urls(job_id: str) -> dict[str, str]:
    return {"self": f"{JOBS_PATH}/{job_id}", "content": f"{JOBS_PATH}/{job_id}/content"}


def job_view(record: JobRecord, progress: list[ItemProgress] | None, now: float) -> dict[str, Any]:
    """The job object; ``progress`` None leaves out what only the status of one job carries (items, estimate)."""
    spec = record.spec
    view: dict[str, Any] = {
        "id": record.id, "object": "speech.job", "status": record.state.value, "model": record.model,
        "response_format": spec.response_format, "created_at": record.created, "started_at": record.started,
        "finished_at": record.finished, "expires_at": record.expires, "error": record.error,
        "metadata": spec.metadata, "urls": job_urls(record.id),
        "webhook": None if spec.webhook_url is None else {"url": spec.webhook_url,
                                                          "status": record.webhook or "waiting"},
    }
    if progress is None:
        return view
    chars_done = sum(p.chars_done for p in progress)
    view["progress"] = {
        "segments_done": sum(p.segments_done for p in progress), "segments_total": record.segments,
        "characters_done": chars_done, "characters_total": record.chars,
        "audio_seconds": round(sum(p.audio_seconds for p in progress), 3),
    }
    view["estimated_seconds_left"] = _time_left(record, chars_done, now)
    view["items"] = [_item(record, p) for p in progress]
    return view


def _item(record: JobRecord, p: ItemProgress) -> dict[str, Any]:
    if p.error is not None:
        status = JobState.FAILED.value
    elif p.segments_done == p.segments and record.state in (JobState.SUCCEEDED, JobState.FAILED):
        status = JobState.SUCCEEDED.value  # its audio is there (``?item=``)
    elif record.state.open:
        status = JobState.RUNNING.value if p.segments_done else JobState.QUEUED.value
    else:
        status = record.state.value
    return {"index": p.index, "status": status, "characters": p.chars, "segments_done": p.segments_done,
            "segments_total": p.segments, "audio_seconds": round(p.audio_seconds, 3), "error": p.error}


def _time_left(record: JobRecord, chars_done: int, now: float) -> float | None:
    """From this run's pace: characters done since it began over the time it has run (None until known)."""
    if record.state is not JobState.RUNNING or record.run_started is None:
        return 0.0 if not record.state.open else None
    done_now = chars_done - record.run_chars
    elapsed = now - record.run_started
    if done_now <= 0 or elapsed <= 0:
        return None
    return round((record.chars - chars_done) * elapsed / done_now, 1)


def webhook_event(record: JobRecord, progress: list[ItemProgress], now: float) -> dict[str, Any]:
    """The body POSTed to a job's webhook when it ends."""
    return {"type": f"speech.job.{record.state.value}", "timestamp": now, "data": job_view(record, progress, now)}
