"""A task cancelled in the very step its awaited call finishes still stops (issue #22).

On Python 3.11, ``asyncio.wait_for`` returned the call's result and dropped such a cancel: the router's
health-check loop then ran on, and its shutdown (SIGTERM, a test's teardown) waited for it forever. Each test
here makes the call finish and the cancel arrive in the same step, deterministically.
"""

from __future__ import annotations

import asyncio

import pytest

from speech_router.backends.base import BackendContext
from speech_router.config.models import EndpointConfig, HealthCheckConfig
from speech_router.router.choice import Ticket
from speech_router.router.endpoint import Endpoint
from speech_router.router.health import run_checks
from speech_router.router.outlier import Outcome
from speech_router.types import AudioResponse, HealthReport, SynthesisRequest
from tests.unit.test_attempt import Scripted, deadline, loop_for, pool, request

pytestmark = pytest.mark.anyio


class CancelsOnAnswer(Scripted):
    """Cancels ``victim`` (the task waiting on it) just as it answers a health check or a synthesis."""

    victim: asyncio.Task[object] | None = None

    async def health(self) -> HealthReport:
        assert self.victim is not None
        self.victim.cancel()
        return HealthReport(True)

    async def synthesize(self, request: SynthesisRequest) -> AudioResponse:
        assert self.victim is not None
        self.victim.cancel()
        return await super().synthesize(request)


async def stops(task: asyncio.Task[object]) -> bool:
    """Whether ``task`` ended as cancelled (bounded wait: a lost cancel shows as a task still running)."""
    done, _ = await asyncio.wait({task}, timeout=5)
    if not done:
        task.cancel()  # the test has failed; do not leave it running
        await asyncio.wait({task}, timeout=1)
        return False
    return task.cancelled()


async def test_a_health_check_loop_cancelled_as_the_answer_arrives_stops():
    backend = CancelsOnAnswer(EndpointConfig(name="n"), CancelsOnAnswer.Options(), None)
    ep = Endpoint(backend, "p", clock=lambda: 0.0, max_concurrency=1,
                  health_check=HealthCheckConfig(interval=0.01, timeout=1))
    backend.victim = asyncio.create_task(run_checks(ep))
    assert await stops(backend.victim)


async def test_a_try_cancelled_as_the_node_answers_stops_and_gives_its_slot_back():
    p = pool("ok")
    ep = p.endpoints[0]
    racing = CancelsOnAnswer(EndpointConfig(name="p0"), CancelsOnAnswer.Options(), BackendContext("p", p.config))
    ep.backend = racing
    racing.victim = asyncio.create_task(loop_for(p).run(request(), deadline=await deadline(), whole=True))
    assert await stops(racing.victim)
    assert ep.inflight == 0


async def test_a_queued_request_cancelled_as_its_slot_frees_stops_and_gives_the_slot_back():
    p = pool("ok", max_concurrency=1, queue={"timeout": 5})
    ep = p.endpoints[0]
    first = await p.acquire(Ticket(chars=5))
    waiting = asyncio.create_task(p.acquire(Ticket(chars=5)))
    while not p.scheduler.depth():  # queued behind the first
        await asyncio.sleep(0)
    p.finish(first, Outcome.OK)  # the slot goes to the waiting request...
    waiting.cancel()  # ...in the same step as its client leaves
    assert await stops(waiting)
    assert ep.inflight == 0
