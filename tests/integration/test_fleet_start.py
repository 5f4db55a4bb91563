"""Good from the first second (issue #17), over real HTTP on emulated index-tts-vllm nodes.

A router that starts under load, a fleet that restarts under load, a slow node judged too slow at
first, a node added under light load, a node that hangs and recovers. Each asserts what clients got and
what the nodes saw; none asserts a duration beyond generous bounds. Bounded in count and time, loopback
only. (A pool setting changed by a reload: test_reload.py.)
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import aiohttp
import pytest

from tests.integration.test_fleet_changes import SPEECH, pool_config, post, served_around_a_reload
from tests.integration.test_reload import ADMIN_KEY, backends
from tests.integration.test_routing_policy import name_of, wait_until

pytestmark = pytest.mark.anyio


@pytest.fixture(autouse=True)
def _admin_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SPEECH_ROUTER_ADMIN_KEY", ADMIN_KEY)


def text(chars: int) -> dict[str, Any]:
    return {**SPEECH, "input": ("word " * chars)[:chars]}


async def test_a_router_started_under_load_uses_every_slot_of_the_fleet_at_once(nodes, router):
    fleet = [nodes(name=f"n{i}", delay_s=0.4, slots=4) for i in range(3)]
    srv = router(pool_config(*(n.url for n in fleet), max_concurrency=4))
    async with aiohttp.ClientSession() as session:  # nothing learned yet: twelve requests, twelve slots
        results = await asyncio.gather(*(post(session, srv.url) for _ in range(12)))
    assert [r[0] for r in results] == [200] * 12
    assert [n.app.state.emulator.peak for n in fleet] == [4, 4, 4]  # every node full at once, nobody waited


async def test_a_fleet_restarted_together_is_found_within_seconds_and_used_at_full_width(nodes, router):
    fleet = [nodes(name=f"n{i}", delay_s=0.4, slots=4) for i in range(3)]
    srv = router(pool_config(*(n.url for n in fleet), max_concurrency=4, balancer={"slow_start": 30},
                             health_check={"interval": 30, "unhealthy_interval": 0.2}))
    async with aiohttp.ClientSession() as session:
        assert {(await post(session, srv.url))[0] for _ in range(6)} == {200}
        for node in fleet:  # the whole fleet restarts (a new model, a node pool replaced)
            node.server.stop()
        await post(session, srv.url)  # refused everywhere: every endpoint is marked down at once
        await wait_until(lambda: all(e["state"] == "down" for e in backends(srv.url)["backends"]), "all down")
        for node in fleet:
            node.server.start()
            node.app.state.emulator.reset()
        # checked every 0.2 s while down (not every 30 s): back in rotation at once, all joining together
        await wait_until(lambda: all(e["state"] == "up" for e in backends(srv.url)["backends"]), "all up", 5.0)
        results = await asyncio.gather(*(post(session, srv.url) for _ in range(12)))
    assert [r[0] for r in results] == [200] * 12
    # a 30 s slow start would let each node take one at first; the fleet came back together, so nobody is ramped
    assert [n.app.state.emulator.peak for n in fleet] == [4, 4, 4]


async def test_a_slow_node_judged_too_slow_at_first_still_takes_the_short_texts_of_a_queue(nodes, router):
    quick = [nodes(name=f"q{i}", delay_s=0.05, delay_per_char_s=0.004, slots=1) for i in range(2)]
    slow = nodes(name="slow", delay_s=0.05, delay_per_char_s=0.004, slots=1, slowdown=16)
    srv = router(pool_config(*(n.url for n in (*quick, slow)), max_concurrency=1, balancer={"slow_start": 0}))
    async with aiohttp.ClientSession() as session:
        for chars in (20, 60, 120, 200, 20, 60, 120, 200):  # each learns its speed; the slow one at 16x...
            await asyncio.gather(*(post(session, srv.url, text(chars)) for _ in range(3)))
        slow.config.slowdown = 4  # ...but it is 4x: judged four times too slow
        longs = [asyncio.create_task(post(session, srv.url, text(200))) for _ in range(8)]  # ~0.85 s each on a quick
        await asyncio.sleep(0.1)  # node, 3.4 on the slow one: they wait for the quick ones
        shorts = await asyncio.gather(*(post(session, srv.url, text(20)) for _ in range(3)))
        await asyncio.gather(*longs)
    assert [r[0] for r in shorts] == [200] * 3
    # behind eight long texts a short one would start in ~3 s on a quick node: the idle slow node is done sooner
    assert any(r[1]["x-speech-router-endpoint"] == name_of(slow) for r in shorts)


async def test_a_node_added_under_light_load_gets_a_request_within_a_second(nodes, file_router):
    a, b = nodes(name="a", delay_s=0.1, slots=4), nodes(name="b", delay_s=0.1, slots=4)
    srv, path = file_router(pool_config(a.url, max_concurrency=4))
    # four clients, one short request after another
    served, joined = await served_around_a_reload(srv, path, pool_config(a.url, b.url, max_concurrency=4), 4, text(30))
    assert {status for _, status, _ in served} == {200}
    first = min((t for t, _, ep in served if ep == name_of(b)), default=None)
    assert first is not None and first - joined < 1.0
    later = [ep for t, _, ep in served if t > joined + 1.0]
    assert later.count(name_of(b)) >= len(later) / 4  # and a share of the traffic (a half, when equal)


async def test_a_node_that_hangs_costs_clients_little_and_is_back_at_its_share_soon_after(nodes, router):
    fleet = [nodes(name=f"n{i}", delay_s=0.1, slots=4) for i in range(3)]
    hung = fleet[0]
    srv = router(pool_config(*(n.url for n in fleet), max_concurrency=4,
                             retry={"per_try_timeout_floor": 0.3, "per_try_timeout_cap": 30},
                             breaker={"consecutive_failures": 2, "base_ejection": 0.5}))
    waits: list[tuple[float, float, int, str]] = []
    stop = asyncio.Event()

    async def client(session: aiohttp.ClientSession) -> None:
        while not stop.is_set():
            start = time.monotonic()
            status, headers, _ = await post(session, srv.url, text(30))
            waits.append((start, time.monotonic() - start, status, headers.get("x-speech-router-endpoint", "")))

    async with aiohttp.ClientSession() as session:
        clients = [asyncio.create_task(client(session)) for _ in range(6)]
        await asyncio.sleep(1.0)
        hung.config.hang = True  # answers nothing...
        await asyncio.sleep(4.0)
        hung.config.hang = False  # ...then as before
        recovered = time.monotonic()
        await asyncio.sleep(4.0)
        stop.set()
        await asyncio.gather(*clients)
    assert {status for _, _, status, _ in waits} == {200}
    # the previous router raised the node's timeout with each timeout (0.3 -> 1 -> 2.5 -> 6 s...) and the client
    # whose request went there waited that long; a suspect's try is hedged and its timeout stays its peers' (a bound
    # for a loaded machine: here the waits are ~0.6 s)
    assert max(wait for _, wait, _, _ in waits) < 3.0
    late = [ep for start, _, _, ep in waits if start > recovered + 1.5]
    state = next(e for e in backends(srv.url)["backends"] if e["name"] == name_of(hung))
    # its share is a third; the previous router gave it about 1 %
    assert late.count(name_of(hung)) >= len(late) / 8, json.dumps(state)

