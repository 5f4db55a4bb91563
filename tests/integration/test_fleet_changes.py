"""A fleet that changes under the router, over real HTTP on emulated index-tts-vllm nodes (issue #11).

Nodes slow down and recover, join under load, come back from an ejection with requests queued, answer
a client's mistake with a 500, lose half their number under load; clients read slowly or leave. Every
scenario asserts what clients got and what the router learned; none asserts a duration. Bounded in count
and time, loopback only.
"""

from __future__ import annotations

import asyncio
import socket
import time
from typing import Any

import aiohttp
import pytest

from tests.conftest import fleet_config
from tests.integration.test_reload import ADMIN_KEY, call, write
from tests.integration.test_routing_policy import assert_all_ok, burst, name_of, total, wait_until

pytestmark = pytest.mark.anyio

SPEECH = {"model": "indextts2", "voice": "alloy", "input": "a sentence of some length", "response_format": "wav"}


@pytest.fixture(autouse=True)
def _admin_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SPEECH_ROUTER_ADMIN_KEY", ADMIN_KEY)


def pool_config(*urls: str, **pool: Any) -> dict[str, Any]:
    cfg = fleet_config(*urls)
    gpu = cfg["pools"]["gpu"]
    gpu.update(health_check={"interval": 0.2, "timeout": 1})
    for key, value in pool.items():
        gpu[key] = {**gpu.get(key, {}), **value} if isinstance(value, dict) else value
    return cfg


async def post(session: aiohttp.ClientSession, url: str, body: dict[str, Any] | None = None,
               **headers: str) -> tuple[int, dict[str, str], bytes]:
    async with session.post(url + "/v1/audio/speech", json=body or SPEECH, headers=headers) as resp:
        return resp.status, dict(resp.headers), await resp.read()


async def test_a_fleet_that_slows_down_is_followed_and_nobody_is_ejected(nodes, router):
    a, b = nodes(name="a", delay_s=0.1, slots=4), nodes(name="b", delay_s=0.1, slots=4)
    srv = router(pool_config(a.url, b.url, breaker={"consecutive_failures": 2, "min_requests": 4},
                             retry={"per_try_timeout_floor": 0.15, "per_try_timeout_cap": 10}))
    assert_all_ok(await burst(srv.url, 16, concurrency=4))  # learned: ~0.1 s, per-try timeout 0.3 s
    for node in (a, b):
        node.config.slowdown = 4.0  # 0.4 s: every try times out once at first
    assert_all_ok(await burst(srv.url, 24, concurrency=4))
    assert total(srv.url, "speech_router_endpoint_attempts", outcome="timeout") >= 1  # it did slow down
    assert total(srv.url, "speech_router_ejections") == 0  # the pool slowed together: nobody was ejected
    for node in (a, b):
        node.config.slowdown = 1.0
    assert_all_ok(await burst(srv.url, 16, concurrency=4))
    assert total(srv.url, "speech_router_ejections") == 0


async def served_around_a_reload(srv: Any, path: Any, after: dict[str, Any], clients: int,
                                 body: dict[str, Any] | None = None) -> tuple[list[tuple[float, int, str]], float]:
    """``clients`` clients sending one request after another for a second, then ``after`` reloaded, for three more
    seconds: every (when answered, status, endpoint), and when the reload was applied."""
    results: list[tuple[float, int, str]] = []
    stop = asyncio.Event()

    async def client(session: aiohttp.ClientSession) -> None:
        while not stop.is_set():
            status, headers, _ = await post(session, srv.url, body)
            results.append((time.monotonic(), status, headers.get("x-speech-router-endpoint", "")))

    async with aiohttp.ClientSession() as session:
        tasks = [asyncio.create_task(client(session)) for _ in range(clients)]
        await asyncio.sleep(1.0)
        write(path, after)
        status, reply, _ = await asyncio.to_thread(call, srv.url + "/admin/reload", "POST")
        assert status == 200 and reply["changes"]["added"], reply
        joined = time.monotonic()
        await asyncio.sleep(3.0)
        stop.set()
        await asyncio.gather(*tasks)
    return results, joined


async def test_a_node_added_under_load_takes_its_share_within_seconds(nodes, file_router):
    a, b = nodes(name="a", delay_s=0.2, slots=2), nodes(name="b", delay_s=0.2, slots=2)
    srv, path = file_router(pool_config(a.url, max_concurrency=2))
    # 6 clients at once on one 2-slot node
    results, joined = await served_around_a_reload(srv, path, pool_config(a.url, b.url, max_concurrency=2), 6)
    assert {status for _, status, _ in results} == {200}
    late = [ep for t, _, ep in results if t > joined + 1.0]
    assert late.count(name_of(b)) >= len(late) / 4  # serving, not idle while requests queue for a


async def test_requests_queued_behind_an_ejected_node_go_to_it_as_soon_as_it_recovers(nodes, router):
    a, b = nodes(name="a", delay_s=0.3), nodes(name="b", fail=True)
    srv = router(pool_config(a.url, b.url, max_concurrency=1, balancer={"slow_start": 0},
                             breaker={"consecutive_failures": 1, "base_ejection": 0.5, "max_ejection": 0.5}))
    async with aiohttp.ClientSession() as session:
        first = await asyncio.gather(*(post(session, srv.url) for _ in range(2)))
        assert [r[0] for r in first] == [200, 200]
        await wait_until(lambda: total(srv.url, "speech_router_ejections", endpoint=name_of(b)) >= 1, "ejection")
        b.config.fail = False  # fixed while it is out
        results = await asyncio.gather(*(post(session, srv.url) for _ in range(8)))  # more than a serves quickly
    assert [r[0] for r in results] == [200] * 8
    served_by_b = sum(r[1]["x-speech-router-endpoint"] == name_of(b) for r in results)
    assert served_by_b >= 2  # the recovered node took queued requests (its probe, then more)


async def test_a_missing_reference_file_is_the_clients_400_with_no_ejection_and_no_fallback(nodes, router):
    known = {"/data/voices/alloy.wav"}
    a, b = nodes(name="a", known_paths=set(known)), nodes(name="b", known_paths=set(known))
    cfg = pool_config(a.url, b.url, breaker={"consecutive_failures": 2, "min_requests": 4})
    cfg["pools"]["cpu"] = {"type": "espeak"}
    cfg["models"]["indextts2"] = ["gpu", "cpu"]
    cfg["voices"]["ghost"] = {"spk_audio_path": "/data/voices/ghost.wav", "espeak": "en-us"}
    srv = router(cfg)
    bad = {**SPEECH, "voice": "ghost"}
    async with aiohttp.ClientSession() as session:
        results = await asyncio.gather(*(post(session, srv.url, bad if i % 2 else SPEECH) for i in range(40)))
    good = [r for i, r in enumerate(results) if i % 2 == 0]
    refused = [r for i, r in enumerate(results) if i % 2 == 1]
    assert [r[0] for r in good] == [200] * 20
    assert {r[0] for r in refused} == {400}
    error = __import__("json").loads(refused[0][2])["error"]
    assert error["param"] == "voice" and "ghost" in error["message"] and "/data/" not in error["message"]
    ghost_tries = sum(1 for n in (a, b) for _, body in n.requests if body.get("spk_audio_path") == "/data/voices/ghost.wav")
    assert ghost_tries <= 2 * 20  # one other endpoint at most, never every endpoint
    assert total(srv.url, "speech_router_ejections") == 0
    assert total(srv.url, "speech_router_fallbacks") == 0  # never espeak instead of the cloned voice


async def test_a_reference_file_present_on_one_node_only_is_found_there(nodes, router):
    a = nodes(name="a", known_paths={"/data/voices/alloy.wav"})
    b = nodes(name="b", known_paths={"/data/voices/alloy.wav", "/data/voices/ghost.wav"})
    cfg = pool_config(a.url, b.url)
    cfg["voices"]["ghost"] = {"spk_audio_path": "/data/voices/ghost.wav"}
    srv = router(cfg)
    async with aiohttp.ClientSession() as session:
        results = await asyncio.gather(*(post(session, srv.url, {**SPEECH, "voice": "ghost"}) for _ in range(10)))
    assert [r[0] for r in results] == [200] * 10
    assert {r[1]["x-speech-router-endpoint"] for r in results} == {name_of(b)}


def raw_request(url: str, body: bytes) -> socket.socket:
    """Send a request on a socket with a tiny receive buffer and never read the answer."""
    host, port = url.removeprefix("http://").split(":")
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect((host, int(port)))
    sock.sendall(b"POST /v1/audio/speech HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
    return sock


async def test_clients_that_read_nothing_do_not_hold_the_nodes_slots(nodes, router):
    node = nodes(name="a", delay_s=0.05)
    cfg = pool_config(node.url, max_concurrency=2)
    cfg["models"]["indextts2"] = {"pools": ["gpu"], "fanout": {"enabled": False}}  # one answer, not segments
    srv = router(cfg)
    long_text = {**SPEECH, "input": "a long sentence to make a big answer " * 100}  # ~10 MB of WAV each, more
    # than loopback's socket buffers hold
    body = __import__("json").dumps(long_text).encode()
    sleepers = [raw_request(srv.url, body) for _ in range(8)]
    try:
        await wait_until(lambda: node.served >= 8, "the node answered all eight")
        endpoint = srv.app.state.router.endpoints[0]
        await wait_until(lambda: endpoint.inflight == 0, "slots given back while the clients read nothing")
        async with aiohttp.ClientSession() as session:
            status, _, audio = await post(session, srv.url)
        assert status == 200 and audio[:4] == b"RIFF"
    finally:
        for sock in sleepers:
            sock.close()


async def test_a_client_that_leaves_before_its_answer_cancels_the_nodes_request(nodes, router):
    node = nodes(name="a", delay_s=2.0)
    srv = router(pool_config(node.url, retry={"per_try_timeout_floor": 30, "per_try_timeout_cap": 30}))
    sock = raw_request(srv.url, __import__("json").dumps(SPEECH).encode())
    endpoint = srv.app.state.router.endpoints[0]
    await wait_until(lambda: endpoint.inflight == 1, "the request reached the node")
    sock.close()
    await wait_until(lambda: endpoint.inflight == 0, "the slot given back when the client left")
    await wait_until(lambda: node.app.state.emulator.disconnected == 1, "the node's connection closed")
    assert node.served == 0 or endpoint.window.tries(endpoint.clock()) == 0
    assert endpoint.window.tries(endpoint.clock()) == 0  # no failure of the endpoint
    await wait_until(lambda: total(srv.url, "speech_router_requests", status="499") == 1, "counted as 499")


async def test_losing_half_the_fleet_under_load_queues_instead_of_refusing(nodes, router):
    fleet = [nodes(name=f"n{i}", delay_s=0.05, slots=1) for i in range(4)]
    srv = router(pool_config(*(n.url for n in fleet), max_concurrency=1, max_connections=400,
                             queue={"timeout": 30}))  # room for a busy test machine's slower answers
    assert_all_ok(await burst(srv.url, 20, concurrency=4))  # learned: 0.05 s per request
    for node in fleet[2:]:
        await asyncio.to_thread(node.server.stop)
    results = await burst(srv.url, 150, concurrency=150)  # 150 waiting on 2 nodes: ~4 s of work, within 30 s
    assert [r[0] for r in results].count(429) == 0
    assert_all_ok(results)
    async with aiohttp.ClientSession() as session:  # while it is busy, a client that waits 0.2 s at most is told now
        crowd = [asyncio.create_task(post(session, srv.url)) for _ in range(100)]
        await asyncio.sleep(0.2)
        status, headers, _ = await post(session, srv.url, **{"x-request-timeout": "0.3"})
        await asyncio.gather(*crowd)
    assert status == 429 and int(headers["Retry-After"]) >= 1
