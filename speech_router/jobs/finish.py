"""How a job ends: its audio joined (or the reason it cannot be), its state kept, its webhook sent.

The order makes every step safe to repeat after a crash: the joined files are written and renamed, then the
store says the job ended (with the bytes it keeps and the time it expires), then the segments' PCM is
deleted; a router that died between two steps resumes the job and repeats only what is left. The webhook is
sent while the router still holds the job's lease, and marked sent once a receiver said 2xx: a router that
dies before that leaves it pending, and the next one to claim the job sends it (the same ``webhook-id``).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable

from ..config.models import JobsConfig, JobWebhooksConfig
from ..metrics import Metrics
from . import webhook
from .assemble import SegmentLost, assemble, lost_segments
from .files import JobFiles
from .model import JobRecord, JobState
from .sqlite import SqliteJobStore
from .view import webhook_event
from .work import JobWork

log = logging.getLogger("speech_router.jobs")


class Finisher:
    def __init__(self, store: SqliteJobStore, files: JobFiles, metrics: Metrics, now: Callable[[], float],
                 webhook_secret: str | None) -> None:
        self.store = store
        self.files = files
        self.metrics = metrics
        self.now = now
        self.key = webhook.signing_key(webhook_secret) if webhook_secret else None

    def __repr__(self) -> str:
        return f"Finisher({self.files!r})"

    async def finish(self, work: JobWork, config: JobsConfig, halt: dict[str, str] | None = None) -> bool:
        """End the job (at once with ``halt`` as its error, when given); False when segments turned out lost on disk
        (pending again: the job goes on)."""
        items = len(work.items)
        halt = work.fatal or halt
        if halt is not None:
            await work.stop_segments()
            return await self._end(work, JobState.FAILED, config, halt, stored=0)
        failed = set(work.failed)
        if len(failed) == items:
            return await self._end(work, JobState.FAILED, config, _items_failed(work), stored=0)
        done = await self.store.done(work.job_id)
        lost = await asyncio.to_thread(lost_segments, self.files, work.job_id, done)
        if lost:
            log.warning("job %s: %d segments lost on disk, doing them again", work.job_id, len(lost))
            for segment in lost:
                await self.store.segment_lost(work.job_id, segment.item, segment.index)
            return False
        try:
            outputs = await asyncio.to_thread(assemble, self.files, work.job_id, work.record.spec, done, items, failed)
        except SegmentLost as exc:
            await self.store.segment_lost(work.job_id, exc.segment.item, exc.segment.index)
            return False
        except OSError as exc:
            log.error("job %s: cannot write its audio: %s", work.job_id, exc)
            return await self._end(work, JobState.FAILED, config, {"message": "the router's disk for jobs is full",
                                                                    "code": "storage_full"}, stored=0)
        stored = sum(output.size for output in outputs)
        state = JobState.FAILED if failed else JobState.SUCCEEDED
        return await self._end(work, state, config, _items_failed(work) if failed else None, stored)

    async def _end(self, work: JobWork, state: JobState, config: JobsConfig, error: dict[str, str] | None,
                   stored: int) -> bool:
        now = self.now()
        record = work.record
        ended = await self.store.finish(record.id, state, now, now + config.result_ttl, stored, error,
                                        webhook=record.spec.webhook_url is not None)
        if not ended:  # cancelled meanwhile: the canceller frees the disk
            return True
        await asyncio.to_thread(self.files.drop_segments if stored else self.files.delete, record.id)
        self.metrics.jobs_finished.labels(record.model, state.value).inc()
        log.info("job %s: %s%s", record.id, state.value, f" ({error['message']})" if error else "")
        ended_record = await self.store.get(record.id)
        if ended_record is not None:
            await self.deliver(ended_record, config.webhooks)
        return True

    async def deliver(self, record: JobRecord, config: JobWebhooksConfig) -> None:
        """Send the job's webhook if it is still to be sent."""
        url = record.spec.webhook_url
        if url is None or record.webhook != "pending":
            return
        if self.key is None:
            log.warning("job %s: no webhook secret in $%s, the webhook is not sent", record.id, config.secret_env)
            ok = False
        else:
            body = json.dumps(webhook_event(record, await self.store.progress(record.id), self.now())).encode()
            ok = await webhook.deliver(url, body, f"{record.id}.{record.state.value}", self.key,
                                       attempts=config.attempts, timeout=config.timeout, clock=self.now)
        await self.store.webhook_done(record.id, ok)
        self.metrics.job_webhooks.labels("delivered" if ok else "failed").inc()


def _items_failed(work: JobWork) -> dict[str, str]:
    first = work.failed[min(work.failed)]
    return {"message": f"{len(work.failed)} of {len(work.items)} items failed; the first: {first['message']}",
            "code": "items_failed"}

