"""Hot reload, drain and the admin API, against emulated nodes and a real router on loopback.

The router is built from a YAML file here (``create_app(config_path=...)``) so reloads read it back
exactly as in production.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import yaml

from speech_router.api.app import create_app
from speech_router.emulator.serve import ServerHandle
from speech_router.plugins.manager import create_plugin_manager
from tests.integration.test_cli import serving

ADMIN_KEY = "admin-test-key"
SPEECH = {"model": "tts-1", "input": "reload me", "voice": "alloy", "response_format": "wav"}


@pytest.fixture(autouse=True)
def _admin_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SPEECH_ROUTER_ADMIN_KEY", ADMIN_KEY)


def config(*urls: str, watch: bool = False, **pool: Any) -> dict[str, Any]:
    endpoints = [{"url": u, "name": name} for name, u in urls] if urls and isinstance(urls[0], tuple) else \
        [{"url": u} for u in urls]
    return {
        "server": {"watch_config": watch},
        "pools": {"gpu": {"type": "index-tts-vllm", "endpoints": endpoints, "max_concurrency": 4,
                          "health_check": {"interval": 0.2, "timeout": 1}, **pool}},
        "models": {"tts-1": ["gpu"]},
        "voices": {"alloy": {"spk_audio_path": "/data/voices/alloy.wav"}},
    }


def write(path: Path, data: dict[str, Any] | str) -> None:
    """Replace the file atomically, as editors and Kubernetes do."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    os.replace(tmp, path)


@pytest.fixture
def file_router(tmp_path: Path) -> Iterator[Callable[[dict[str, Any]], tuple[ServerHandle, Path]]]:
    started: list[ServerHandle] = []

    def start(data: dict[str, Any]) -> tuple[ServerHandle, Path]:
        path = tmp_path / "speech-router.yaml"
        write(path, data)
        handle = ServerHandle(create_app(pm=create_plugin_manager(load_entrypoints=False), config_path=str(path)))
        handle.start()
        started.append(handle)
        return handle, path

    yield start
    for handle in started:
        handle.stop()


def call(url: str, method: str = "GET", body: Any = None, key: str | None = ADMIN_KEY,
         timeout: float = 30) -> tuple[int, Any, dict[str, str]]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data if method == "POST" else None, method=method)
    if method == "POST" and data is None:
        req.data = b""
    req.add_header("Content-Type", "application/json")
    if key:
        req.add_header("Authorization", f"Bearer {key}")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            raw, status, headers = resp.read(), resp.status, dict(resp.headers)
    except urllib.error.HTTPError as exc:
        raw, status, headers = exc.read(), exc.code, dict(exc.headers)
    ctype = headers.get("content-type", "")
    return status, (json.loads(raw) if ctype.startswith("application/json") else raw), headers


def backends(url: str) -> dict[str, Any]:
    status, body, _ = call(url + "/admin/backends")
    assert status == 200, body
    return body


def wait_for(check: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.05)


def metric(url: str, line_start: str) -> float:
    _, text, _ = call(url + "/metrics")
    for line in text.decode().splitlines():
        if line.startswith(line_start):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def speak(url: str) -> tuple[int, bytes, dict[str, str]]:
    status, body, headers = call(url + "/v1/audio/speech", "POST", SPEECH, key=None)
    return status, body, headers


def test_reloading_repeatedly_under_load_drops_no_request(nodes, file_router):
    fleet = [nodes(name=f"n{i}", delay_s=0.02) for i in range(3)]
    named = [(f"n{i}", n.url) for i, n in enumerate(fleet)]
    versions = [
        config(*named[:2]),
        config(*named),                                        # a node joins
        config(*named[1:]),                                    # one leaves (drained)
        config(named[1], (named[2][0], named[2][1]), max_concurrency=2),  # pool-level change: all replaced
        "pools: {gpu: {type: index-tts-vllm, endpoints: [{url: 'not a url'}]}}\nmodels: {tts-1: [nope]}\n",  # refused
        config(*named[:2]),
    ]
    router, path = file_router(versions[0])
    total, workers = 240, 8
    results: list[tuple[int, int]] = []
    lock = threading.Lock()
    done = threading.Event()

    def client(n: int) -> None:
        for _ in range(n):
            status, body, _ = speak(router.url)
            with lock:
                results.append((status, len(body)))

    reloads: list[dict[str, Any]] = []

    def reloader() -> None:
        i = 1
        while not done.is_set() and len(reloads) < 60:
            write(path, versions[i % len(versions)])
            status, body, _ = call(router.url + "/admin/reload", "POST")
            assert status in (200, 422), body
            reloads.append(body)
            i += 1
            time.sleep(0.03)

    thread = threading.Thread(target=reloader)
    thread.start()
    try:
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(client, [total // workers] * workers))
    finally:
        done.set()
        thread.join(30)

    assert len(results) == total  # every request sent was answered...
    failed = [r for r in results if r[0] != 200 or r[1] <= 44]
    assert failed == []  # ...with audio
    assert sum(n.served for n in fleet) == total  # and each was synthesized exactly once
    outcomes = [r["result"] for r in reloads]
    assert outcomes.count("applied") >= 4 and "invalid" in outcomes, outcomes
    assert all(n.served > 0 for n in fleet)

    write(path, versions[0])
    assert call(router.url + "/admin/reload", "POST")[0] == 200
    wait_for(lambda: not backends(router.url)["backends"][2:])  # removed endpoints drained and closed
    assert {b["name"] for b in backends(router.url)["backends"]} == {"n0", "n1"}


def test_an_invalid_config_keeps_the_running_one_and_is_counted(nodes, file_router):
    node = nodes()
    router, path = file_router(config(node.url))
    write(path, "server:\n  watch_config: false\npools:\n  gpu:\n    type: index-tts-vllm\n    endpoints:\n"
                "      - url: ftp://wrong\n    max_concurency: 3\nmodels:\n  tts-1: [gpu]\n")
    status, body, _ = call(router.url + "/admin/reload", "POST")
    assert status == 422 and body["result"] == "invalid"
    assert len(body["errors"]) == 2
    assert body["errors"][0].endswith("speech-router.yaml:7: pools.gpu.endpoints[0].url: invalid URL 'ftp://wrong': "
                                      "use http:// or https://")
    assert body["errors"][1].endswith("speech-router.yaml:8: pools.gpu.max_concurency: unknown key "
                                      "(did you mean 'max_concurrency'?)")
    assert speak(router.url)[0] == 200  # still serving on the old config
    assert metric(router.url, 'speech_router_config_reloads_total{result="invalid",trigger="admin"}') == 1
    assert metric(router.url, "speech_router_config_errors_total") == 2
    assert metric(router.url, "speech_router_config_last_reload_successful") == 0

    write(path, config(node.url))
    status, body, _ = call(router.url + "/admin/reload", "POST")
    assert status == 200 and body["result"] == "unchanged"
    assert metric(router.url, "speech_router_config_last_reload_successful") == 1


def test_a_removed_endpoint_finishes_its_requests_in_flight(nodes, file_router):
    slow, fresh = nodes(name="slow", delay_s=1.0), nodes(name="fresh")
    router, path = file_router(config(("slow", slow.url)))
    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(speak, router.url)
        wait_for(lambda: slow.app.state.emulator.in_flight == 1)
        write(path, config(("fresh", fresh.url)))
        status, body, _ = call(router.url + "/admin/reload", "POST")
        assert body["changes"] == {"added": ["fresh"], "removed": ["slow"], "replaced": []}
        listing = backends(router.url)["backends"]
        assert [(b["name"], b["state"], b["retired"], b["inflight"]) for b in listing] == [
            ("fresh", "up", False, 0), ("slow", "draining", True, 1)]
        status, _, headers = speak(router.url)  # new requests go to the new endpoint at once
        assert status == 200 and headers["x-speech-router-endpoint"] == "fresh"
        status, audio, headers = pending.result(10)
    assert status == 200 and len(audio) > 44 and headers["x-speech-router-endpoint"] == "slow"
    wait_for(lambda: len(backends(router.url)["backends"]) == 1)
    assert 'endpoint="slow"' not in call(router.url + "/metrics")[1].decode().split("speech_router_endpoint_up")[1]


def test_unchanged_endpoints_keep_their_state_across_a_reload(nodes, file_router):
    a, b = nodes(name="a"), nodes(name="b")
    router, path = file_router(config(("a", a.url)))
    for _ in range(3):
        assert speak(router.url)[0] == 200
    write(path, config(("a", a.url), ("b", b.url)))
    assert call(router.url + "/admin/reload", "POST")[1]["changes"]["added"] == ["b"]
    listing = {x["name"]: x for x in backends(router.url)["backends"]}
    assert listing["a"]["served"] == 3  # the same endpoint object: its counters and latency survived
    assert listing["b"]["served"] == 0 and listing["b"]["share"] < listing["b"]["cap"]  # slow start: its share ramps


def test_a_changed_pool_setting_keeps_what_was_learned_of_every_endpoint(nodes, file_router):
    a, b = nodes(name="a", delay_s=0.05), nodes(name="b", delay_s=0.05)
    router, path = file_router(config(("a", a.url), ("b", b.url)))
    for _ in range(8):
        assert speak(router.url)[0] == 200
    learned = {x["name"]: x for x in backends(router.url)["backends"]}
    assert all(learned[n]["latency"] is not None for n in ("a", "b"))
    # a routing setting: the same endpoints go on, settings applied in place
    write(path, config(("a", a.url), ("b", b.url), queue={"timeout": 3}, breaker={"consecutive_failures": 7}))
    assert call(router.url + "/admin/reload", "POST")[1]["changes"] == {"added": [], "removed": [], "replaced": []}
    after = {x["name"]: x for x in backends(router.url)["backends"]}
    for name in ("a", "b"):
        assert after[name]["served"] == learned[name]["served"] and after[name]["latency"] == learned[name]["latency"]
        assert "share" not in after[name]  # not ramping again
    # a setting the backend reads: a new endpoint for the same node, which inherits what was learned of it
    write(path, config(("a", a.url), ("b", b.url), timeouts={"read": 120}))
    assert sorted(call(router.url + "/admin/reload", "POST")[1]["changes"]["replaced"]) == ["a", "b"]
    after = {x["name"]: x for x in backends(router.url)["backends"]}
    for name in ("a", "b"):
        assert after[name]["served"] == learned[name]["served"]
        assert after[name]["latency"]["level"] == learned[name]["latency"]["level"] and "share" not in after[name]


def test_the_file_watcher_reloads_on_change(nodes, file_router):
    a, b = nodes(name="a"), nodes(name="b")
    router, path = file_router(config(("a", a.url), watch=True))
    time.sleep(0.3)  # the watcher is up
    write(path, config(("a", a.url), ("b", b.url), watch=True))
    wait_for(lambda: {x["name"] for x in backends(router.url)["backends"]} == {"a", "b"})
    assert metric(router.url, 'speech_router_config_reloads_total{result="applied",trigger="file"}') == 1


def test_drain_and_undrain(nodes, file_router):
    a, b = nodes(name="a", delay_s=0.5), nodes(name="b")
    # round robin: "a" would get every other request if draining did not take it out of rotation
    router, _ = file_router(config(("a", a.url), ("b", b.url), balancer={"policy": "round_robin", "slow_start": 0}))
    with ThreadPoolExecutor(4) as pool:
        pending = [pool.submit(speak, router.url) for _ in range(4)]
        wait_for(lambda: a.app.state.emulator.in_flight >= 1)
        status, body, _ = call(router.url + "/admin/backends/a/drain", "POST")
        assert status == 200 and body["state"] == "draining" and body["draining"] is True
        will_serve = body["served"] + body["inflight"]  # the router's own count: no race with the node
        for _ in range(6):
            assert speak(router.url)[2]["x-speech-router-endpoint"] == "b"
        assert all(f.result(10)[0] == 200 for f in pending)  # those in flight on "a" finished
    assert {x["name"]: x["served"] for x in backends(router.url)["backends"]}["a"] == will_serve
    assert metric(router.url, 'speech_router_endpoint_draining{endpoint="a",pool="gpu"}') == 1
    status, body, _ = call(router.url + "/admin/backends/a/undrain", "POST")
    assert status == 200 and body["draining"] is False
    a.config.delay_s = 0
    wait_for(lambda: speak(router.url)[2]["x-speech-router-endpoint"] == "a")
    status, body, _ = call(router.url + "/admin/backends/nope/drain", "POST")
    assert status == 404 and body["error"]["param"] == "name" and "a, b" in body["error"]["message"]


def test_admin_config_redacts_secrets(nodes, file_router):
    node = nodes()
    data = config(node.url, headers={"X-Token": "very-secret"}, api_key_env="NODE_KEY")
    # credentials in a URL go without an Authorization header (config refuses both): a pool of their own
    data["pools"]["basic"] = {"type": "index-tts-vllm",
                              "endpoints": [{"url": node.url.replace("http://", "http://user:pa55@")}]}
    router, _ = file_router(data)
    status, body, _ = call(router.url + "/admin/config")
    assert status == 200
    text = json.dumps(body)
    assert "very-secret" not in text and "pa55" not in text
    pool = body["config"]["pools"]["gpu"]
    assert pool["headers"] == {"X-Token": "***"} and pool["api_key_env"] == "NODE_KEY"
    basic = body["config"]["pools"]["basic"]["endpoints"][0]
    assert basic["url"].startswith("http://***@127.0.0.1:")
    assert basic["name"] == node.url.removeprefix("http://")  # a derived name carries no password


def test_sighup_and_the_cli_commands(nodes, tmp_path, capsys):
    from speech_router.cli import main

    a, b = nodes(name="a"), nodes(name="b")
    path = tmp_path / "router.yaml"
    write(path, config(("a", a.url)))
    env = {"SPEECH_ROUTER_ADMIN_KEY": ADMIN_KEY}
    procs: list[Any] = []
    with serving(env, "--config", str(path), procs=procs) as url:
        write(path, config(("a", a.url), ("b", b.url)))
        os.kill(procs[0].pid, signal.SIGHUP)
        wait_for(lambda: {x["name"] for x in backends(url)["backends"]} == {"a", "b"})

        assert main(["drain", "b", "--url", url]) == 0
        assert capsys.readouterr().out.strip() == "b: draining (0 in flight)"
        assert main(["backends", "--url", url]) == 0
        table = capsys.readouterr().out.splitlines()
        assert table[0].split()[:5] == ["POOL", "NAME", "TYPE", "URL", "STATE"]
        assert [row.split()[1:5:3] for row in table[1:]] == [["a", "up"], ["b", "draining"]]
        assert main(["drain", "b", "--undo", "--url", url]) == 0
        assert main(["reload", "--url", url]) == 0
        assert capsys.readouterr().out.splitlines()[-1] == "unchanged"
        assert main(["drain", "zzz", "--url", url]) == 1
        assert "No endpoint named 'zzz'" in capsys.readouterr().err



def test_a_reload_swaps_the_client_keys_and_refuses_a_broken_keys_file(nodes, file_router, tmp_path):
    node = nodes()
    keys = tmp_path / "keys.yaml"
    keys.write_text("- {name: old, key: old-key}\n")
    data = config(node.url)
    data["server"]["auth"] = {"keys_file": str(keys)}
    router, path = file_router(data)
    assert call(router.url + "/v1/audio/speech", "POST", SPEECH, key="old-key")[0] == 200
    keys.write_text("- {name: new, key: new-key}\n")
    assert call(router.url + "/admin/reload", "POST")[1]["result"] == "unchanged"  # the YAML is the same
    assert call(router.url + "/v1/audio/speech", "POST", SPEECH, key="old-key")[0] == 401
    assert call(router.url + "/v1/audio/speech", "POST", SPEECH, key="new-key")[0] == 200
    keys.write_text("- {name: broken}\n")
    status, body, _ = call(router.url + "/admin/reload", "POST")
    assert status == 422 and "keys.yaml" in body["errors"][0]
    assert call(router.url + "/v1/audio/speech", "POST", SPEECH, key="new-key")[0] == 200  # the old keys stay


def test_a_pool_removed_by_a_reload_closes_its_connections_once_drained(nodes, file_router):
    a, b = nodes(name="a"), nodes(name="b")
    data = config(("a", a.url))
    data["pools"]["extra"] = {"type": "index-tts-vllm", "endpoints": [{"url": b.url, "name": "b"}]}
    data["models"]["other"] = ["extra"]
    router, path = file_router(data)
    assert call(router.url + "/v1/audio/speech", "POST", {**SPEECH, "model": "other"}, key=None)[0] == 200
    sessions = router.app.state.router.fleet.sessions._sessions
    assert any(pool == "extra" for pool, _ in sessions)
    write(path, config(("a", a.url)))
    assert call(router.url + "/admin/reload", "POST")[0] == 200
    wait_for(lambda: not router.app.state.router.retiring)
    wait_for(lambda: not any(pool == "extra" for pool, _ in sessions))
    assert speak(router.url)[0] == 200  # the pool that stayed keeps its connections
    assert any(pool == "gpu" for pool, _ in sessions)
