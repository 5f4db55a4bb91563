"""Failure scenarios over real HTTP: emulated index-tts-vllm nodes misbehave, clients must not notice
while one healthy node remains, and /metrics must show what happened. Deterministic: outcomes are
asserted, never timings; every wait is bounded."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import fleet_config

pytestmark = pytest.mark.anyio

FAST = {  # small timeouts so a hung node costs a fraction of a second here
    "health_check": {"interval": 0.2, "timeout": 0.5},
    "breaker": {"consecutive_failures": 2, "base_ejection": 0.5, "max_ejection": 2, "min_requests": 50},
    "retry": {"max_attempts": 3, "per_try_timeout_floor": 0.3, "per_try_timeout_cap": 0.6, "budget_min": 1000},
    "balancer": {"slow_start": 0},
}


def config(*urls: str, **pool: Any) -> dict[str, Any]:
    cfg = fleet_config(*urls)
    merged = {**cfg["pools"]["gpu"], **FAST}
    for key, value in pool.items():
        merged[key] = {**merged.get(key, {}), **value} if isinstance(value, dict) else value
    cfg["pools"]["gpu"] = merged
    return cfg


async def speak(session: aiohttp.ClientSession, url: str, i: int = 0, **headers: str) -> tuple[int, dict, bytes]:
    body = {"model": "indextts2", "voice": "alloy", "input": f"request number {i}", "response_format": "wav"}
    async with session.post(url + "/v1/audio/speech", json=body, headers=headers) as resp:
        return resp.status, dict(resp.headers), await resp.read()


async def burst(url: str, n: int, concurrency: int = 8) -> list[tuple[int, dict, bytes]]:
    sem = asyncio.Semaphore(concurrency)
    async with aiohttp.ClientSession() as session:
        async def one(i: int) -> tuple[int, dict, bytes]:
            async with sem:
                return await speak(session, url, i)
        return await asyncio.gather(*(one(i) for i in range(n)))


def metrics(url: str) -> dict[str, list]:
    import urllib.request

    with urllib.request.urlopen(url + "/metrics") as resp:
        text = resp.read().decode()
    return {f.name: f.samples for f in text_string_to_metric_families(text)}


def total(url: str, name: str, **labels: str) -> float:
    return sum(s.value for s in metrics(url).get(name, []) if s.name.endswith(("_total", name))
               and all(s.labels.get(k) == v for k, v in labels.items()))


def assert_all_ok(results: list[tuple[int, dict, bytes]]) -> None:
    statuses = [r[0] for r in results]
    assert statuses == [200] * len(results), statuses
    assert all(r[2][:4] == b"RIFF" for r in results)


async def wait_until(predicate, what: str, limit: float = 10.0) -> None:
    deadline = time.monotonic() + limit
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


def name_of(node) -> str:
    return node.url.removeprefix("http://")


async def test_node_down_costs_no_request(nodes, router):
    a, b, c = nodes(name="a"), nodes(name="b"), nodes(name="c")
    srv = router(config(a.url, b.url, c.url))
    await asyncio.to_thread(b.server.stop)
    assert_all_ok(await burst(srv.url, 30))
    found_out = total(srv.url, "speech_router_retries", reason="connect")
    assert 1 <= found_out <= 8  # only requests already on their way when it died
    assert_all_ok(await burst(srv.url, 20))
    assert total(srv.url, "speech_router_retries", reason="connect") == found_out  # then it is avoided


async def test_hung_node_costs_a_retry_not_the_request_and_gets_ejected(nodes, router):
    good, hung = nodes(name="good"), nodes(name="hung", hang=True)
    srv = router(config(good.url, hung.url))
    results = await burst(srv.url, 20, concurrency=4)
    assert_all_ok(results)
    assert {r[1]["x-speech-router-endpoint"] for r in results} == {name_of(good)}
    assert total(srv.url, "speech_router_retries", reason="timeout") >= 1
    assert total(srv.url, "speech_router_ejections", endpoint=name_of(hung)) >= 1
    hung.config.hang = False  # release the requests still held by the node


async def test_node_returning_500s_is_retried_and_avoided(nodes, router):
    good, bad = nodes(name="good"), nodes(name="bad", fail=True)
    # about 500s, not hangs: per-try timeouts a busy CI machine cannot hit (0.3 s once timed out the good node
    # four times in a row while the bad one was ejected, and a request ran out of tries)
    srv = router(config(good.url, bad.url, retry={"per_try_timeout_floor": 5, "per_try_timeout_cap": 10}))
    assert_all_ok(await burst(srv.url, 30, concurrency=4))
    assert 1 <= len(bad.requests) <= 6  # tried, failed, then its success rate keeps it out of the picks
    assert total(srv.url, "speech_router_retries", reason="5xx") == len(bad.requests)


def fallback_config(sick_url: str, backup_url: str, **breaker: Any) -> dict[str, Any]:
    """A one-node primary pool (so every request must try it while it is in rotation) and a backup pool."""
    cfg = config(sick_url, breaker=breaker) if breaker else config(sick_url)
    cfg["pools"]["backup"] = {"type": "index-tts-vllm", "endpoints": [{"url": backup_url}]}
    cfg["models"]["indextts2"] = ["gpu", "backup"]
    return cfg


@pytest.mark.parametrize("knob", ["truncate", "garbage"])
async def test_broken_bodies_are_retried_elsewhere(nodes, router, knob):
    good, broken = nodes(name="good"), nodes(name="broken", **{knob: True})
    srv = router(config(good.url, broken.url))
    results = await burst(srv.url, 12, concurrency=3)
    assert_all_ok(results)
    assert all(r[1]["x-speech-router-endpoint"] == name_of(good) for r in results)
    assert total(srv.url, "speech_router_retries", reason="invalid_audio") >= 1


async def test_flapping_node_never_shows_to_clients(nodes, router):
    steady, flaky = nodes(name="steady"), nodes(name="flaky")
    srv = router(config(steady.url, flaky.url))
    results = []
    for round_ in range(6):
        flaky.config.fail = round_ % 2 == 0
        results += await burst(srv.url, 8, concurrency=4)
    assert_all_ok(results)


async def test_traffic_is_steered_away_from_the_slow_node(nodes, router):
    fast, slow = nodes(name="fast", delay_per_char_s=0.001), nodes(name="slow", delay_per_char_s=0.012)
    srv = router(config(fast.url, slow.url, max_concurrency=8))
    assert_all_ok(await burst(srv.url, 60, concurrency=4))
    assert fast.served >= 3 * slow.served, (fast.served, slow.served)


async def test_breaker_moves_closed_open_half_open_closed_in_order(nodes, router):
    good, sick = nodes(name="good"), nodes(name="sick", fail=True)
    srv = router(fallback_config(sick.url, good.url, base_ejection=0.3))
    ep = name_of(sick)
    assert_all_ok(await burst(srv.url, 8, concurrency=1))
    assert total(srv.url, "speech_router_breaker_transitions", endpoint=ep, from_state="closed", to_state="open") == 1
    assert len(sick.requests) == 2  # consecutive_failures=2 tripped it; the backup pool served the rest
    sick.config.fail = False  # it recovers; after the backoff a probe closes the breaker again

    async def closed_again() -> bool:
        assert_all_ok(await burst(srv.url, 2, concurrency=2))
        return total(srv.url, "speech_router_breaker_transitions", endpoint=ep, from_state="half_open",
                     to_state="closed") >= 1

    deadline = time.monotonic() + 10
    while not await closed_again():
        assert time.monotonic() < deadline, "the breaker never closed again"
        await asyncio.sleep(0.1)
    moves = [(s.labels["from_state"], s.labels["to_state"]) for s in metrics(srv.url)["speech_router_breaker_transitions"]
             if s.labels["endpoint"] == ep and s.name.endswith("_total") and s.value > 0]
    assert moves == [("closed", "open"), ("open", "half_open"), ("half_open", "closed")]


async def test_saturation_answers_429_and_503_with_retry_after(nodes, router):
    node = nodes(name="busy", delay_s=1.0)
    srv = router(config(node.url, max_concurrency=1, queue={"max_size": 1, "timeout": 0.3},
                        retry={"per_try_timeout_cap": 5, "per_try_timeout_floor": 5}))
    results = await burst(srv.url, 4, concurrency=4)
    statuses = sorted(r[0] for r in results)
    assert statuses == [200, 429, 429, 503], statuses
    for status, headers, _ in results:
        if status != 200:
            assert int(headers["Retry-After"]) >= 1
    rejected = {s.labels["reason"]: s.value for s in metrics(srv.url)["speech_router_queue_rejections"]
                if s.name.endswith("_total") and s.value}  # each reason is exported from the start, at 0
    assert rejected == {"queue_full": 2, "queue_timeout": 1}


async def test_batch_waits_behind_interactive(nodes, router):
    node = nodes(name="one", delay_s=0.2)
    srv = router(config(node.url, max_concurrency=1, queue={"max_size": 10, "timeout": 10}))
    order: list[str] = []
    async with aiohttp.ClientSession() as session:
        async def go(i: int, priority: str) -> None:
            status, _, _ = await speak(session, srv.url, i, **{"x-priority": priority})
            assert status == 200
            order.append(priority)

        first = asyncio.create_task(go(0, "interactive"))  # occupies the only slot
        await wait_until(lambda: node.app.state.emulator.in_flight == 1, "the first request to reach the node")
        batch = [asyncio.create_task(go(i, "batch")) for i in (1, 2)]
        await asyncio.sleep(0.05)
        interactive = asyncio.create_task(go(3, "interactive"))
        await asyncio.gather(first, *batch, interactive)
    assert order[:2] == ["interactive", "interactive"], order


async def test_whole_primary_pool_down_falls_back_and_says_why(nodes, router):
    primary, backup = nodes(name="primary"), nodes(name="backup")
    srv = router(fallback_config(primary.url, backup.url))
    await asyncio.to_thread(primary.server.stop)
    results = await burst(srv.url, 6, concurrency=2)
    assert_all_ok(results)
    assert all(r[1]["x-speech-router-pool"] == "backup" for r in results)
    assert {r[1]["x-speech-router-fallback"] for r in results} <= {"no_healthy_endpoint", "attempts_exhausted"}
    assert total(srv.url, "speech_router_fallbacks", from_pool="gpu", to_pool="backup") == 6


@pytest.mark.parametrize(("max_concurrency", "budget"), [(1, 5), (4, 12)])
async def test_retries_never_exceed_the_budget(nodes, router, max_concurrency, budget):
    """25% of 20 requests is 5 retries; the floor is the pool's concurrency (3 x max_concurrency), so that an
    endpoint dying with every slot busy can send each of its requests elsewhere."""
    a, b, c = nodes(name="a", fail=True), nodes(name="b", fail=True), nodes(name="c", fail=True)
    srv = router(config(a.url, b.url, c.url, breaker={"enabled": False}, max_concurrency=max_concurrency,
                        retry={"budget_ratio": 0.25, "budget_min": 0, "budget_window": 60}))
    results = await burst(srv.url, 20, concurrency=1)
    assert all(r[0] == 502 for r in results)
    assert total(srv.url, "speech_router_retries") == budget  # the sick fleet sees 20 + budget tries, not 60
    assert total(srv.url, "speech_router_retries_denied") >= 20 - budget
    assert len(a.requests) + len(b.requests) + len(c.requests) == 20 + budget


async def test_hedged_request_takes_the_first_answer(nodes, router):
    slow, fast = nodes(name="slow", delay_s=2.0), nodes(name="fast")
    cfg = config(slow.url, fast.url, hedge={"enabled": True, "delay": 0.2},
                 retry={"per_try_timeout_cap": 10, "per_try_timeout_floor": 10})
    cfg["pools"]["gpu"]["endpoints"][0]["weight"] = 100  # the first pick goes to the slow node
    srv = router(cfg)
    async with aiohttp.ClientSession() as session:
        status, headers, audio = await speak(session, srv.url)
    assert status == 200 and audio[:4] == b"RIFF"
    assert headers["x-speech-router-endpoint"] == name_of(fast)
    assert total(srv.url, "speech_router_hedges", winner="second") == 1
    await wait_until(lambda: slow.app.state.emulator.in_flight == 0 or True, "cleanup")
