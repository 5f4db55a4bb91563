"""The state store's operations, the same against the in-process store and a real Redis server."""

from __future__ import annotations

import asyncio

import pytest

from speech_router.state.store import StateStore, StoreError
from tests.state.conftest import FakeClock

pytestmark = pytest.mark.anyio


async def expire(store: StateStore, clock: FakeClock, seconds: float) -> None:
    """Let ``seconds`` pass for the store: the fake clock for the in-process one, the server's own for Redis."""
    if store.kind == "memory":
        clock.advance(seconds)
    else:
        await asyncio.sleep(seconds)


async def test_values_counters_and_their_time_to_live(store: StateStore, clock: FakeClock) -> None:
    assert await store.get("v") is None
    await store.set("v", b"\x00one")
    await store.set("short", b"x", ttl=0.05)
    assert await store.get("v") == b"\x00one" and await store.get("short") == b"x"
    assert [await store.incr("n"), await store.incr("n")] == [1, 2]
    await expire(store, clock, 0.1)
    assert await store.get("short") is None and await store.get("v") == b"\x00one"
    await store.delete("v")
    assert await store.get("v") is None


async def test_entries_expire_one_by_one_as_a_holder_that_stops_renewing_does(store: StateStore,
                                                                              clock: FakeClock) -> None:
    await store.put_entry("inflight", "replica-a", b"a", ttl=0.05)
    await store.put_entry("inflight", "replica-b", b"b", ttl=30)
    await store.put_entry("inflight", "forever", b"c")
    assert await store.entries("inflight") == {"replica-a": b"a", "replica-b": b"b", "forever": b"c"}
    await expire(store, clock, 0.1)
    assert await store.entries("inflight") == {"replica-b": b"b", "forever": b"c"}
    assert await store.entry("inflight", "replica-a") is None and await store.entry("inflight", "forever") == b"c"
    await store.put_entry("inflight", "replica-a", b"back", ttl=30)  # renewed: counts again
    await store.drop_entry("inflight", "forever")
    assert await store.entries("inflight") == {"replica-a": b"back", "replica-b": b"b"}
    assert await store.entries("nothing") == {}


async def test_a_lease_has_one_holder_until_it_is_released_or_lapses(store: StateStore, clock: FakeClock) -> None:
    assert await store.acquire("job-1", "a", ttl=0.05)
    assert not await store.acquire("job-1", "b", ttl=30)
    assert await store.acquire("job-1", "a", ttl=0.05)  # renewed by its holder
    await store.release("job-1", "b")  # not b's to give back
    assert not await store.acquire("job-1", "b", ttl=30)
    await expire(store, clock, 0.1)
    assert await store.acquire("job-1", "b", ttl=30)  # a stopped renewing
    await store.release("job-1", "b")
    assert await store.acquire("job-1", "a", ttl=30)


async def test_a_bounded_space_evicts_the_least_recently_used_beyond_its_budget(store: StateStore,
                                                                               clock: FakeClock) -> None:
    assert await store.put_bounded("cache", "a", b"1" * 40, ttl=30, budget=100) == 0
    assert await store.put_bounded("cache", "b", b"2" * 40, ttl=30, budget=100) == 0
    assert await store.get_bounded("cache", "a") == b"1" * 40  # a is now the more recently used
    assert await store.put_bounded("cache", "c", b"3" * 40, ttl=30, budget=100) == 1
    assert await store.get_bounded("cache", "b") is None
    assert await store.get_bounded("cache", "a") == b"1" * 40 and await store.get_bounded("cache", "c") == b"3" * 40
    assert await store.put_bounded("cache", "c", b"4" * 50, ttl=30, budget=100) == 0  # replaced, not counted twice
    assert await store.put_bounded("cache", "big", b"5" * 101, ttl=30, budget=100) == 3  # over any budget: not kept
    assert await store.get_bounded("cache", "big") is None and await store.get_bounded("cache", "a") is None
    await store.put_bounded("cache", "soon", b"6", ttl=0.05, budget=100)
    await expire(store, clock, 0.1)
    assert await store.get_bounded("cache", "soon") is None
    assert await store.put_bounded("cache", "d", b"7" * 100, ttl=30, budget=100) == 0  # the expired one's bytes freed


async def test_a_server_that_is_gone_is_a_store_error() -> None:
    from speech_router.state.redis_store import RedisStore
    from tests.processes import free_port

    gone = RedisStore(f"redis://127.0.0.1:{free_port()}/0", prefix="t", timeout=0.5)
    try:
        for call in (gone.ping(), gone.get("k"), gone.entries("k"), gone.acquire("k", "a", 1)):
            with pytest.raises(StoreError):
                await call
    finally:
        await gone.aclose()
