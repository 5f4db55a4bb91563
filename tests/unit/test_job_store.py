"""The job store's rules, without a router: leases, limits checked with the creation, segments done only while a
job runs, expiry; and the byte ranges of a job's audio."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from speech_router.api.job_content import parse_range
from speech_router.jobs.model import ItemSpec, JobSpec, JobState, NewJob, Segment
from speech_router.jobs.sqlite import SqliteJobStore
from speech_router.jobs.store import Admission, LimitExceeded

ROOMY = Admission(max_open_per_key=10, max_bytes_per_key=10**9, max_disk_bytes=10**9)


def job(owner: str = "alice", size: int = 1000) -> NewJob:
    return NewJob(owner, "m", JobSpec(), [ItemSpec("v")], [["One.", "Two."]], estimated_bytes=size)


@pytest.fixture
def store(tmp_path: Path):
    s = SqliteJobStore(tmp_path)
    yield s
    asyncio.run(s.aclose())


def test_a_lease_is_held_until_it_expires_or_is_released(store):
    async def scenario() -> None:
        record = await store.create(job(), ROOMY, now=0.0)
        assert await store.acquire(record.id, "a", until=10.0, now=0.0)
        assert not await store.acquire(record.id, "b", until=20.0, now=5.0), "a valid lease is not taken"
        assert await store.claimable(now=5.0, limit=10) == []
        assert await store.acquire(record.id, "a", until=15.0, now=5.0), "its holder renews it"
        assert await store.claimable(now=16.0, limit=10) == [record.id], "expired: the job is free to claim"
        assert await store.acquire(record.id, "b", until=30.0, now=16.0), "a dead holder's job is taken over"
        assert not await store.acquire(record.id, "a", until=40.0, now=17.0)
        await store.release(record.id, "a")  # not its lease any more: nothing happens
        assert not await store.acquire(record.id, "c", until=40.0, now=17.0)
        await store.release(record.id, "b")
        assert await store.acquire(record.id, "c", until=40.0, now=17.0)

    asyncio.run(scenario())


def test_limits_are_checked_in_the_same_step_as_the_creation(store):
    async def scenario() -> None:
        tight = Admission(max_open_per_key=1, max_bytes_per_key=1500, max_disk_bytes=2500)
        await store.create(job("alice"), tight, now=0.0)
        with pytest.raises(LimitExceeded) as refused:
            await store.create(job("alice"), tight, now=1.0)
        assert refused.value.reason == "open_jobs"
        with pytest.raises(LimitExceeded) as refused:
            await store.create(job("bob", size=2000), tight, now=1.0)
        assert refused.value.reason == "key_bytes"
        await store.create(job("bob"), tight, now=1.0)
        with pytest.raises(LimitExceeded) as refused:
            await store.create(job("carol"), tight, now=2.0)
        assert refused.value.reason == "disk_bytes"
        assert await store.usage() == 2000 and await store.usage("alice") == 1000

    asyncio.run(scenario())


def test_segments_are_done_once_and_only_while_the_job_runs(store):
    async def scenario() -> None:
        record = await store.create(job(), ROOMY, now=0.0)
        one = Segment(0, 0, "One.")
        assert not await store.segment_done(record.id, one, 100, 22050), "queued: not running yet"
        await store.start(record.id, now=1.0)
        assert await store.segment_done(record.id, one, 100, 22050)
        assert not await store.segment_done(record.id, one, 100, 22050), "done once"
        assert [s.index for s in await store.pending(record.id)] == [1]
        assert (await store.get(record.id)).stored_bytes == 100
        await store.fail_item(record.id, 0, {"message": "no", "code": "x"})
        assert await store.pending(record.id) == [], "a failed item has nothing left to do"
        assert await store.finish(record.id, JobState.CANCELLED, now=2.0, expires=3.0, stored_bytes=0)
        assert not await store.finish(record.id, JobState.SUCCEEDED, now=2.0, expires=3.0, stored_bytes=0)
        assert await store.expired(now=2.5) == [] and await store.expired(now=3.5) == [record.id]
        await store.delete(record.id)
        assert await store.get(record.id) is None and await store.known() == set()

    asyncio.run(scenario())


@pytest.mark.parametrize("header,expected", [
    (None, None), ("bytes=0-99", (0, 99)), ("bytes=100-", (100, 999)), ("bytes=-10", (990, 999)),
    ("bytes=990-5000", (990, 999)), ("bytes=1000-", False), ("bytes=-0", False), ("bytes=5-2", None),
    ("bytes=0-1,5-6", None), ("items=0-1", None), ("bytes=-", None),
])
def test_byte_ranges(header, expected):
    assert parse_range(header, 1000) == expected
