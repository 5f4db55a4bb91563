"""IndexTTS-2.5 in the local engine: checkpoint detection, the 2.5 signature, speed and language end to end.

The stand-in ``indextts.infer_v2_5`` has the real constructor and ``infer`` signatures (``use_bf16``,
``lang`` required, ``duration_factor``, ``text_normalization``); no GPU or weights are involved.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from speech_router.types import SynthesisRequest
from speech_router.worker.checkpoint import detect
from speech_router.worker.engine import EngineConfig, IndexTts2Engine
from speech_router.worker.request import RequestError, infer_kwargs
from tests.client import call
from tests.worker.conftest import STANDIN, WAIT_S, Host, local_backend, plugin_manager, pool_config, wait_until

MODULES = ("indextts", "indextts.infer_v2", "indextts.infer_v2_5")


def make_25(host: Host) -> Host:
    (host.model_dir / "config.yaml").write_text("gpt:\n  stop_mel_token: 8193\nversion: 2.5\n")
    return host


@pytest.fixture
def standin(monkeypatch: pytest.MonkeyPatch, host: Host) -> Iterator[None]:
    """The stand-in ``indextts`` package importable in this process (logging to ``host``), gone afterwards."""
    monkeypatch.setenv("STANDIN_LOG", str(host.log))
    monkeypatch.syspath_prepend(str(STANDIN))
    for name in MODULES:
        monkeypatch.delitem(sys.modules, name, raising=False)
    yield
    for name in MODULES:
        sys.modules.pop(name, None)


def test_checkpoint_version_from_config_or_files(host: Host) -> None:
    assert detect(str(host.model_dir))[0] == "2"  # config.yaml says 2.0
    make_25(host)
    version, why = detect(str(host.model_dir))
    assert version == "2.5" and "config.yaml" in why
    (host.model_dir / "config.yaml").write_text("gpt:\n  model_dim: 1280\n")  # no version line
    assert detect(str(host.model_dir))[0] == "2"
    (host.model_dir / "codec.pth").write_bytes(b"")
    assert detect(str(host.model_dir))[0] == "2.5"
    assert detect(str(host.root / "nowhere"))[0] == "2"


def test_v25_body_fields_are_checked_and_passed(host: Host) -> None:
    base = {"text": "Hello.", "spk_audio_path": host.alloy}
    assert infer_kwargs({**base, "lang": "YUE", "duration_factor": 0.8, "text_normalization": False}, "2.5") == \
        {"spk_audio_prompt": host.alloy, "text": "Hello.", "lang": "yue", "duration_factor": 0.8,
         "text_normalization": False}
    assert infer_kwargs({"text": "你好。", "spk_audio_path": host.alloy}, "2.5")["lang"] == "zh"  # guessed
    assert "lang" not in infer_kwargs({**base, "lang": "en"}, "2")  # an IndexTTS-2 worker ignores it
    for body, version, message in [({"duration_factor": 3.0}, "2.5", "between 0.5 and 2"),
                                   ({"duration_factor": 0.8}, "2", "needs IndexTTS-2.5"),
                                   ({"lang": 5}, "2.5", "'lang'"), ({"lang": "e n"}, "2.5", "'lang'"),
                                   ({"text_normalization": "no"}, "2.5", "'text_normalization'")]:
        with pytest.raises(RequestError, match=message):
            infer_kwargs({**base, **body}, version)


def test_engine_loads_infer_v2_5_with_its_constructor_and_signature(standin: None, host: Host) -> None:
    make_25(host)
    engine = IndexTts2Engine(EngineConfig(model_dir=str(host.model_dir), device="cpu", fp16=True))
    assert engine.version == "2.5"
    engine.load()
    assert type(engine.tts).__module__ == "indextts.infer_v2_5"
    [init] = host.events("init")
    assert init["use_bf16"] is True and init["use_qwen_emo"] is True and "use_fp16" not in init
    normal = list(engine.stream({"spk_audio_prompt": host.alloy, "text": "One two three."}))
    slow = list(engine.stream({"spk_audio_prompt": host.alloy, "text": "One two three.", "duration_factor": 2.0,
                               "lang": "en"}))
    calls = host.events("infer")
    assert calls[0]["lang"] == "en" and calls[1]["duration_factor"] == 2.0  # guessed, then given
    assert len(slow[0]) == pytest.approx(2 * len(normal[0]), abs=4)  # native speed: twice as long


def test_a_v2_engine_refuses_speed_and_drops_25_arguments(standin: None, host: Host) -> None:
    engine = IndexTts2Engine(EngineConfig(model_dir=str(host.model_dir), device="cpu"))
    engine.load()
    assert engine.version == "2" and type(engine.tts).__module__ == "indextts.infer_v2"
    list(engine.stream({"spk_audio_prompt": host.alloy, "text": "Hi.", "lang": "en", "text_normalization": False}))
    assert "lang" not in host.events("infer")[0]
    with pytest.raises(RequestError, match="needs IndexTTS-2.5"):
        list(engine.stream({"spk_audio_prompt": host.alloy, "text": "Hi.", "duration_factor": 0.5}))


def test_emotion_text_without_the_emotion_model_is_the_clients_error(standin: None, host: Host) -> None:
    make_25(host)
    engine = IndexTts2Engine(EngineConfig(model_dir=str(host.model_dir), device="cpu",
                                          engine_kwargs={"use_qwen_emo": False}))
    engine.load()
    with pytest.raises(RequestError, match="use_qwen_emo"):
        list(engine.stream({"spk_audio_prompt": host.alloy, "text": "Hi.", "use_emo_text": True}))


@pytest.mark.anyio
async def test_local_25_pool_speaks_with_native_speed_and_the_language(host: Host) -> None:
    make_25(host)
    async with local_backend(host) as backend:
        assert backend.version == "2.5" and backend.capabilities.speed_range == (0.5, 2.0)
        await backend.supervisor.wait_for(lambda sup: sup.state == "ready", WAIT_S)
        for text, fields in (("Fast words.", {"speed": 1.25}), ("早晨。", {"lang": "yue"})):
            req = SynthesisRequest(text=text, model="m", voice="alloy", voice_params={"spk_audio_path": host.alloy},
                                   **fields)
            resp = await backend.synthesize(req)
            assert b"".join([c async for c in resp.chunks])[:4] == b"RIFF"
        fast, = host.infer_calls("Fast words.")
        assert fast["duration_factor"] == 0.8 and fast["lang"] == "en"
        assert host.infer_calls("早晨。")[0]["lang"] == "yue"
        report = await backend.health()
        assert report.data["model_version"] == "2.5"


def test_router_refuses_speeds_25_cannot_take_and_passes_the_rest(router: Any, host: Host) -> None:
    make_25(host)
    pool = {**pool_config(host), "health_check": {"interval": 0.1, "timeout": 1}}
    srv = router({"pools": {"local": pool}, "models": {"indextts": ["local"]},
                  "voices": {"alloy": {"spk_audio_path": host.alloy}}}, pm=plugin_manager())
    wait_until(lambda: call(srv.url + "/health").json()["endpoints"][0]["state"] == "up", "the worker to be up")
    body = {"model": "indextts", "voice": "alloy", "input": "Slow words here.", "response_format": "wav"}
    ok = call(srv.url + "/v1/audio/speech", {**body, "speed": 0.5})
    assert ok.status == 200, ok.body
    assert host.infer_calls("Slow words here.")[0]["duration_factor"] == 2.0
    samples = np.frombuffer(ok.body[44:], dtype="<i2")
    assert len(samples) > 0
    bad = call(srv.url + "/v1/audio/speech", {**body, "speed": 3.0})
    assert bad.status == 400 and bad.json()["error"]["param"] == "speed"
