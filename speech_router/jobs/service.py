"""``Jobs``: what the API asks of long-form jobs: submit, look up, list, cancel or delete, and find the audio.

Off (every call answers 400 ``not_configured``) while ``jobs.directory`` is not set; on, it owns the store,
the files and the runner for the app's lifetime. A job belongs to the client key that submitted it (its
name; ``anonymous`` while keys are off): another key gets 404 for it, as for a job that never was.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from ..cache.speech import SpeechCache
from ..config.models import JobsConfig
from ..errors import RequestInvalid, Unavailable
from ..metrics import Metrics
from ..router.dispatch import Router
from ..text.chars import is_wide
from .files import JobFiles
from .model import JobRecord, JobState, NewJob, valid_job_id
from .runner import JobRunner
from .sqlite import SqliteJobStore
from .store import Admission, LimitExceeded
from .view import job_view

log = logging.getLogger("speech_router.jobs")

#: what a job is expected to keep, per character, until it ends: speech runs up to ~0.25 s per Chinese
#: character and ~0.08 s per other one, kept as 24 kHz 16-bit PCM (the joined file comes on top)
SECONDS_PER_WIDE_CHAR = 0.25
SECONDS_PER_CHAR = 0.08
PCM_BYTES_PER_SECOND = 2 * 24_000
#: joined file size against its PCM
FORMAT_RATIO = {"wav": 1.0, "pcm": 1.0, "flac": 0.7, "mp3": 0.25, "opus": 0.25, "aac": 0.25}
RETRY_LIMIT_S = 60


class JobsOff(RequestInvalid):
    def __init__(self) -> None:
        super().__init__("Long-form jobs are off on this router: its config sets no jobs.directory.", param=None,
                         code="not_configured")


class JobsBroken(Unavailable):
    """``jobs.directory`` is set but cannot be used (its disk or its rights): said at start-up, and to clients."""

    code = "jobs_unavailable"


class JobNotFound(RequestInvalid):
    status_code = 404

    def __init__(self, job_id: str) -> None:
        super().__init__(f"No job {job_id[:64]!r} (it never was, was deleted, expired, or belongs to another key).",
                         param="job_id", code="job_not_found")


class JobNotDone(RequestInvalid):
    status_code = 409


class JobLimit(Unavailable):
    """A client key's limit on open jobs or kept bytes (429)."""

    status_code = 429

    def __init__(self, message: str, code: str) -> None:
        super().__init__(message, retry_after=RETRY_LIMIT_S)
        self.code = code


class JobStorageFull(Unavailable):
    """The router's disk for jobs (``jobs.max_disk_bytes`` or ``jobs.min_free_disk_bytes``) cannot take the job."""

    status_code = 507
    code = "insufficient_storage"


def estimate_bytes(texts: list[list[str]], fmt: str, silence_ms: int) -> int:
    """Bytes a job may keep at its largest: its segments' PCM plus its joined files (twice for several items)."""
    seconds = sum(SECONDS_PER_WIDE_CHAR if is_wide(c) else SECONDS_PER_CHAR for item in texts for t in item for c in t)
    seconds += silence_ms / 1000 * sum(len(item) for item in texts)
    pcm = int(seconds * PCM_BYTES_PER_SECOND)
    return pcm + int(pcm * FORMAT_RATIO.get(fmt, 1.0) * (2 if len(texts) > 1 else 1))


class Jobs:
    def __init__(self, router: Router, metrics: Metrics, cache: SpeechCache | None = None,
                 env: Mapping[str, str] | None = None, now: Callable[[], float] = time.time) -> None:
        self.router = router
        self.metrics = metrics
        self.now = now
        directory = router.settings.jobs.directory
        self.directory = Path(directory) if directory else None
        self.store: SqliteJobStore | None = None
        self.files: JobFiles | None = None
        self.runner: JobRunner | None = None
        #: why jobs are unavailable although configured (the directory cannot be written), else None
        self.broken: str | None = None
        if self.directory is not None:
            self.store, self.files = SqliteJobStore(self.directory), JobFiles(self.directory)
            secret = (env or {}).get(router.settings.jobs.webhooks.secret_env) or None
            self.runner = JobRunner(self.store, self.files, router, metrics, cache, now, secret)

    def __repr__(self) -> str:
        return f"Jobs(directory={str(self.directory) if self.directory else None!r})"

    @property
    def config(self) -> JobsConfig:
        return self.router.settings.jobs

    def start(self) -> None:
        if self.directory is not None:
            try:
                self.directory.mkdir(parents=True, exist_ok=True)
                probe = self.directory / ".writable"
                probe.write_bytes(b"")
                probe.unlink()
            except OSError as exc:
                self.broken = f"jobs.directory {str(self.directory)!r} cannot be used ({type(exc).__name__})"
                log.error("long-form jobs are unavailable: %s", self.broken)
                return
        if self.runner is not None:
            if self.config.webhooks.url_prefixes and self.runner.finisher.key is None:
                log.warning("jobs.webhooks.url_prefixes is set but $%s is empty: webhooks are not sent",
                            self.config.webhooks.secret_env)
            self.runner.start()

    async def aclose(self) -> None:
        if self.runner is not None:
            await self.runner.aclose()
        if self.store is not None:
            await self.store.aclose()

    def require(self) -> None:
        """``JobsOff`` (400) while jobs are off."""
        self._on()

    def _on(self) -> tuple[SqliteJobStore, JobFiles, JobRunner]:
        if self.broken is not None:
            raise JobsBroken(f"Long-form jobs are unavailable on this router: {self.broken}.", retry_after=60)
        if self.store is None or self.files is None or self.runner is None:
            raise JobsOff()
        return self.store, self.files, self.runner

    async def submit(self, job: NewJob) -> JobRecord:
        store, files, runner = self._on()
        config = self.config
        if files.free_bytes() - job.estimated_bytes < config.min_free_disk_bytes:
            self.metrics.jobs_refused.labels("disk_free").inc()
            raise JobStorageFull("The router's disk for jobs is too full for this job (it would need about "
                                 f"{job.estimated_bytes} bytes); try again later.", retry_after=RETRY_LIMIT_S)
        admission = Admission(config.max_open_per_key, config.max_bytes_per_key, config.max_disk_bytes)
        try:
            record = await store.create(job, admission, self.now())
        except LimitExceeded as exc:
            self.metrics.jobs_refused.labels(exc.reason).inc()
            if exc.reason == "disk_bytes":
                raise JobStorageFull(exc.message, retry_after=RETRY_LIMIT_S) from None
            raise JobLimit(exc.message, "too_many_jobs" if exc.reason == "open_jobs" else "storage_limit") from None
        self.metrics.jobs_submitted.labels(job.model).inc()
        log.info("job %s: submitted by %s (%d items, %d characters, %d segments)", record.id, job.owner,
                 len(job.items), record.chars, record.segments)
        runner.poke()
        return record

    async def find(self, owner: str, job_id: str) -> JobRecord:
        """The caller's job, or ``JobNotFound`` (also for another key's job and one past its expiry)."""
        store, files, _ = self._on()
        record = await store.get(job_id) if valid_job_id(job_id) else None
        if record is None or record.owner != owner:
            raise JobNotFound(job_id)
        if record.expires is not None and record.expires < self.now() and not record.state.open:
            await asyncio.to_thread(files.delete, job_id)
            await store.delete(job_id)
            raise JobNotFound(job_id)
        return record

    async def status(self, owner: str, job_id: str) -> dict[str, object]:
        store, _, _ = self._on()
        record = await self.find(owner, job_id)
        return job_view(record, await store.progress(job_id), self.now())

    async def listing(self, owner: str, limit: int, after: str | None) -> dict[str, object]:
        store, _, _ = self._on()
        records = await store.of_owner(owner, limit + 1, after)
        now = self.now()
        data = [job_view(r, None, now) for r in records[:limit]]
        return {"object": "list", "data": data, "has_more": len(records) > limit,
                "last_id": data[-1]["id"] if data else None}

    async def cancel_or_delete(self, owner: str, job_id: str) -> dict[str, object]:
        """An open job is cancelled (its slots freed at once); an ended one is deleted with its audio."""
        store, files, runner = self._on()
        record = await self.find(owner, job_id)
        if record.state.open:
            now = self.now()
            if await store.finish(job_id, JobState.CANCELLED, now, now + self.config.result_ttl, 0,
                                  webhook=record.spec.webhook_url is not None):
                await runner.cancel(job_id)
                await asyncio.to_thread(files.delete, job_id)
                self.metrics.jobs_finished.labels(record.model, JobState.CANCELLED.value).inc()
                runner.poke()  # its webhook
                log.info("job %s: cancelled", job_id)
            return await self.status(owner, job_id)
        await asyncio.to_thread(files.delete, job_id)
        await store.delete(job_id)
        return {"id": job_id, "object": "speech.job.deleted", "deleted": True}

    async def content(self, owner: str, job_id: str, item: int | None) -> tuple[Path, JobRecord]:
        """The joined audio of the whole job or of one item; ``JobNotDone`` until there is one."""
        _, files, _ = self._on()
        record = await self.find(owner, job_id)
        if record.state not in (JobState.SUCCEEDED, JobState.FAILED):  # a failed job keeps its items that succeeded
            raise JobNotDone(f"Job {job_id} is {record.state.value}: its audio is there once it has succeeded.",
                             param=None, code="job_not_done")
        from ..audio.formats import FORMATS

        items = record.spec.items
        if item is not None and not 0 <= item < items:
            raise RequestInvalid(f"Invalid 'item': job {job_id} has items 0 to {items - 1}.", param="item")
        path = files.output_path(job_id, item if items > 1 else None, FORMATS[record.spec.response_format].extension)
        if not path.is_file():
            which = f"item {item}" if item is not None else "the whole job"
            raise JobNotDone(f"Job {job_id} has no audio for {which}: it failed (items that succeeded have theirs: "
                             "?item=N).", param=None, code="no_audio")
        return path, record
