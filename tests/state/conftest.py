"""Fixtures of the state store's tests: a real server per module, and a store of each kind over it."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from speech_router.state.memory import MemoryStore
from speech_router.state.store import StateStore
from tests.state.server import StoreServer, store_server

_prefixes = itertools.count()


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StoreServer]:
    yield from store_server(Path(tmp_path_factory.mktemp("store")))


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(params=["memory", "redis"])
async def store(request: pytest.FixtureRequest, clock: FakeClock) -> AsyncIterator[StateStore]:
    """The same tests against both implementations (each Redis test under its own key prefix)."""
    if request.param == "memory":
        yield MemoryStore(clock)
        return
    from speech_router.state.redis_store import RedisStore

    server: StoreServer = request.getfixturevalue("redis_server")
    redis = RedisStore(server.url, prefix=f"test{next(_prefixes)}", timeout=2.0)
    try:
        yield redis
    finally:
        await redis.aclose()
