"""The command line as users type it: serve (env one-liner and embedded default) and check-config."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import textwrap
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager

import av

from tests.processes import free_port, stop

CLI = [sys.executable, "-m", "speech_router.cli"]


@contextmanager
def serving(env: dict[str, str], *args: str, procs: list[subprocess.Popen] | None = None) -> Iterator[str]:
    """``speech-router serve`` in a subprocess on a free loopback port (appended to ``procs``); killed at the end."""
    port = free_port()
    full_env = {k: v for k, v in os.environ.items() if k not in ("TTS_REMOTE_URL", "SPEECH_ROUTER_CONFIG")}
    full_env.update(env)
    proc = subprocess.Popen([*CLI, "serve", "--host", "127.0.0.1", "--port", str(port), *args], env=full_env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    if procs is not None:
        procs.append(proc)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(url + "/livez", timeout=1):
                    break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    out = proc.stdout.read().decode() if proc.stdout else ""
                    raise AssertionError(f"router did not start:\n{out}") from None
                time.sleep(0.1)
        yield url
    finally:
        stop(proc)
        if proc.stdout:
            proc.stdout.close()


def post(url: str, body: dict) -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        return resp.status, {k.lower(): v for k, v in resp.headers.items()}, resp.read()


def test_tts_remote_url_one_liner_serves_without_a_config_file(nodes):
    node = nodes(name="gpu")
    with serving({"TTS_REMOTE_URL": node.url, "TTS_VOICE_DIR": "/srv/voices"}) as url:
        status, headers, audio = post(url + "/v1/audio/speech",
                                      {"model": "tts-1", "input": "seed deploy", "voice": "bob", "response_format": "wav"})
    assert status == 200 and audio[:4] == b"RIFF"
    assert headers["x-speech-router-endpoint"] == node.url.removeprefix("http://")
    # voice names map to reference files in TTS_VOICE_DIR on the node
    assert node.requests[-1][1]["spk_audio_path"] == "/srv/voices/bob.wav"


def test_embedded_default_speaks_mp3_with_no_config_at_all():
    with serving({}) as url:
        status, headers, audio = post(url + "/v1/audio/speech", {"model": "tts-1", "input": "hello", "voice": "alloy"})
    assert status == 200 and headers["content-type"] == "audio/mpeg"
    with av.open(io.BytesIO(audio)) as container:
        stream = container.streams.audio[0]
        assert stream.codec_context.name.startswith("mp3")
        samples = sum(frame.samples for frame in container.decode(stream))
    assert samples / stream.codec_context.sample_rate > 0.2  # real speech, not an empty file


def test_check_config_lists_errors_with_locations_and_exits_1(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(textwrap.dedent("""\
        pools:
          gpu:
            type: index-tts-vllm
            endpoints:
              - url: http://gpu-1:6006
              - url: not-a-url
        models:
          indextts2: [gpu, cpu]
    """))
    proc = subprocess.run([*CLI, "check-config", str(bad)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert f"{bad}:6: pools.gpu.endpoints[1].url: invalid URL 'not-a-url': http:// (or https://) is missing" \
        in proc.stderr
    assert f"{bad}:8: models.indextts2[1]: unknown pool 'cpu'" in proc.stderr


def test_check_config_summarises_a_good_file_and_exits_0(tmp_path):
    good = tmp_path / "good.yaml"
    good.write_text("pools:\n  gpu:\n    type: index-tts-vllm\n    endpoints: [{url: 'http://a:6006'}]\n"
                    "models:\n  indextts2: [gpu]\n")
    proc = subprocess.run([*CLI, "check-config", str(good)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "1 pools, 1 endpoints, 1 models (indextts2)" in proc.stdout


def test_serve_refuses_an_invalid_config(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("pools: {}\nmodels: {}\n")
    proc = subprocess.run([*CLI, "serve", "--config", str(bad)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert "invalid configuration" in proc.stderr and "pools" in proc.stderr
