"""``SqliteJobStore``: the job store of one router, in one SQLite file in WAL mode, no server.

Every call runs on one worker thread that owns the connection, so the event loop never waits on the disk
and statements never interleave. WAL lets a router restarted on the same directory (or a second process on
it) read while another writes; ``BEGIN IMMEDIATE`` makes the limit checks and the creation one step, and
leases compare-and-set in a single ``UPDATE``. ``synchronous=NORMAL``: a power cut may lose the last
commits, never corrupt the file; a segment lost so is done again.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path
from typing import Any, TypeVar

from .model import DoneSegment, ItemProgress, ItemSpec, JobRecord, JobSpec, JobState, NewJob, Segment
from .store import Admission, LimitExceeded

T = TypeVar("T")
SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY, owner TEXT NOT NULL, model TEXT NOT NULL, state TEXT NOT NULL, spec TEXT NOT NULL,
    created REAL NOT NULL, started REAL, finished REAL, expires REAL, chars INTEGER NOT NULL,
    segments INTEGER NOT NULL, reserved_bytes INTEGER NOT NULL, stored_bytes INTEGER NOT NULL DEFAULT 0,
    error TEXT, webhook TEXT, run_started REAL, run_chars INTEGER NOT NULL DEFAULT 0,
    lease_holder TEXT, lease_until REAL);
CREATE INDEX IF NOT EXISTS jobs_owner ON jobs (owner, created);
CREATE TABLE IF NOT EXISTS items (
    job TEXT NOT NULL, idx INTEGER NOT NULL, spec TEXT NOT NULL, error TEXT, PRIMARY KEY (job, idx));
CREATE TABLE IF NOT EXISTS segments (
    job TEXT NOT NULL, item INTEGER NOT NULL, idx INTEGER NOT NULL, text TEXT NOT NULL, chars INTEGER NOT NULL,
    done INTEGER NOT NULL DEFAULT 0, size INTEGER NOT NULL DEFAULT 0, rate INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (job, item, idx));
"""
_OPEN = (JobState.QUEUED.value, JobState.RUNNING.value)
_COLUMNS = ("id, owner, model, state, spec, created, chars, segments, reserved_bytes, stored_bytes, started, "
            "finished, expires, error, webhook, run_started, run_chars")
#: bytes a job counts for: what open jobs are expected to need (or already hold, if more), what ended ones hold
_HELD = "CASE WHEN state IN ('queued', 'running') THEN MAX(reserved_bytes, stored_bytes) ELSE stored_bytes END"


class SqliteJobStore:
    """The ``JobStore`` in ``directory/jobs.sqlite3``."""

    def __init__(self, directory: str | Path) -> None:
        self.path = Path(directory) / "jobs.sqlite3"
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="jobs-sqlite")
        self._db: sqlite3.Connection | None = None

    def __repr__(self) -> str:
        return f"SqliteJobStore({str(self.path)!r})"

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=10)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.executescript(SCHEMA)
            self._db = db
        return self._db

    # -- jobs -----------------------------------------------------------------------------------------------

    async def create(self, job: NewJob, admission: Admission, now: float) -> JobRecord:
        return await self._run(self._create, job, admission, now)

    def _create(self, job: NewJob, admission: Admission, now: float) -> JobRecord:
        db = self._conn()
        db.execute("BEGIN IMMEDIATE")
        try:
            (open_jobs,) = db.execute("SELECT COUNT(*) FROM jobs WHERE owner = ? AND state IN (?, ?)",
                                      (job.owner, *_OPEN)).fetchone()
            if open_jobs >= admission.max_open_per_key:
                raise LimitExceeded("open_jobs", f"This key has {open_jobs} open jobs, the most it may have "
                                                 f"({admission.max_open_per_key}); wait for one to end or cancel one.")
            (key_bytes,) = db.execute(f"SELECT COALESCE(SUM({_HELD}), 0) FROM jobs WHERE owner = ?",
                                      (job.owner,)).fetchone()
            if key_bytes + job.estimated_bytes > admission.max_bytes_per_key:
                raise LimitExceeded("key_bytes", f"This key's jobs keep {key_bytes} bytes and this one needs about "
                                                 f"{job.estimated_bytes}: over the {admission.max_bytes_per_key} "
                                                 "allowed; delete finished jobs or wait for them to expire.")
            (all_bytes,) = db.execute(f"SELECT COALESCE(SUM({_HELD}), 0) FROM jobs").fetchone()
            if all_bytes + job.estimated_bytes > admission.max_disk_bytes:
                raise LimitExceeded("disk_bytes", f"The router's job storage is full ({all_bytes} of "
                                                  f"{admission.max_disk_bytes} bytes kept or promised, this job "
                                                  f"needs about {job.estimated_bytes}); try again later.")
            segments = sum(len(t) for t in job.texts)
            db.execute(f"INSERT INTO jobs ({_COLUMNS}) VALUES ({', '.join('?' * 17)})",
                       (job.id, job.owner, job.model, JobState.QUEUED.value, json.dumps(asdict(job.spec)), now,
                        job.chars, segments, job.estimated_bytes, 0, None, None, None, None, None, None, 0))
            db.executemany("INSERT INTO items (job, idx, spec) VALUES (?, ?, ?)",
                           [(job.id, i, json.dumps(asdict(item))) for i, item in enumerate(job.items)])
            db.executemany("INSERT INTO segments (job, item, idx, text, chars) VALUES (?, ?, ?, ?, ?)",
                           [(job.id, i, n, text, len(text)) for i, texts in enumerate(job.texts)
                            for n, text in enumerate(texts)])
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        record = self._get(job.id)
        assert record is not None
        return record

    async def get(self, job_id: str) -> JobRecord | None:
        return await self._run(self._get, job_id)

    def _get(self, job_id: str) -> JobRecord | None:
        row = self._conn().execute(f"SELECT {_COLUMNS} FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return _record(row) if row else None

    async def of_owner(self, owner: str, limit: int, after: str | None = None) -> list[JobRecord]:
        return await self._run(self._of_owner, owner, limit, after)

    def _of_owner(self, owner: str, limit: int, after: str | None) -> list[JobRecord]:
        db = self._conn()
        if after is not None:
            cursor = db.execute("SELECT created, id FROM jobs WHERE id = ? AND owner = ?", (after, owner)).fetchone()
            if cursor is None:
                return []
            rows = db.execute(f"SELECT {_COLUMNS} FROM jobs WHERE owner = ? AND (created < ? OR (created = ? AND "
                              "id < ?)) ORDER BY created DESC, id DESC LIMIT ?",
                              (owner, cursor[0], cursor[0], cursor[1], limit)).fetchall()
        else:
            rows = db.execute(f"SELECT {_COLUMNS} FROM jobs WHERE owner = ? ORDER BY created DESC, id DESC LIMIT ?",
                              (owner, limit)).fetchall()
        return [_record(row) for row in rows]

    async def progress(self, job_id: str) -> list[ItemProgress]:
        return await self._run(self._progress, job_id)

    def _progress(self, job_id: str) -> list[ItemProgress]:
        db = self._conn()
        errors = dict(db.execute("SELECT idx, error FROM items WHERE job = ?", (job_id,)).fetchall())
        rows = db.execute("SELECT item, SUM(chars), COUNT(*), SUM(done), SUM(done * chars), "
                          "SUM(CASE WHEN done AND rate > 0 THEN size / (2.0 * rate) ELSE 0 END) "
                          "FROM segments WHERE job = ? GROUP BY item ORDER BY item", (job_id,)).fetchall()
        return [ItemProgress(item, chars, count, done, chars_done, seconds,
                             json.loads(errors[item]) if errors.get(item) else None)
                for item, chars, count, done, chars_done, seconds in rows]

    async def items(self, job_id: str) -> list[ItemSpec]:
        return await self._run(lambda: [ItemSpec(**json.loads(spec)) for (spec,) in self._conn().execute(
            "SELECT spec FROM items WHERE job = ? ORDER BY idx", (job_id,))])

    async def pending(self, job_id: str) -> list[Segment]:
        return await self._run(lambda: [Segment(*row) for row in self._conn().execute(
            "SELECT s.item, s.idx, s.text FROM segments s JOIN items i ON i.job = s.job AND i.idx = s.item "
            "WHERE s.job = ? AND s.done = 0 AND i.error IS NULL ORDER BY s.item, s.idx", (job_id,))])

    async def done(self, job_id: str) -> list[DoneSegment]:
        return await self._run(lambda: [DoneSegment(*row) for row in self._conn().execute(
            "SELECT item, idx, size, rate FROM segments WHERE job = ? AND done = 1 ORDER BY item, idx", (job_id,))])

    async def segment_done(self, job_id: str, segment: Segment, size: int, rate: int) -> bool:
        return await self._run(self._segment_done, job_id, segment, size, rate)

    def _segment_done(self, job_id: str, segment: Segment, size: int, rate: int) -> bool:
        db = self._conn()
        db.execute("BEGIN IMMEDIATE")
        try:
            running = db.execute("SELECT 1 FROM jobs WHERE id = ? AND state = ?",
                                 (job_id, JobState.RUNNING.value)).fetchone()
            changed = running is not None and db.execute(
                "UPDATE segments SET done = 1, size = ?, rate = ? WHERE job = ? AND item = ? AND idx = ? AND done = 0",
                (size, rate, job_id, segment.item, segment.index)).rowcount == 1
            if changed:
                db.execute("UPDATE jobs SET stored_bytes = stored_bytes + ? WHERE id = ?", (size, job_id))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return changed

    async def segment_lost(self, job_id: str, item: int, index: int) -> None:
        await self._run(self._write, "UPDATE segments SET done = 0, size = 0, rate = 0 WHERE job = ? AND item = ? "
                                     "AND idx = ?", (job_id, item, index))

    async def fail_item(self, job_id: str, item: int, error: dict[str, str]) -> None:
        await self._run(self._write, "UPDATE items SET error = ? WHERE job = ? AND idx = ? AND error IS NULL",
                        (json.dumps(error), job_id, item))

    async def start(self, job_id: str, now: float) -> JobRecord | None:
        return await self._run(self._start, job_id, now)

    def _start(self, job_id: str, now: float) -> JobRecord | None:
        db = self._conn()
        db.execute("UPDATE jobs SET state = ?, started = COALESCE(started, ?), run_started = ?, run_chars = "
                   "(SELECT COALESCE(SUM(chars), 0) FROM segments WHERE job = ? AND done = 1) "
                   "WHERE id = ? AND state IN (?, ?)", (JobState.RUNNING.value, now, now, job_id, job_id, *_OPEN))
        return self._get(job_id)

    async def finish(self, job_id: str, state: JobState, now: float, expires: float, stored_bytes: int,
                     error: dict[str, str] | None = None, webhook: bool = False) -> bool:
        return await self._run(self._write, "UPDATE jobs SET state = ?, finished = ?, expires = ?, stored_bytes = ?, "
                                            "error = ?, webhook = ? WHERE id = ? AND state IN (?, ?)",
                               (state.value, now, expires, stored_bytes, json.dumps(error) if error else None,
                                "pending" if webhook else None, job_id, *_OPEN)) == 1

    async def webhook_done(self, job_id: str, delivered: bool) -> None:
        await self._run(self._write, "UPDATE jobs SET webhook = ? WHERE id = ?",
                        ("delivered" if delivered else "failed", job_id))

    # -- leases ---------------------------------------------------------------------------------------------

    async def claimable(self, now: float, limit: int) -> list[str]:
        return await self._run(lambda: [row[0] for row in self._conn().execute(
            "SELECT id FROM jobs WHERE (state IN (?, ?) OR webhook = 'pending') AND (lease_until IS NULL OR "
            "lease_until < ?) ORDER BY created LIMIT ?", (*_OPEN, now, limit))])

    async def acquire(self, job_id: str, holder: str, until: float, now: float) -> bool:
        return await self._run(self._write, "UPDATE jobs SET lease_holder = ?, lease_until = ? WHERE id = ? AND "
                                            "(lease_holder IS NULL OR lease_holder = ? OR lease_until < ?)",
                               (holder, until, job_id, holder, now)) == 1

    async def release(self, job_id: str, holder: str) -> None:
        await self._run(self._write, "UPDATE jobs SET lease_holder = NULL, lease_until = NULL WHERE id = ? AND "
                                     "lease_holder = ?", (job_id, holder))

    # -- expiry and limits ----------------------------------------------------------------------------------

    async def expired(self, now: float) -> list[str]:
        return await self._run(lambda: [row[0] for row in self._conn().execute(
            "SELECT id FROM jobs WHERE expires IS NOT NULL AND expires < ? AND state NOT IN (?, ?) AND "
            "(webhook IS NULL OR webhook != 'pending')", (now, *_OPEN))])

    async def delete(self, job_id: str) -> None:
        await self._run(self._delete, job_id)

    def _delete(self, job_id: str) -> None:
        db = self._conn()
        db.execute("BEGIN IMMEDIATE")
        for table, column in (("segments", "job"), ("items", "job"), ("jobs", "id")):
            db.execute(f"DELETE FROM {table} WHERE {column} = ?", (job_id,))
        db.execute("COMMIT")

    async def usage(self, owner: str | None = None) -> int:
        where, args = ("WHERE owner = ?", (owner,)) if owner is not None else ("", ())
        return await self._run(lambda: self._conn().execute(
            f"SELECT COALESCE(SUM({_HELD}), 0) FROM jobs {where}", args).fetchone()[0])

    async def known(self) -> set[str]:
        """Every job id in the store (for sweeping files that belong to no job)."""
        return await self._run(lambda: {row[0] for row in self._conn().execute("SELECT id FROM jobs")})

    def _write(self, sql: str, args: tuple[Any, ...]) -> int:
        return self._conn().execute(sql, args).rowcount

    async def aclose(self) -> None:
        def close() -> None:
            if self._db is not None:
                self._db.close()
                self._db = None

        await self._run(close)
        self._pool.shutdown(wait=True)


def _record(row: tuple[Any, ...]) -> JobRecord:
    (job_id, owner, model, state, spec, created, chars, segments, reserved, stored, started, finished, expires, error,
     webhook, run_started, run_chars) = row
    return JobRecord(job_id, owner, model, JobState(state), JobSpec(**json.loads(spec)), created, chars, segments,
                     reserved, stored, started, finished, expires, json.loads(error) if error else None, webhook,
                     run_started, run_chars)
