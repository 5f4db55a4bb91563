"""Several `speech-router serve` processes sharing one state store (a real redis-server), in front of emulated nodes.

Two replicas share a module: each test uses its own pool, model or key of their config, so none disturbs
another. A third starts late in one test; the store killed under load has a store and replicas of its own.
"""

from __future__ import annotations

import base64
import contextlib
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from speech_router.emulator.index_tts_vllm import EmulatorConfig
from speech_router.emulator.vllm_omni import VllmOmniConfig
from tests.client import Reply, call
from tests.conftest import Node
from tests.integration.omni import OmniNode
from tests.integration.voice_uploads import ADMIN_KEY, pitch, tone, upload
from tests.processes import RouterProcess, router_process
from tests.state.server import StoreServer, store_server
from tests.worker.conftest import wait_until

METERED, BUSY, PLAIN = "metered-key-0123456789", "busy-key-0123456789", "plain-key-0123456789"
ENV = {"METERED_KEY": METERED, "BUSY_KEY": BUSY, "PLAIN_KEY": PLAIN, "SPEECH_ROUTER_ADMIN_KEY": ADMIN_KEY}
PER_MINUTE = 6
STORE_PASSWORD = "store-password-4f9c2a"
KEYS = [{"name": "metered", "key_env": "METERED_KEY", "requests_per_minute": PER_MINUTE},
        {"name": "busy", "key_env": "BUSY_KEY", "requests_per_minute": 100_000},  # counted in the store, never full
        {"name": "plain", "key_env": "PLAIN_KEY"}]
HEALTH = {"interval": 0.2, "timeout": 1}


@dataclass
class Fleet:
    nodes: dict[str, Node]
    replicas: list[RouterProcess]
    store: StoreServer
    tmp: Path


def replica_config(store: StoreServer, nodes: dict[str, Node], tmp: Path, name: str) -> dict[str, Any]:
    """The config every replica runs, but for its own voice directory (no filesystem is shared)."""
    its = {"type": "index-tts-vllm", "health_check": HEALTH}
    return {
        "server": {"auth": {"keys": KEYS}},
        "pools": {
            # two slots per node, fixed (not learned): what the replicas must keep together
            "held": {**its, "endpoints": [{"url": nodes["held"].url, "name": "held"}], "max_concurrency": 2,
                     "balancer": {"adaptive_concurrency": False}},
            # a slow node listed first, a quick one second: a router that knows nothing tries the first
            "mixed": {**its, "endpoints": [{"url": nodes["slow"].url, "name": "slow"},
                                           {"url": nodes["quick"].url, "name": "quick"}]},
            "omni": {"type": "vllm-omni", "health_check": HEALTH, "endpoints": [{"url": nodes["omni"].url}]},
        },
        "models": {"held": ["held"], "mixed": {"pools": ["mixed"], "fanout": {"enabled": False}},
                   "omni": ["omni"], "cached": {"pools": ["mixed"], "cache": True, "fanout": {"enabled": False}}},
        "voices": {"alloy": {"spk_audio_path": "/data/voices/alloy.wav"}},
        "voice_store": {"directory": str(tmp / name / "voices")},
        "state": {"url": store.url, "prefix": "replicas", "knowledge_interval": 0.2, "voices_interval": 0.2},
    }


def start_replica(running: contextlib.ExitStack, fleet: Fleet, name: str) -> RouterProcess:
    directory = fleet.tmp / name
    directory.mkdir()
    config = replica_config(fleet.store, fleet.nodes, fleet.tmp, name)
    replica = running.enter_context(router_process(config, directory, env=ENV))
    fleet.replicas.append(replica)
    return replica


@contextlib.contextmanager
def running_fleet(server: StoreServer, tmp: Path, delays: dict[str, float]) -> Iterator[Fleet]:
    """The nodes (index-tts-vllm ones with these delays, and a vllm-omni one) and replicas a and b on ``server``."""
    nodes: dict[str, Node] = {name: Node(EmulatorConfig(name=name, delay_s=delay)) for name, delay in delays.items()}
    nodes["omni"] = OmniNode(VllmOmniConfig(name="omni"))
    with contextlib.ExitStack() as running:
        for node in nodes.values():
            running.enter_context(node.server)
        fleet = Fleet(nodes, [], server, tmp)
        start_replica(running, fleet, "a")
        start_replica(running, fleet, "b")
        yield fleet


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    tmp = Path(tmp_path_factory.mktemp("replicas"))
    for server in store_server(tmp):
        with running_fleet(server, tmp, {"held": 1.0, "slow": 0.4, "quick": 0.02}) as fleet:
            yield fleet


def speak(replica: RouterProcess, model: str, text: str = "Spoken by a replica.", voice: str = "alloy") -> Reply:
    return call(replica.url + "/v1/audio/speech", {"model": model, "voice": voice, "input": text,
                                                   "response_format": "wav"}, key=PLAIN)


def health(replica: RouterProcess) -> dict[str, dict[str, Any]]:
    return {ep["name"]: ep for ep in call(replica.url + "/health").json()["endpoints"]}


def test_a_keys_rate_limit_holds_across_replicas(fleet: Fleet) -> None:
    a, b = fleet.replicas[:2]
    statuses = [call((a if i % 2 else b).url + "/v1/models", key=METERED).status for i in range(2 * PER_MINUTE)]
    assert statuses.count(200) == PER_MINUTE and statuses.count(429) == PER_MINUTE
    assert statuses[:PER_MINUTE] == [200] * PER_MINUTE  # the first of the minute go through, whichever replica
    refused = call(a.url + "/v1/models", key=METERED)
    assert refused.status == 429 and 0 < int(refused.headers["Retry-After"]) <= 60
    assert call(a.url + "/v1/models", key=PLAIN).status == 200  # another key is not limited


def test_a_nodes_requests_in_flight_are_bounded_across_replicas(fleet: Fleet) -> None:
    a, b = fleet.replicas[:2]
    node = fleet.nodes["held"]
    node.app.state.emulator.reset()
    replies: list[int] = []

    def send(replica: RouterProcess) -> threading.Thread:
        thread = threading.Thread(target=lambda: replies.append(speak(replica, "held").status))
        thread.start()
        return thread

    first = [send(a), send(a)]  # the node's two slots, taken through replica a
    wait_until(lambda: health(b)["held"].get("external") == 2, what="replica b counting a's requests on the node")
    second = [send(b), send(b)]  # b waits for a slot instead of queueing inside the node
    for thread in first + second:
        thread.join(30)
    assert replies == [200] * 4
    assert node.app.state.emulator.peak == 2 and node.served == 4


def test_a_replica_started_late_routes_with_the_others_knowledge_from_its_first_request(fleet: Fleet) -> None:
    a = fleet.replicas[0]
    for i in range(12):  # a learns both nodes (it tries the quick one too, and explores the slow one)
        assert speak(a, "mixed", f"Sentence number {i} of what replica a learns.").status == 200
    wait_until(lambda: {"slow", "quick"} <= learned(a), what="replica a knowing both nodes")
    time.sleep(0.5)  # two knowledge intervals: published
    with contextlib.ExitStack() as running:
        late = start_replica(running, fleet, "late")
        known = health(late)
        assert known["slow"]["latency"] is not None and known["quick"]["latency"] is not None  # before any request
        assert known["slow"]["latency"]["level"] > 2 * known["quick"]["latency"]["level"]
        first = speak(late, "mixed", "The first request of a replica that started late.")
        assert first.status == 200 and first.headers["x-speech-router-endpoint"] == "quick"


def learned(replica: RouterProcess) -> set[str]:
    return {name for name, ep in health(replica).items() if ep.get("latency")}


def test_a_voice_uploaded_through_one_replica_is_spoken_through_another(fleet: Fleet) -> None:
    a, b = fleet.replicas[:2]
    r = upload(a.url, "Traveller", tone(2.0, hz=220.0))
    assert r.status == 200, r.body
    sha = r.json()["voice"]["sha256"]
    assert not (fleet.tmp / "b" / "voices" / "audio" / f"{sha}.wav").exists()  # nothing shared on disk
    said = speak(b, "omni", voice="traveller")
    assert said.status == 200, said.body[:300]
    wav = (fleet.tmp / "b" / "voices" / "audio" / f"{sha}.wav").read_bytes()  # b fetched it from the store
    sent = fleet.nodes["omni"].bodies[-1]["ref_audio"]  # type: ignore[attr-defined]
    assert base64.b64decode(sent.split(",", 1)[1]) == wav == (fleet.tmp / "a" / "voices" / "audio" /
                                                             f"{sha}.wav").read_bytes()
    assert pitch(said.body) > 0
    assert call(b.url + "/v1/audio/voices/traveller", method="DELETE", key=ADMIN_KEY).status == 200
    wait_until(lambda: speak(a, "omni", voice="traveller").status == 400, what="the deletion reaching replica a")


def test_an_answer_cached_by_one_replica_is_a_hit_on_another(fleet: Fleet) -> None:
    a, b = fleet.replicas[:2]
    text = "A sentence every replica has heard once."
    cached = len(store_keys(fleet.store, "replicas:cache:d:*"))
    assert speak(a, "cached", text).headers["x-speech-router-cache"] == "miss"
    wait_until(lambda: len(store_keys(fleet.store, "replicas:cache:d:*")) > cached,
               what="the answer in the store's shared tier")
    assert speak(b, "cached", text).headers["x-speech-router-cache"] == "hit"  # b's first lookup of it


@pytest.fixture
def killable(tmp_path: Path) -> Iterator[Fleet]:
    """A store of its own (with a password), two replicas on it, and the module's nodes' kind of fleet."""
    for server in store_server(tmp_path, password=STORE_PASSWORD):
        with running_fleet(server, tmp_path, {"held": 0.2, "slow": 0.3, "quick": 0.1}) as fleet:
            yield fleet


def store_up(replica: RouterProcess) -> float | None:
    for line in call(replica.url + "/metrics").body.decode().splitlines():
        if line.startswith("speech_router_state_store_up{"):
            return float(line.rsplit(" ", 1)[1])
    return None


def test_the_store_killed_under_load_fails_no_request_and_is_shared_again_once_back(killable: Fleet) -> None:
    a, b = killable.replicas
    failures: list[str] = []
    done = threading.Event()
    sent = [0]

    def load(replica: RouterProcess, model: str, key: str) -> None:
        while not done.is_set():
            text = f"Load number {sent[0] % 10}."  # ten texts of one length (a fit over a few lengths is noisy)
            r = call(replica.url + "/v1/audio/speech", {"model": model, "voice": "alloy", "input": text,
                                                        "response_format": "wav"}, key=key)
            sent[0] += 1
            if r.status != 200:
                failures.append(f"{replica.url} {model}: {r.status} {r.body[:200]!r}")

    threads = [threading.Thread(target=load, args=(r, m, PLAIN)) for r in (a, b) for m in ("held", "mixed", "cached")]
    threads += [threading.Thread(target=load, args=(r, "mixed", BUSY)) for r in (a, b)]  # a key the store counts
    for thread in threads:
        thread.start()
    try:
        wait_until(lambda: sent[0] > 20, what="load running")
        killable.store.kill()
        wait_until(lambda: store_up(a) == 0 and store_up(b) == 0, what="both replicas on their own state")
        before = sent[0]
        wait_until(lambda: sent[0] > before + 20, what="load served without the store")
        killable.store.start()  # an empty store on the same address
        wait_until(lambda: store_up(a) == 1 and store_up(b) == 1, what="both replicas back on the store")
        wait_until(lambda: len(inflight_entries(killable.store)) == 2, what="both replicas sharing again")
        before = sent[0]
        wait_until(lambda: sent[0] > before + 20, what="load served after the store came back")
    finally:
        done.set()
        for thread in threads:
            thread.join(30)
    assert failures == []
    for replica in (a, b):
        log = replica.log.read_text()
        assert log.count("cannot be used") == 1 and "shares its state again" in log  # said once, and rejoined
        shown = [log, call(replica.url + "/metrics").body.decode(), call(replica.url + "/health").body.decode(),
                 call(replica.url + "/admin/config", key=ADMIN_KEY).body.decode()]
        assert not [text for text in shown if STORE_PASSWORD in text]  # the store's password is never shown


def inflight_entries(server: StoreServer) -> dict[bytes, bytes]:
    with redis_client(server) as client:
        return client.hgetall("replicas:inflight")


def store_keys(server: StoreServer, pattern: str) -> list[bytes]:
    with redis_client(server) as client:
        return client.keys(pattern)


@contextlib.contextmanager
def redis_client(server: StoreServer) -> Iterator[Any]:
    import redis

    client = redis.Redis.from_url(server.url)
    try:
        yield client
    finally:
        client.close()

