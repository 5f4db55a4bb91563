"""The job store's interface: jobs, their segments and the lease that says which router works a job.

One router needs no server: ``SqliteJobStore`` keeps everything in one SQLite file in WAL mode. Several
replicas (issue #18) will share a store that implements this same protocol on Valkey/Redis, with the same
lease rule: a holder, an expiry, renewed while it works; a holder that stops renewing (it died) loses the
job to the next router that claims it. Audio lives beside the store in ``JobFiles`` (a directory, which
replicas may share as they share the voice store).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from .model import DoneSegment, ItemProgress, ItemSpec, JobRecord, JobState, NewJob, Segment


@dataclass(frozen=True)
class Admission:
    """Limits checked when a job is created, in the same transaction as the creation."""

    max_open_per_key: int
    max_bytes_per_key: int
    max_disk_bytes: int


class LimitExceeded(Exception):
    """A new job would pass a limit: ``reason`` is ``open_jobs``, ``key_bytes`` or ``disk_bytes``."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


class JobStore(Protocol):
    """Jobs, segments and leases. Every method is safe to call from any replica at any time."""

    async def create(self, job: NewJob, admission: Admission, now: float) -> JobRecord:
        """Keep a new queued job and its segments; ``LimitExceeded`` when it passes ``admission``."""

    async def get(self, job_id: str) -> JobRecord | None: ...

    async def of_owner(self, owner: str, limit: int, after: str | None = None) -> list[JobRecord]:
        """``owner``'s jobs, newest first, after job ``after`` (a cursor)."""

    async def progress(self, job_id: str) -> list[ItemProgress]: ...

    async def items(self, job_id: str) -> list[ItemSpec]:
        """Each item, in order."""

    async def pending(self, job_id: str) -> list[Segment]:
        """Segments not done yet, of items that have not failed, in text order."""

    async def done(self, job_id: str) -> list[DoneSegment]:
        """Segments done, in text order."""

    async def segment_done(self, job_id: str, segment: Segment, size: int, rate: int) -> bool:
        """Mark a segment done (its audio already kept); False when the job is no longer running."""

    async def segment_lost(self, job_id: str, item: int, index: int) -> None:
        """A done segment's audio is missing: it is pending again."""

    async def fail_item(self, job_id: str, item: int, error: dict[str, str]) -> None: ...

    async def start(self, job_id: str, now: float) -> JobRecord | None:
        """The job runs (again) from now: queued -> running, ``run_*`` reset."""

    async def finish(self, job_id: str, state: JobState, now: float, expires: float, stored_bytes: int,
                     error: dict[str, str] | None = None, webhook: bool = False) -> bool:
        """An open job ends in ``state``; False when it had already ended (a cancel won the race)."""

    async def webhook_done(self, job_id: str, delivered: bool) -> None: ...

    async def claimable(self, now: float, limit: int) -> list[str]:
        """Jobs with work left (open, or a webhook to send) whose lease is free or expired, oldest first."""

    async def acquire(self, job_id: str, holder: str, until: float, now: float) -> bool:
        """Take (or renew) the job's lease until ``until``; False when another holder's lease is still valid."""

    async def release(self, job_id: str, holder: str) -> None: ...

    async def expired(self, now: float) -> list[str]: ...

    async def delete(self, job_id: str) -> None: ...

    async def usage(self, owner: str | None = None) -> int:
        """Bytes kept or expected (``reserved_bytes`` of open jobs, ``stored_bytes`` of the others)."""

    async def aclose(self) -> None: ...
