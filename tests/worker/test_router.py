"""``indextts2-local`` pools behind a real router: streaming through it, a failed load in its /health while
another pool serves, and a router process that never imports torch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from speech_router.backends.base import Backend
from tests.worker.conftest import WAIT_S, Host, plugin_manager, pool_config, wait_until

REPO_ROOT = Path(__file__).resolve().parents[2]


def call(url: str, body: Any = None) -> tuple[int, Any, bytes]:
    req = urllib.request.Request(url, data=None if body is None else json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=20) as resp:
            return resp.status, resp.headers, resp.read()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, exc.headers, exc.read()


def endpoint_health(url: str, pool: str) -> dict[str, Any]:
    """The (first) endpoint of ``pool`` in the router's /health."""
    _, _, raw = call(url + "/health")
    return next(ep for ep in json.loads(raw)["endpoints"] if ep["pool"] == pool)


def local_config(host: Host, **pool: Any) -> dict[str, Any]:
    return {
        "pools": {"local": {**pool_config(host, **pool), "health_check": {"interval": 0.1, "timeout": 1}}},
        "models": {"indextts2": ["local"]},
        "voices": {"alloy": {"spk_audio_path": host.alloy}},
    }


def test_a_local_pool_serves_through_the_router(router: Any, host: Host) -> None:
    srv = router(local_config(host), pm=plugin_manager())
    local = wait_until(lambda: (ep := endpoint_health(srv.url, "local"))["state"] == "up" and ep,
                       "the local endpoint to be up")
    status, headers, body = call(srv.url + "/v1/audio/speech", {"model": "indextts2", "voice": "alloy",
                                                                "input": "One. Two.", "response_format": "wav"})
    assert status == 200 and body[:4] == b"RIFF" and headers["x-speech-router-endpoint"] == local["name"]
    assert [e["text"] for e in host.events("segment") if e["text"] in ("One.", "Two.")] == ["One.", "Two."]
    status, _, body = call(srv.url + "/synthesize", {"text": "Sad.", "voice": "alloy",
                                                     "emotion": {"vector": [0, 0, 0.5, 0, 0, 0, 0, 0]}})
    assert status == 200 and body[:4] == b"RIFF"
    assert host.infer_calls("Sad.")[0]["emo_vector"] == [0, 0, 0.5, 0, 0, 0, 0, 0]


@pytest.mark.skipif(not hasattr(Backend, "expand_endpoints"), reason="needs the Backend.expand_endpoints hook")
def test_each_device_is_an_endpoint_of_the_pool(router: Any, host: Host) -> None:
    srv = router(local_config(host, devices=["cpu", "cuda:0"], max_queue=1), pm=plugin_manager())
    names = {ep["name"]: ep for ep in json.loads(call(srv.url + "/health")[2])["endpoints"]}
    assert set(names) == {"local-cpu", "local-cuda:0"}
    assert names["local-cpu"]["max_concurrency"] == 2  # the running request and max_queue


def test_a_failed_load_shows_in_router_health_while_another_pool_serves(router: Any, nodes: Any, host: Host) -> None:
    node = nodes(name="remote")
    config = local_config(host, env={"STANDIN_FAIL_LOAD": "1"})
    config["pools"]["remote"] = {"type": "index-tts-vllm", "endpoints": [{"url": node.url}],
                                 "health_check": {"interval": 0.1, "timeout": 1}}
    config["models"] = {"indextts2": ["local", "remote"], "local-only": ["local"], "remote-only": ["remote"]}
    srv = router(config, pm=plugin_manager())
    local = wait_until(lambda: (ep := endpoint_health(srv.url, "local"))["state"] == "down"
                       and "gpt.pth" in ep["detail"] and ep, "the load failure in the router's /health")
    assert "loading failed: FileNotFoundError" in local["detail"]
    status, _, raw = call(srv.url + "/health")
    data = json.loads(raw)
    assert status == 503 and data["models"]["local-only"]["healthy"] is False
    assert data["models"]["remote-only"]["healthy"] is True and data["models"]["indextts2"]["healthy"] is True
    status, headers, body = call(srv.url + "/v1/audio/speech", {"model": "indextts2", "voice": "alloy",
                                                                "input": "Fallback.", "response_format": "wav"})
    assert status == 200 and body[:4] == b"RIFF" and headers["x-speech-router-endpoint"] != local["name"]


def run_router_process(host: Host, tmp_path: Path, **env: str) -> dict[str, Any]:
    config_path = tmp_path / "config.json"
    config_path.write_text(json.dumps(local_config(host)))
    proc = subprocess.run([sys.executable, "-m", "tests.worker.router_without_torch", str(config_path)],
                          cwd=REPO_ROOT, env={**os.environ, **env}, capture_output=True, text=True, timeout=WAIT_S * 2,
                          check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_the_router_process_never_imports_torch(host: Host, tmp_path: Path) -> None:
    report = run_router_process(host, tmp_path)
    assert report["backend_loaded"] and report["served_by"].startswith("local-") and report["bytes"] > 44
    assert report["attempts"] == [] and report["torch_in_modules"] is False
    # the spy sees an import attempt even when it fails, so this test would catch a backend that tried
    assert run_router_process(host, tmp_path, SELF_CHECK="1")["attempts"][:1] == ["torch"]


def test_a_standalone_worker_is_an_index_tts_vllm_fleet_node(router: Any, standalone: Any, host: Host) -> None:
    worker = standalone(host, "--warmup-text", "")
    assert worker.wait_loaded()
    srv = router({"pools": {"gpu": {"type": "index-tts-vllm", "endpoints": [{"url": worker.url}],
                                    "health_check": {"interval": 0.1, "timeout": 1}}},
                  "models": {"indextts2": ["gpu"]}, "voices": {"alloy": {"spk_audio_path": host.alloy}}})
    wait_until(lambda: endpoint_health(srv.url, "gpu")["state"] == "up", "the node to be up")
    status, _, body = call(srv.url + "/v1/audio/speech", {"model": "indextts2", "voice": "alloy",
                                                          "input": "Over the network.", "response_format": "flac"})
    assert status == 200 and body[:4] == b"fLaC"  # the streamed WAV was read and transcoded
    assert host.infer_calls("Over the network.")[0]["spk_audio_prompt"] == host.alloy
