"""The store failing never fails a request: a failure is a fallback at once, said once, shown in the metric, and
the replica rejoins when the store answers again."""

from __future__ import annotations

import asyncio
import logging

import pytest

from speech_router.metrics import Metrics
from speech_router.state.guard import Guard
from tests.state.fakes import FlakyStore

pytestmark = pytest.mark.anyio


def up_value(metrics: Metrics) -> float | None:
    return metrics.registry.get_sample_value("speech_router_state_store_up", {"store": "memory"})


async def test_a_failing_store_gives_the_fallback_is_said_once_and_is_rejoined(caplog: pytest.LogCaptureFixture
                                                                              ) -> None:
    store, metrics = FlakyStore(), Metrics()
    guard = Guard(store, timeout=1, where="memory://", observer=metrics, retry_interval=0.01)
    rejoined = asyncio.Event()

    async def again() -> None:
        rejoined.set()

    guard.rejoined.append(again)
    await store.set("k", b"v")
    assert await guard.call(lambda: store.get("k"), b"local") == b"v" and up_value(metrics) == 1
    store.down = True
    with caplog.at_level(logging.INFO, logger="speech_router.state"):
        for _ in range(5):
            assert await guard.call(lambda: store.get("k"), b"local") == b"local"
        calls = store.calls
        assert await guard.call(lambda: store.get("k"), b"local") == b"local"
        assert store.calls == calls  # down: not asked on the request path at all
        assert not guard.up and up_value(metrics) == 0
        store.down = False
        await asyncio.wait_for(rejoined.wait(), 10)
    assert guard.up and up_value(metrics) == 1
    assert await guard.call(lambda: store.get("k"), b"local") == b"v"
    lines = [r.getMessage() for r in caplog.records]
    assert sum("cannot be used" in line for line in lines) == 1
    assert sum("shares its state again" in line for line in lines) == 1
    assert metrics.registry.get_sample_value("speech_router_state_store_failures_total", {"store": "memory"}) == 1
    await guard.aclose()


async def test_a_store_that_does_not_answer_in_time_is_a_fallback_too() -> None:
    store = FlakyStore()

    async def hangs() -> bytes:
        await asyncio.sleep(60)
        return b"late"

    guard = Guard(store, timeout=0.05, where="memory://", retry_interval=60)
    assert await guard.call(hangs, b"local") == b"local" and not guard.up
    await guard.aclose()
