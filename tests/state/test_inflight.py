"""Requests in flight shared between replicas: the others' count is each endpoint's external load; a replica that
stops renewing, or the store failing, stops counting; a pool whose nodes report their own load keeps that."""

from __future__ import annotations

import pytest

from speech_router.router.endpoint import Endpoint
from speech_router.state.guard import Guard
from speech_router.state.inflight import KEY, InflightSharing, others
from speech_router.state.memory import MemoryStore
from tests.state.conftest import FakeClock
from tests.state.fakes import FlakyStore, fake_endpoint

pytestmark = pytest.mark.anyio


class Replica:
    """One replica's endpoints (the same nodes as the others'), and the pools it woke."""

    def __init__(self, store: MemoryStore, name: str, *, polled: frozenset[str] = frozenset()) -> None:
        self.endpoints = [fake_endpoint("a"), fake_endpoint("b")]
        self.woken: list[str] = []
        self.guard = Guard(store, timeout=1, where="memory")
        self.sharing = InflightSharing(self.guard, name, lease=3.0, interval=0.1, endpoints=lambda: self.endpoints,
                                       polled=lambda ep: ep.name in polled, wake=lambda ep: self.woken.append(ep.name))

    def ep(self, name: str) -> Endpoint:
        return next(ep for ep in self.endpoints if ep.name == name)


async def test_each_replica_counts_the_others_requests_and_wakes_its_pool_when_they_fall(clock: FakeClock) -> None:
    store = MemoryStore(clock)
    one, two = Replica(store, "one"), Replica(store, "two")
    tokens = [one.ep("a").start(10) for _ in range(3)]
    one.ep("b").start(10)
    await one.sharing.exchange(0.0)
    await two.sharing.exchange(0.0)
    assert (two.ep("a").external, two.ep("b").external) == (3, 1)
    assert two.ep("a").busy == 3 and one.ep("a").external == 0  # its own requests are not "others'"
    assert two.sharing.replicas() == 2
    one.ep("a").finish(tokens[0])
    await one.sharing.exchange(0.2)
    await two.sharing.exchange(0.2)
    assert two.ep("a").external == 2 and two.woken == ["a"]  # a slot freed elsewhere: its waiting requests may go
    clock.advance(3.1)  # replica one stops renewing (it died): its requests stop counting after the lease
    await two.sharing.exchange(3.4)
    assert (two.ep("a").external, two.ep("b").external) == (0, 0)
    assert two.sharing.replicas() == 1


async def test_a_replica_that_stops_withdraws_its_requests_at_once(clock: FakeClock) -> None:
    store = MemoryStore(clock)
    one, two = Replica(store, "one"), Replica(store, "two")
    one.ep("a").start(10)
    await one.sharing.exchange(0.0)
    assert "one" in await store.entries(KEY)
    await one.sharing.aclose()
    await two.sharing.exchange(0.0)
    assert two.ep("a").external == 0 and "one" not in await store.entries(KEY)


async def test_a_node_that_reports_its_own_load_is_not_counted_twice(clock: FakeClock) -> None:
    store = MemoryStore(clock)
    one, two = Replica(store, "one"), Replica(store, "two", polled=frozenset({"a"}))
    one.ep("a").start(10)
    one.ep("b").start(10)
    two.ep("a").load_reported(5)  # what node a itself says (every replica's requests, and anyone else's)
    await one.sharing.exchange(0.0)
    await two.sharing.exchange(0.0)
    assert two.ep("a").external == 5 and two.ep("b").external == 1


async def test_while_the_store_fails_each_replica_counts_its_own_requests_only() -> None:
    store = FlakyStore()
    one, two = Replica(store, "one"), Replica(store, "two")
    one.ep("a").start(10)
    await one.sharing.exchange(0.0)
    await two.sharing.exchange(0.0)
    assert two.ep("a").external == 1
    store.down = True
    await two.sharing.exchange(0.1)
    assert two.ep("a").external == 0 and not two.guard.up
    await two.guard.aclose()


def test_what_another_replica_wrote_is_read_only_when_it_is_a_count():
    entries = {"me": b'{"gpu/a": 7}', "x": b'{"gpu/a": 2, "gpu/b": -1, "gpu/c": true, "gpu/d": "3", "gpu/e": 1.5}',
               "y": b"not json", "z": b"[1, 2]", "w": b'{"gpu/a": 10000000000}'}
    assert others(entries, "me") == {"gpu/a": 100_000}  # bounded, like a node's own report
    assert others({"x": b'{"gpu/a": 2}', "y": b'{"gpu/a": 3}'}, "me") == {"gpu/a": 5}
