"""The attempt loop with scripted backends (no HTTP): classify, retry, fall back, give slots back."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import numpy as np
import pytest

from speech_router.audio.validate import check_audio
from speech_router.backends.base import Backend, BackendContext
from speech_router.config.models import EndpointConfig, PoolConfig
from speech_router.emulator import audio
from speech_router.errors import BackendFailed, BackendRejected, BackendTimeout
from speech_router.router.attempt import AttemptLoop
from speech_router.router.endpoint import Endpoint
from speech_router.router.events import RouterListener
from speech_router.router.pool import Pool
from speech_router.types import AudioResponse, HealthReport, SynthesisRequest

pytestmark = pytest.mark.anyio


class Scripted(Backend):
    """Answers from a script: ``ok`` (a WAV-ish body), ``hang``, ``reject`` (a missing reference), ``fail``,
    ``slow-body`` (streams its answer in pieces with pauses)."""

    type = "scripted"

    def __init__(self, endpoint, options, context, behaviour: str = "ok") -> None:
        super().__init__(endpoint, options, context)
        self.behaviour = behaviour
        self.calls = 0
        self.closed = 0

    async def synthesize(self, request: SynthesisRequest) -> AudioResponse:
        self.calls += 1
        if self.behaviour == "hang":
            await asyncio.sleep(3600)
        if self.behaviour == "reject":
            raise BackendRejected("the reference audio was not found", endpoint=self.name, param="voice",
                                  try_elsewhere=True)
        if self.behaviour == "fail":
            raise BackendFailed(f"endpoint {self.name} failed (HTTP 500)", endpoint=self.name, status=500)
        pieces = 3 if self.behaviour == "slow-body" else 1

        async def body() -> AsyncIterator[bytes]:
            try:
                if self.behaviour == "wav":
                    yield audio.encode(np.zeros(22050, dtype=np.int16), 22050, "wav")
                    return
                for i in range(pieces):
                    if i:
                        await asyncio.sleep(0.05)
                    yield b"RIFF" + bytes(100)
            finally:
                self.closed += 1

        return AudioResponse(format="wav", chunks=body())

    async def health(self) -> HealthReport:
        return HealthReport(True)


def pool(*behaviours: str, name: str = "p", streaming_verify: bool | None = None, **config) -> Pool:
    cfg = PoolConfig.model_validate({"type": "scripted", "verify_body": streaming_verify, "balancer": {"slow_start": 0},
                                     "retry": {"per_try_timeout_floor": 0.2, "per_try_timeout_cap": 0.2}, **config})
    import time

    eps = []
    for i, behaviour in enumerate(behaviours):
        backend = Scripted(EndpointConfig(name=f"{name}{i}"), Scripted.Options(), BackendContext(name, cfg), behaviour)
        ep = Endpoint(backend, name, clock=time.monotonic, max_concurrency=cfg.max_concurrency, breaker=cfg.breaker,
                      balancer=cfg.balancer, health_check=cfg.health_check)
        ep.record_check(True)
        eps.append(ep)
    return Pool(name, "scripted", eps, cfg, time.monotonic)


def loop_for(*pools: Pool, validate=None) -> AttemptLoop:
    import time

    return AttemptLoop(lambda model: list(pools), time.monotonic, RouterListener(), validate)


def request(text: str = "hello") -> SynthesisRequest:
    return SynthesisRequest(text=text, model="m", voice="alloy", voice_params={"spk_audio_path": "/v/a.wav"})


async def deadline(seconds: float = 10.0) -> float:
    import time

    return time.monotonic() + seconds


async def test_a_client_mistake_goes_to_one_other_endpoint_then_is_the_clients_answer_never_a_fallback():
    primary, fallback = pool("reject", "reject", "reject", "ok"), pool("ok", name="f")
    with pytest.raises(BackendRejected) as rejected:
        await loop_for(primary, fallback).run(request(), deadline=await deadline())
    assert rejected.value.param == "voice"
    calls = [ep.backend.calls for ep in primary.endpoints]
    assert sum(calls) == 2  # the first endpoint and one other, not every endpoint
    assert fallback.endpoints[0].backend.calls == 0  # a client mistake never falls back to another pool
    assert all(ep.window.tries(ep.clock()) == 0 and ep.breaker.state.value == "closed" for ep in primary.endpoints)


async def test_a_failing_endpoint_is_retried_elsewhere_and_counted_against_it():
    p = pool("fail", "ok")
    p.endpoints[1].picks = 10  # the first pick goes to the failing endpoint
    result = await loop_for(p).run(request(), deadline=await deadline())
    assert result.endpoint is p.endpoints[1] and result.attempts == 2
    assert p.endpoints[0].window.failures == 1


async def test_each_timeout_doubles_the_next_tries_time():
    p = pool("hang", "hang", "hang", retry={"per_try_timeout_floor": 0.05, "per_try_timeout_cap": 0.05,
                                            "budget_min": 10})
    seen: list[float] = []
    loop = loop_for(p)
    original = loop.attempt

    async def spy(pool, lease, req, timeout, **kw):
        seen.append(timeout)
        return await original(pool, lease, req, timeout, **kw)

    loop.attempt = spy  # type: ignore[method-assign]
    with pytest.raises(BackendTimeout):  # every endpoint hung: the last try's timeout
        await loop.run(request(), deadline=await deadline())
    assert seen == pytest.approx([0.05, 0.1, 0.2])
    assert all(ep.inflight == 0 for ep in p.endpoints)


async def test_a_cancelled_request_frees_its_slot_and_counts_against_nobody():
    p = pool("hang")
    task = asyncio.create_task(loop_for(p).run(request(), deadline=await deadline()))
    await asyncio.sleep(0.02)
    assert p.endpoints[0].inflight == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    ep = p.endpoints[0]
    assert ep.inflight == 0 and ep.window.tries(ep.clock()) == 0


async def test_a_streamed_answer_frees_its_slot_when_the_node_is_done_not_when_the_client_is():
    p = pool("slow-body", streaming_verify=False)
    result = await loop_for(p).run(request(), deadline=await deadline())
    ep = p.endpoints[0]
    assert ep.inflight == 1  # the node is still sending
    await asyncio.sleep(0.3)  # nobody reads the body: it is read ahead all the same
    assert ep.inflight == 0 and ep.served == 1
    chunks = [chunk async for chunk in result.response.chunks]
    assert len(chunks) == 3


async def test_closing_a_streamed_answer_early_closes_the_nodes_body():
    p = pool("slow-body", streaming_verify=False)
    result = await loop_for(p).run(request(), deadline=await deadline())
    await result.response.aclose()
    ep = p.endpoints[0]
    assert ep.inflight == 0 and ep.backend.closed == 1 and ep.window.tries(ep.clock()) == 0


async def test_whole_answers_are_read_within_the_try():
    p = pool("slow-body")
    result = await loop_for(p).run(request(), deadline=await deadline(), whole=True)
    assert p.endpoints[0].inflight == 0
    assert len([chunk async for chunk in result.response.chunks]) == 3


async def test_an_answer_that_is_not_valid_audio_is_retried_elsewhere_before_any_byte_goes_out():
    p = pool("ok", "wav")  # "ok" answers RIFF and zeros: not a WAV a client may have
    p.endpoints[1].picks = 10  # the first pick goes to the broken one
    result = await loop_for(p, validate=check_audio).run(request(), deadline=await deadline())
    assert result.endpoint is p.endpoints[1] and result.attempts == 2
    assert p.endpoints[0].window.failures == 1  # the node's fault


async def test_segments_of_one_text_are_spread_over_the_fleet_not_gathered_by_voice_affinity():
    p = pool("ok")
    asked: list[str | None] = []
    acquire = p.acquire

    async def spy(ticket):
        asked.append(ticket.affinity)
        return await acquire(ticket)

    p.acquire = spy  # type: ignore[method-assign]
    await loop_for(p).run(request(), deadline=await deadline(), whole=True)
    await loop_for(p).run(request(), deadline=await deadline(), whole=True, spread=True)
    assert asked == ["alloy", None]  # a plain request asks for its voice's endpoint; a segment does not
