"""``JobRunner``: the background task that works jobs, one loop per router.

Each turn it claims jobs with work left (up to ``jobs.max_running``; a job is this router's while it holds
the job's lease, renewed every third of ``jobs.lease``), starts segments only into slots that are free and
that other requests are not expected to need (``SlotBudget``), round-robin across its jobs, and sleeps until
a segment ends, a job arrives or the next tick (slots free up as other requests finish). A router that dies
stops renewing: after ``jobs.lease`` another router, or this one restarted, claims the job and does only the
segments not done. Finished jobs are deleted ``jobs.result_ttl`` after their end.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
import time
from collections.abc import Callable

from ..cache.speech import SpeechCache
from ..config.models import JobsConfig
from ..metrics import Metrics
from ..router.dispatch import Router
from ..router.pool import Pool
from .budget import SlotBudget, job_pool
from .files import DiskFull, JobFiles
from .finish import Finisher
from .model import JobState, Segment
from .sqlite import SqliteJobStore
from .work import JobWork

log = logging.getLogger("speech_router.jobs")

#: while jobs run, slots are looked at again this often (other requests end without telling us)
TICK_S = 0.05
#: with no job running: how often the fleet's load is sampled and the store asked for work
IDLE_S = 0.25
CLAIM_S = 1.0
SWEEP_MAX_S = 60.0


class JobRunner:
    def __init__(self, store: SqliteJobStore, files: JobFiles, router: Router, metrics: Metrics,
                 cache: SpeechCache | None = None, now: Callable[[], float] = time.time,
                 webhook_secret: str | None = None) -> None:
        self.store = store
        self.files = files
        self.router = router
        self.metrics = metrics
        self.cache = cache
        self.now = now
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        self.budget = SlotBudget(router.clock)
        self.work: dict[str, JobWork] = {}
        self.finisher = Finisher(store, files, metrics, now, webhook_secret)
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._next_claim = 0.0
        self._next_sweep = 0.0
        self._renewed: dict[str, float] = {}
        self._turn = 0

    def __repr__(self) -> str:
        return f"JobRunner(holder={self.holder!r}, working={sorted(self.work)})"

    @property
    def config(self) -> JobsConfig:
        return self.router.settings.jobs

    def start(self) -> None:
        self._task = asyncio.create_task(self._main(), name="speech-router-jobs")

    def poke(self) -> None:
        """Something to do (a job was submitted): claim it now rather than at the next claim turn."""
        self._next_claim = 0.0
        self._wake.set()

    async def aclose(self) -> None:
        """Stop working (jobs stay open in the store; their leases are released so a restart resumes at once)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for work in list(self.work.values()):
            await self._drop(work)

    async def cancel(self, job_id: str) -> None:
        """The job was cancelled (its state is already ``cancelled``): free its slots now."""
        work = self.work.get(job_id)
        if work is not None:
            await self._drop(work)

    # -- the loop -------------------------------------------------------------------------------------------

    async def _main(self) -> None:
        try:
            await self._sweep_orphans()
        except Exception:  # noqa: BLE001 - the expiry sweep will try again
            log.exception("job runner: could not look for leftover job files")
        while True:
            try:
                await self._turn_once()
            except asyncio.CancelledError:
                raise
            except Exception:  # a store or disk error must not end job processing for good
                log.exception("job runner turn failed")
                await asyncio.sleep(1.0)
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), TICK_S if self.work else IDLE_S)

    async def _turn_once(self) -> None:
        now = self.now()
        if now >= self._next_claim and len(self.work) < self.config.max_running:
            self._next_claim = now + CLAIM_S
            await self._claim(now)
        if now >= self._next_sweep:
            self._next_sweep = now + min(SWEEP_MAX_S, self.config.result_ttl / 2)
            await self._sweep(now)
        await self._renew(now)
        self._dispatch()
        self.metrics.jobs_running.set(len(self.work))
        for work in list(self.work.values()):
            halt = self._halt(work)
            if work.finishing is None and (work.idle or work.fatal is not None or halt is not None):
                work.finishing = asyncio.create_task(self._finish(work, halt))

    async def _claim(self, now: float) -> None:
        for job_id in await self.store.claimable(now, self.config.max_running * 2):
            if len(self.work) >= self.config.max_running:
                return
            if job_id in self.work or not await self.store.acquire(job_id, self.holder, now + self.config.lease, now):
                continue
            self._renewed[job_id] = now
            record = await self.store.get(job_id)
            if record is None:
                continue
            if not record.state.open:  # only its webhook is left to send
                await self.finisher.deliver(record, self.config.webhooks)
                await self._release(job_id)
                continue
            record = await self.store.start(job_id, now)
            if record is None or record.state is not JobState.RUNNING:
                await self._release(job_id)
                continue
            work = JobWork(record, await self.store.items(job_id), await self.store.pending(job_id), self.router.clock)
            for progress in await self.store.progress(job_id):
                if progress.error is not None:
                    work.failed[progress.index] = progress.error
            self.work[job_id] = work
            log.info("job %s: working it (%d segments to do)", job_id, len(work.pending))

    async def _renew(self, now: float) -> None:
        for job_id, work in list(self.work.items()):
            if now - self._renewed.get(job_id, 0.0) < self.config.lease / 3:
                continue
            record = await self.store.get(job_id)
            if record is not None and record.state is JobState.CANCELLED:  # by another router: stop, free the disk
                log.info("job %s: cancelled", job_id)
                await self._drop(work)
                await asyncio.to_thread(self.files.delete, job_id)
            elif record is None or not await self.store.acquire(job_id, self.holder, now + self.config.lease, now):
                log.warning("job %s: lease lost (another router took it over, or it was deleted)", job_id)
                await self._drop(work, release=False)
            else:
                self._renewed[job_id] = now

    def _dispatch(self) -> None:
        """Start segments into the slots jobs may take, one job after another (round-robin)."""
        config = self.config
        mine: dict[str, int] = {}
        for work in self.work.values():
            pool = self._pool(work)
            if pool is not None:
                mine[pool.name] = mine.get(pool.name, 0) + len(work.holding)
        free = {name: self.budget.free(pool, mine.get(name, 0), config) for name, pool in self.router.pools.items()}
        self.budget.forget(set(self.router.pools))
        ready = [w for w in self.work.values() if w.finishing is None]
        started = True
        while started and ready:
            started = False
            self._turn += 1
            for work in ready[self._turn % len(ready):] + ready[:self._turn % len(ready)]:
                pool = self._pool(work)
                if pool is None or free.get(pool.name, 0) <= 0:
                    continue
                segment = work.next_segment()
                if segment is None:
                    continue
                free[pool.name] -= 1
                work.holding.add(segment)
                work.in_flight[segment] = asyncio.create_task(self._segment(work, segment))
                started = True

    def _pool(self, work: JobWork) -> Pool | None:
        if work.record.model not in self.router.settings.models:
            return None
        return job_pool(self.router.route(work.record.model))

    async def _segment(self, work: JobWork, segment: Segment) -> None:
        try:
            await self._do_segment(work, segment)
        except asyncio.CancelledError:
            raise
        except DiskFull as exc:  # the disk is full (or nearly): the job ends rather than fill it
            work.in_flight.pop(segment, None)  # before abort cancels what is in flight: not this task
            log.error("job %s: cannot keep segment audio: %s", work.job_id, exc)
            work.abort({"message": "the router's disk for jobs is full", "code": "storage_full"})
        except Exception as exc:  # noqa: BLE001 - every failure is the segment's outcome, never the runner's
            work.in_flight.pop(segment, None)
            self.metrics.job_segments.labels(work.record.model, "error").inc()
            failure = work.outcome(segment, exc, self.config.segment_tries)
            if failure is not None:
                work.fail(failure)
                await self.store.fail_item(work.job_id, failure.item, failure.error)
        finally:
            work.holding.discard(segment)
            work.in_flight.pop(segment, None)
            self._wake.set()

    async def _do_segment(self, work: JobWork, segment: Segment) -> None:
        pcm, rate = await work.synthesize(self.router, segment, self._cache_for(work))
        work.holding.discard(segment)  # its slot is free again: the next segment may start while this one is kept
        self._wake.set()
        if self.files.free_bytes() - len(pcm) < self.config.min_free_disk_bytes:
            raise DiskFull(f"less than jobs.min_free_disk_bytes ({self.config.min_free_disk_bytes}) free")
        try:
            await asyncio.to_thread(self.files.write_segment, work.job_id, segment.item, segment.index, pcm)
        except OSError as exc:
            raise DiskFull(str(exc)) from exc
        if await self.store.segment_done(work.job_id, segment, len(pcm), rate):
            work.last_progress = self.router.clock()
            self.metrics.job_segments.labels(work.record.model, "ok").inc()

    def _cache_for(self, work: JobWork) -> SpeechCache | None:
        model = self.router.settings.models.get(work.record.model)
        return self.cache if self.cache is not None and model is not None and model.cache.enabled and \
            model.cache.segments else None

    def _halt(self, work: JobWork) -> dict[str, str] | None:
        """Why the job cannot go on (its model was removed by a reload, nothing finished for too long), or None."""
        if work.record.model not in self.router.settings.models:
            return {"message": f"model {work.record.model!r} is no longer configured", "code": "model_not_found"}
        if self.router.clock() - work.last_progress > self.config.stall_timeout:
            return {"message": f"no segment finished in {self.config.stall_timeout:g} s", "code": "stalled"}
        return None

    async def _finish(self, work: JobWork, halt: dict[str, str] | None) -> None:
        try:
            done = await self.finisher.finish(work, self.config, halt)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("job %s: could not finish", work.job_id)
            done = await self.finisher.finish(work, self.config, {"message": "internal error", "code": "internal"})
        if done:
            self.work.pop(work.job_id, None)
            await self._release(work.job_id)
        else:  # segments were lost on disk and are pending again: go on
            work.finishing = None
            work.pending.extend(await self.store.pending(work.job_id))
        self._wake.set()

    async def _drop(self, work: JobWork, release: bool = True) -> None:
        self.work.pop(work.job_id, None)
        await work.stop()
        if release:
            await self._release(work.job_id)

    async def _release(self, job_id: str) -> None:
        self._renewed.pop(job_id, None)
        with contextlib.suppress(Exception):
            await self.store.release(job_id, self.holder)

    async def _sweep(self, now: float) -> None:
        for job_id in await self.store.expired(now):
            await asyncio.to_thread(self.files.delete, job_id)
            await self.store.delete(job_id)
            self.metrics.jobs_expired.inc()
            log.info("job %s: expired and deleted", job_id)

    async def _sweep_orphans(self) -> None:
        known = await self.store.known()
        for job_id in self.files.orphans(known):
            await asyncio.to_thread(self.files.delete, job_id)
