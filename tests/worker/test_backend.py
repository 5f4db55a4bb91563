"""The ``indextts2-local`` backend and its supervisor, with the stand-in engine in real worker processes."""

from __future__ import annotations

import os
import signal
from typing import Any

import numpy as np
import pytest

from speech_router.audio.wav import WavStreamParser
from speech_router.backends.indextts2_local import IndexTts2LocalBackend
from speech_router.config.loader import settings_from_dict
from speech_router.config.models import PoolConfig
from speech_router.errors import BackendTimeout, BackendUnavailable, ConfigError
from speech_router.plugins.manager import backend_registry
from speech_router.types import Emotion, EmotionMethod, SynthesisRequest
from tests.worker.conftest import WAIT_S, Host, local_backend, plugin_manager, pool_config, process_gone

pytestmark = pytest.mark.anyio


def ready(sup: Any) -> bool:
    return sup.state == "ready"


async def speak(backend: IndexTts2LocalBackend, text: str, voice: str, **fields: Any) -> np.ndarray:
    request = SynthesisRequest(text=text, model="indextts2", voice="alloy", voice_params={"spk_audio_path": voice},
                               **fields)
    response = await backend.synthesize(request)
    parser = WavStreamParser()
    pcm = b"".join([parser.feed(chunk) async for chunk in response.chunks])
    assert parser.format is not None and parser.format.sample_rate == 22050
    return np.frombuffer(pcm, dtype="<i2")


async def test_health_follows_loading_then_requests_map_each_emotion_method(host: Host) -> None:
    async with local_backend(host) as backend:
        report = await backend.health()
        assert not report.healthy and report.detail.startswith(("starting the worker", "loading the model"))
        await backend.supervisor.wait_for(ready, WAIT_S)
        report = await backend.health()
        assert report.healthy and report.data["model_loaded"] is True and report.data["worker"]["restarts"] == 0
        cases = [
            (Emotion(), {"emo_audio_prompt": None, "emo_vector": None, "use_emo_text": False}),
            (Emotion(method=EmotionMethod.REFERENCE_AUDIO, ref_path=host.calm, weight=0.4),
             {"emo_audio_prompt": host.calm, "emo_alpha": 0.4}),
            (Emotion(method=EmotionMethod.VECTOR, vector=[0, 0.3, 0, 0, 0, 0, 0, 0.2]),
             {"emo_vector": [0.0, 0.3, 0.0, 0.0, 0.0, 0.0, 0.0, 0.2], "emo_audio_prompt": None}),
            (Emotion(method=EmotionMethod.TEXT, text="furious", random=True),
             {"use_emo_text": True, "emo_text": "furious", "use_random": True}),
        ]
        for i, (emotion, expected) in enumerate(cases):
            samples = await speak(backend, f"Case {i}.", host.alloy, emotion=emotion, max_text_tokens_per_sentence=90)
            assert len(samples) > 0
            [call] = host.infer_calls(f"Case {i}.")
            assert call["spk_audio_prompt"] == host.alloy and call["stream_return"] is True
            assert call["output_path"] is None and call["max_text_tokens_per_segment"] == 90
            assert {k: call[k] for k in expected} == expected


async def test_relative_voice_paths_are_files_on_this_host(host: Host, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(host.root)
    async with local_backend(host) as backend:
        await backend.supervisor.wait_for(ready, WAIT_S)
        await speak(backend, "Relative.", "alloy.wav")
        assert host.infer_calls("Relative.")[0]["spk_audio_prompt"] == host.alloy


async def test_a_killed_worker_is_restarted_and_serves_again(host: Host) -> None:
    async with local_backend(host) as backend:
        sup = backend.supervisor
        await sup.wait_for(ready, WAIT_S)
        first_pid = sup.pid
        assert first_pid is not None
        os.kill(first_pid, signal.SIGKILL)  # a segfault, the OOM killer...
        await sup.wait_for(lambda s: s.state != "ready", WAIT_S)
        report = await backend.health()
        assert not report.healthy
        await sup.wait_for(lambda s: ready(s) and s.pid != first_pid, WAIT_S)
        assert sup.restarts == 1 and "SIGKILL" in str(sup.last_exit)
        assert len(await speak(backend, "Back again.", host.alloy)) > 0


async def test_a_hung_synthesis_times_out_and_the_worker_is_restarted(host: Host) -> None:
    async with local_backend(host, hang_timeout=1.0) as backend:
        sup = backend.supervisor
        await sup.wait_for(ready, WAIT_S)
        first_pid = sup.pid
        with pytest.raises(BackendTimeout, match="made no progress"):
            await speak(backend, "Fine start. HANG forever.", host.alloy)
        assert "no progress" in str(sup.last_exit)
        await sup.wait_for(ready, WAIT_S)
        assert sup.restarts == 1 and sup.pid != first_pid and process_gone(first_pid or 0)
        assert len(await speak(backend, "After the hang.", host.alloy)) > 0


async def test_a_crash_mid_request_fails_it_and_the_worker_comes_back(host: Host) -> None:
    async with local_backend(host) as backend:
        sup = backend.supervisor
        await sup.wait_for(ready, WAIT_S)
        with pytest.raises(BackendUnavailable):  # the connection drops: the router may retry elsewhere
            await speak(backend, "CRASH now.", host.alloy)
        await sup.wait_for(lambda s: ready(s) and s.restarts == 1, WAIT_S)
        assert "status 70" in str(sup.last_exit)
        assert len(await speak(backend, "Recovered.", host.alloy)) > 0


async def test_a_load_failure_is_unhealthy_with_the_reason_and_retried(host: Host) -> None:
    async with local_backend(host, env={"STANDIN_FAIL_LOAD": "1"}) as backend:
        sup = backend.supervisor
        await sup.wait_for(lambda s: s.restarts >= 2, WAIT_S)  # retried with backoff
        report = await backend.health()
        assert not report.healthy
        assert "loading failed: FileNotFoundError" in report.detail and "gpt.pth" in report.detail
        assert any("gpt.pth" in line for line in report.data["worker"]["output_tail"])  # the worker's stderr
        with pytest.raises(BackendUnavailable, match="not ready"):
            await speak(backend, "Hello.", host.alloy)


async def test_a_worker_that_never_loads_is_restarted_after_startup_timeout(host: Host) -> None:
    async with local_backend(host, env={"STANDIN_LOAD_HANG": "1"}, startup_timeout=0.5) as backend:
        sup = backend.supervisor
        await sup.wait_for(lambda s: s.restarts >= 1, WAIT_S)
        assert "did not get ready within 0.5s" in str(sup.last_exit)


async def test_aclose_leaves_no_worker_behind(host: Host) -> None:
    async with local_backend(host) as backend:
        await backend.supervisor.wait_for(ready, WAIT_S)
        pid = backend.supervisor.pid
    assert pid is not None and process_gone(pid)
    assert backend.supervisor.state == "closed"


def test_devices_expand_to_one_endpoint_each(host: Host) -> None:
    cls = IndexTts2LocalBackend
    pool = PoolConfig.model_validate(pool_config(host, devices=["cuda:0", "cuda:1"], max_queue=2))
    expanded = cls.expand_endpoints("local", pool, cls.Options.model_validate(pool.options))
    assert [(ep.name, ep.max_concurrency, opts.devices) for ep, opts in expanded] == \
        [("local-cuda:0", 3, ["cuda:0"]), ("local-cuda:1", 3, ["cuda:1"])]
    backend = cls(expanded[1][0], expanded[1][1], context=_context(pool))
    cmd = backend.worker_command()
    assert cmd[1:4] == ["-m", "speech_router.worker", "indextts2"]
    assert cmd[cmd.index("--device") + 1] == "cuda:1" and cmd[cmd.index("--port") + 1] == "0"
    assert cmd[cmd.index("--cfg-path") + 1] == str(host.model_dir / "config.yaml")
    assert "--exit-on-load-failure" in cmd and "--fp16" not in cmd
    explicit = PoolConfig.model_validate(pool_config(host, max_concurrency=1))
    assert cls.expand_endpoints("local", explicit, cls.Options.model_validate(explicit.options))[0][0].max_concurrency \
        is None  # the pool's own max_concurrency applies
    with_endpoints = PoolConfig.model_validate({**pool_config(host), "endpoints": [{"name": "x"}]})
    with pytest.raises(ConfigError, match="list `devices` instead"):
        cls.expand_endpoints("local", with_endpoints, cls.Options.model_validate(with_endpoints.options))


def _context(pool: PoolConfig) -> Any:
    from speech_router.backends.base import BackendContext

    return BackendContext(pool_name="local", pool=pool)


def test_options_are_checked_by_the_config_loader(host: Host) -> None:
    registry = backend_registry(plugin_manager())
    config = {"pools": {"local": pool_config(host, devices=["gpu0", "cuda:0"], restart_backoff={"initial": 5, "max": 1},
                                             max_queue=-1)},
              "models": {"indextts2": ["local"]}, "voices": {"alloy": {"spk_audio_path": host.alloy}}}
    with pytest.raises(ConfigError) as info:
        settings_from_dict(config, registry=registry, env={})
    text = str(info.value)
    assert "pools.local.devices: invalid device 'gpu0'" in text
    assert "pools.local.restart_backoff" in text and "pools.local.max_queue" in text
    del config["pools"]["local"]["model_dir"]
    with pytest.raises(ConfigError, match="pools.local.model_dir: required"):
        settings_from_dict(config, registry=registry, env={})
