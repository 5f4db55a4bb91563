"""The load poller on a fake node: what it makes of a reading, a failure, a node that is down."""

from __future__ import annotations

import asyncio
import logging
import math
from dataclasses import dataclass

import pytest

from speech_router.backends.base import Backend, Capabilities
from speech_router.config.models import EndpointConfig, LoadSignalConfig
from speech_router.errors import BackendFailed
from speech_router.router.endpoint import Endpoint
from speech_router.router.load import LoadSignals, external_requests

pytestmark = pytest.mark.anyio


@dataclass
class Reading:
    running: float
    waiting: float


class FakeNode(Backend):
    """A backend whose ``load()`` returns (or raises) what the test sets."""

    type = "fake-load"
    capabilities = Capabilities(formats=frozenset({"wav"}))

    def __init__(self) -> None:
        context = None  # a load poller needs no HTTP sessions
        super().__init__(EndpointConfig(url="http://node:1", name="node"), Backend.Options(), context)  # type: ignore
        self.answer: Reading | Exception = Reading(0, 0)

    async def synthesize(self, request):  # type: ignore[no-untyped-def]
        raise NotImplementedError

    async def health(self):  # type: ignore[no-untyped-def]
        raise NotImplementedError

    async def load(self) -> Reading:
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer


class Silent(FakeNode):
    load = None  # type: ignore[assignment]


class Reads:
    """The observer: every read as (external, failed)."""

    def __init__(self) -> None:
        self.reads: list[tuple[int, bool]] = []

    def load_read(self, pool: str, endpoint: str, external: int, failed: bool) -> None:
        self.reads.append((external, failed))


def endpoint(backend: Backend) -> Endpoint:
    ep = Endpoint(backend, "pool", clock=lambda: 0.0, max_concurrency=4)
    ep.healthy = True
    return ep


def test_external_is_what_the_node_has_beyond_our_own_requests():
    assert external_requests(Reading(3, 2), own=1) == 4
    assert external_requests(Reading(1, 0), own=3) == 0  # ours finished there before we counted: never below 0
    assert external_requests(Reading(2.4, 0.4), own=0) == 3
    for bad in (Reading(math.nan, 0), Reading(math.inf, 0), Reading(-1, 0)):
        with pytest.raises(ValueError):
            external_requests(bad, own=0)


async def test_a_reading_sets_external_and_a_drop_wakes_the_pool():
    woken: list[Endpoint] = []
    node = FakeNode()
    ep = endpoint(node)
    signals = LoadSignals(woken.append)
    ep.start(10)  # one of ours in flight
    node.answer = Reading(running=4, waiting=2)
    await signals.read_once(ep)
    assert ep.external == 5 and ep.busy == 6 and woken == []
    node.answer = Reading(running=1, waiting=0)
    await signals.read_once(ep)
    assert ep.external == 0 and woken == [ep]  # capacity freed elsewhere: waiting requests may go now


async def test_a_failed_read_or_a_down_node_falls_back_on_our_own_count(caplog):
    caplog.set_level(logging.INFO, logger="speech_router.router.load")
    woken: list[Endpoint] = []
    node = FakeNode()
    ep = endpoint(node)
    signals = LoadSignals(woken.append)
    signals.observer = seen = Reads()
    signals.plan(ep, LoadSignalConfig(enabled=True, interval=60))
    signals.start(ep)
    try:
        node.answer = Reading(3, 0)
        await signals.read_once(ep)
        assert ep.external == 3
        node.answer = BackendFailed("endpoint node sent unreadable metrics", endpoint="node")
        await signals.read_once(ep)
        await signals.read_once(ep)
        assert ep.external == 0
        assert [failed for _, failed in seen.reads] == [False, True, True]
        assert sum("cannot be read" in r.message for r in caplog.records) == 1  # once per outage
        node.answer = Reading(2, 0)
        await signals.read_once(ep)
        assert ep.external == 2 and any("read again" in r.message for r in caplog.records)
        ep.healthy = False
        await signals.read_once(ep)
        assert ep.external == 0 and seen.reads[-1] == (0, False)  # a node that is down is not asked
    finally:
        await signals.aclose()


async def test_only_pools_that_ask_and_backends_that_can_are_polled():
    signals = LoadSignals(lambda ep: None)
    off, silent, on = endpoint(FakeNode()), endpoint(Silent()), endpoint(FakeNode())
    signals.plan(off, LoadSignalConfig(enabled=False))
    signals.plan(silent, LoadSignalConfig(enabled=True))
    signals.plan(on, LoadSignalConfig(enabled=True, interval=0.05))
    for ep in (off, silent, on):
        signals.start(ep)
    try:
        assert signals.polled == [on]
        on.backend.answer = Reading(2, 1)  # type: ignore[attr-defined]
        for _ in range(100):  # the background poll picks it up (bounded wait, not a timing check)
            if on.external == 3:
                break
            await asyncio.sleep(0.02)
        assert on.external == 3
        signals.stop(on)
        assert on.external == 0 and signals.polled == []
    finally:
        await signals.aclose()
