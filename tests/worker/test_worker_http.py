"""The worker process on its own (as on a fleet's GPU host): protocol, streaming, queue, OOM, load failure."""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import pytest

from speech_router.audio.wav import WavStreamParser
from tests.worker.conftest import Host, StandaloneWorker, process_gone, stop_process, wait_until

SEGMENT_BYTES = 2 * round(0.02 * len("First sentence.") * 22050)  # the stand-in's tone for that sentence
HEADER_BYTES = 44


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Host, StandaloneWorker]]:
    """One worker for the tests that leave it idle again: max_queue 1, so a third request is refused."""
    host = Host(tmp_path_factory.mktemp("worker"))
    worker = StandaloneWorker(host, "--max-queue", "1", "--warmup-text", "")
    try:
        worker.wait_listening()
        assert worker.wait_loaded()
        yield host, worker
    finally:
        worker.stop()


def get(url: str) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return resp.status, json.load(resp)
    except urllib.error.HTTPError as exc:
        return exc.code, json.load(exc)


def post(url: str, body: dict[str, Any]) -> tuple[int, bytes, str]:
    req = urllib.request.Request(url + "/tts_url", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=20) as resp:
            return resp.status, resp.read(), resp.headers.get("Content-Type", "")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), exc.headers.get("Content-Type", "")


def open_stream(url: str, body: dict[str, Any]) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=20)
    conn.request("POST", "/tts_url", body=json.dumps(body), headers={"Content-Type": "application/json"})
    return conn, conn.getresponse()


def pcm_of(wav: bytes) -> np.ndarray:
    parser = WavStreamParser()
    return np.frombuffer(parser.feed(wav), dtype="<i2")


def test_health_reports_engine_device_queue_and_memory(shared: tuple[Host, StandaloneWorker]) -> None:
    host, worker = shared
    status, body = get(worker.url + "/health")
    assert status == 200 and body["status"] == "healthy"
    assert body["model_loaded"] is True and body["device"] == "cpu" and body["model_dir"] == str(host.model_dir)
    assert body["queue_length"] == 0 and body["max_queue"] == 1 and body["busy"] is False
    assert "gpu_memory_used_bytes" in body and body["gpu_memory_total_bytes"] is None  # no CUDA here
    init = host.events("init")[0]
    assert init["cfg_path"] == str(host.model_dir / "config.yaml") and init["device"] == "cpu"
    assert init["cwd"] == str(host.root)  # the parent of model_dir: index-tts's ./checkpoints/hf_cache is there


def test_segments_stream_as_they_are_made(shared: tuple[Host, StandaloneWorker]) -> None:
    host, worker = shared
    conn, resp = open_stream(worker.url, {"text": "First sentence. GATE second sentence.",
                                          "spk_audio_path": host.alloy})
    try:
        assert resp.status == 200 and resp.headers["Content-Type"] == "audio/wav"
        assert resp.headers.get("Content-Length") is None  # chunked
        head = b""
        while len(head) < HEADER_BYTES + SEGMENT_BYTES:  # the gate is closed: segment 2 cannot exist yet
            chunk = resp.read1(65536)
            assert chunk, "the stream ended early"
            head += chunk
        assert head[:4] == b"RIFF" and head[4:8] == b"\xff\xff\xff\xff" and head[40:44] == b"\xff\xff\xff\xff"
        assert [e["index"] for e in host.events("segment") if "GATE" in e["text"] or "First" in e["text"]] == [0]
        host.open_gate()
        rest = resp.read()
    finally:
        conn.close()
    samples = pcm_of(head + rest)
    second = round(0.02 * len("GATE second sentence.") * 22050)
    assert len(samples) == SEGMENT_BYTES // 2 + second + 2 * round(0.2 * 22050)  # two segments, two silences
    assert np.abs(samples[:100]).max() > 0


def test_a_full_queue_is_refused_with_503_and_the_queued_request_still_runs(
        shared: tuple[Host, StandaloneWorker]) -> None:
    host, worker = shared
    host.gate.unlink(missing_ok=True)
    results: dict[str, tuple[int, bytes, str]] = {}

    def run(name: str, text: str) -> None:
        results[name] = post(worker.url, {"text": text, "spk_audio_path": host.alloy})

    running = threading.Thread(target=run, args=("running", "GATE holds the engine."))
    running.start()
    wait_until(lambda: get(worker.url + "/health")[1]["busy"], "the first request to run")
    queued = threading.Thread(target=run, args=("queued", "Waits its turn."))
    queued.start()
    wait_until(lambda: get(worker.url + "/health")[1]["queue_length"] == 1, "the second request to queue")
    status, body, _ = post(worker.url, {"text": "One too many.", "spk_audio_path": host.alloy})
    assert status == 503 and "max_queue 1" in json.loads(body)["error"]
    host.open_gate()
    running.join(30)
    queued.join(30)
    assert results["running"][0] == 200 and results["queued"][0] == 200
    assert get(worker.url + "/health")[1]["rejected_full"] == 1


def test_cuda_oom_fails_that_request_with_503_and_the_worker_goes_on(shared: tuple[Host, StandaloneWorker]) -> None:
    host, worker = shared
    status, body, ctype = post(worker.url, {"text": "OOM here.", "spk_audio_path": host.alloy})
    assert status == 503 and ctype == "application/json"
    assert json.loads(body)["status"] == "error" and "CUDA out of memory" in json.loads(body)["error"]
    status, body, _ = post(worker.url, {"text": "Still here.", "spk_audio_path": host.alloy})
    assert status == 200 and len(pcm_of(body)) > 0
    health = get(worker.url + "/health")[1]
    assert health["oom_errors"] == 1 and health["status"] == "healthy" and "out of memory" in health["last_error"]


def test_other_errors_are_500_json_and_bad_bodies_400(shared: tuple[Host, StandaloneWorker]) -> None:
    host, worker = shared
    status, body, _ = post(worker.url, {"text": "FAIL now.", "spk_audio_path": host.alloy})
    data = json.loads(body)
    assert status == 500 and data["status"] == "error" and "RuntimeError: stand-in failure" in data["error"]
    status, body, _ = post(worker.url, {"text": "No voice.", "spk_audio_path": "/no/such.wav"})
    assert status == 400 and "no such file" in json.loads(body)["error"]
    # after the first segment the status is sent: a failure cuts the body short instead
    conn, resp = open_stream(worker.url, {"text": "Fine first. FAIL second.", "spk_audio_path": host.alloy})
    try:
        assert resp.status == 200
        with pytest.raises(http.client.IncompleteRead):
            resp.read()
    finally:
        conn.close()


def test_a_load_failure_is_reported_in_health(standalone: Any, host: Host) -> None:
    worker = standalone(host, env={"STANDIN_FAIL_LOAD": "1"})
    assert worker.wait_loaded() is False
    status, body = get(worker.url + "/health")
    assert status == 503 and body["status"] == "unhealthy" and body["phase"] == "failed"
    assert "FileNotFoundError" in body["load_error"] and "gpt.pth" in body["message"]
    status, raw, _ = post(worker.url, {"text": "Hello.", "spk_audio_path": host.alloy})
    assert status == 503 and "loading failed" in json.loads(raw)["error"]


def test_the_worker_dies_with_its_parent(host: Host, tmp_path: Path) -> None:
    """The router may be SIGKILLed: its workers must not stay behind holding a GPU."""
    pid_file = tmp_path / "worker.pid"
    parent_code = (
        "import os, subprocess, sys, time\n"
        f"cmd = [sys.executable, '-m', 'speech_router.worker', 'indextts2', '--model-dir', {str(host.model_dir)!r},"
        " '--device', 'cpu', '--port', '0', '--warmup-text', '', '--parent-pid', str(os.getpid())]\n"
        "p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)\n"
        f"open({str(pid_file)!r}, 'w').write(str(p.pid))\n"
        "time.sleep(60)\n")
    parent = subprocess.Popen([sys.executable, "-c", parent_code], env={**os.environ, **host.env},
                              start_new_session=True)
    worker_pid = 0
    try:
        worker_pid = int(wait_until(lambda: pid_file.exists() and pid_file.read_text(), "the worker's pid"))
        wait_until(lambda: host.events("init"), "the worker to start loading")
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait(10)
        wait_until(lambda: process_gone(worker_pid), "the orphaned worker to exit")
    finally:
        stop_process(parent)
        if worker_pid and not process_gone(worker_pid):
            os.kill(worker_pid, signal.SIGKILL)


def test_the_worker_command_lines() -> None:
    out = subprocess.run([sys.executable, "-m", "speech_router.worker", "indextts2", "--help"], capture_output=True,
                         text=True, check=False)
    assert out.returncode == 0 and "--model-dir" in out.stdout and "--max-queue" in out.stdout
    from speech_router.cli import main as cli_main

    with pytest.raises(SystemExit) as info:
        cli_main(["worker", "indextts2", "--help"])
    if info.value.code == 2:
        pytest.skip("this speech-router has no `worker` subcommand yet (the cli.py part of the patch)")
    assert info.value.code == 0
