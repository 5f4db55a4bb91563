"""Load signals over real HTTP: a router reads each vllm-omni node's own queue and steers around load that is
not its own (another replica's requests, sent here straight to the node).

No timing is asserted: the tests wait (bounded) until the router has read the node's load, then look at
where requests went.
"""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from tests.client import call
from tests.integration.omni import OmniNode, data_url
from tests.integration.voice_uploads import tone, wait_until

pytestmark = pytest.mark.anyio

REFERENCE = tone(1.5)
LONG_TEXT = "held " * 400  # 2,000 characters: with delay_per_char 0.05 s it holds a slot for 100 s


def config(*urls: str, load_signal: bool) -> dict:
    return {"pools": {"omni": {"type": "vllm-omni", "endpoints": [{"url": u} for u in urls], "max_concurrency": 4,
                               "health_check": {"interval": 0.2, "timeout": 1},
                               "balancer": {"slow_start": 0},
                               "load_signal": {"enabled": load_signal, "interval": 0.05}}},
            "models": {"omni": ["omni"]}, "voices": {"alloy": {"ref_audio": data_url(REFERENCE)}}}


def mine(node: OmniNode) -> list[dict]:
    """Our requests on ``node`` (not the other replica's long ones)."""
    return [body for body in node.bodies if body["input"] != LONG_TEXT]


def external(url: str, name: str) -> int:
    return next(e.get("external", 0) for e in call(url + "/health").json()["endpoints"] if e["name"] == name)


async def occupy(node_url: str, n: int) -> list[asyncio.Task[None]]:
    """``n`` long requests straight to the node, as another router replica would send them; never awaited."""
    session = aiohttp.ClientSession()

    async def one() -> None:
        body = {"input": LONG_TEXT, "ref_audio": data_url(REFERENCE), "response_format": "wav"}
        async with session.post(node_url + "/v1/audio/speech", json=body) as resp:
            await resp.read()

    tasks = [asyncio.create_task(one()) for _ in range(n)]
    tasks.append(asyncio.create_task(_close_when_cancelled(session)))
    return tasks


async def _close_when_cancelled(session: aiohttp.ClientSession) -> None:
    try:
        await asyncio.Event().wait()
    finally:
        await session.close()


@pytest.mark.parametrize("load_signal", [True, False], ids=["signal-on", "signal-off"])
async def test_a_node_busy_with_another_replicas_requests_gets_fewer_of_ours(omni_nodes, router, load_signal):
    busy = omni_nodes(name="busy", slots=4, delay_per_char_s=0.05)
    idle = omni_nodes(name="idle", slots=4, delay_per_char_s=0.05)
    srv = router(config(busy.url, idle.url, load_signal=load_signal))
    others = await occupy(busy.url, 4)  # every engine slot of `busy` is taken by someone else
    try:
        await asyncio.to_thread(wait_until, lambda: busy.app.state.emulator.busy == 4, what="the busy node's slots")
        if load_signal:
            await asyncio.to_thread(wait_until, lambda: external(srv.url, busy.name) == 4,
                                    what="the router to read the node's load")
        async with aiohttp.ClientSession() as session:
            async def ours() -> int:
                body = {"model": "omni", "voice": "alloy", "input": "short one", "response_format": "wav"}
                async with session.post(srv.url + "/v1/audio/speech", json=body) as resp:
                    await resp.read()
                    return resp.status

            sent = [asyncio.create_task(ours()) for _ in range(4)]
            await asyncio.to_thread(wait_until, lambda: len(mine(busy)) + len(mine(idle)) >= 4,
                                    what="our requests to reach the nodes")
            on_busy = len(mine(busy))
            if load_signal:
                assert on_busy == 0 and len(mine(idle)) == 4  # all steered to the node that is really free
                assert await asyncio.gather(*sent) == [200] * 4
            else:
                assert on_busy >= 1  # blind to the other replica: some of ours queue behind its requests
                for task in sent:
                    task.cancel()
    finally:
        for task in others:
            task.cancel()
        await asyncio.gather(*others, return_exceptions=True)
    metrics = call(srv.url + "/metrics").body.decode()
    exported = [line for line in metrics.splitlines() if line.startswith("speech_router_endpoint_external_requests{")]
    assert bool(exported) == load_signal  # polled endpoints only
