"""vllm-omni request mapping: every SynthesisRequest field as the node's body, and what is refused first."""

from __future__ import annotations

import base64
import io
import os

import numpy as np
import pytest
import soundfile as sf

from speech_router.backends.vllm_omni_refs import ReferenceFiles, ReferenceUnavailable, node_file_url
from speech_router.backends.vllm_omni_request import node_request
from speech_router.errors import RequestInvalid
from speech_router.text.language import guess_lang, request_lang
from speech_router.types import Emotion, EmotionMethod, SynthesisRequest

pytestmark = pytest.mark.anyio


def write_wav(path: os.PathLike[str] | str, seconds: float, rate: int = 16000) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, (np.sin(np.arange(int(seconds * rate)) / 7) * 8000).astype(np.int16), rate, format="WAV")
    with open(path, "wb") as f:
        f.write(buf.getvalue())
    return buf.getvalue()


def req(**kw: object) -> SynthesisRequest:
    base: dict[str, object] = {"text": "Hello there.", "model": "m", "voice": "v",
                               "voice_params": {"ref_audio": "https://voices.example/v.wav"}}
    return SynthesisRequest(**{**base, **kw})  # type: ignore[arg-type]


async def body(r: SynthesisRequest, version: str | None = "2.5", **kw: object) -> dict[str, object]:
    plan = await node_request(r, model=kw.get("model"), version=version,  # type: ignore[arg-type]
                              allowed_media_path=kw.get("allowed"), stream=bool(kw.get("stream")))  # type: ignore[arg-type]
    return plan.body


async def test_minimal_body_has_the_reference_lang_and_format_and_no_model_unless_configured():
    b = await body(req(response_format="flac"))
    assert b == {"input": "Hello there.", "ref_audio": "https://voices.example/v.wav", "response_format": "flac",
                 "extra_params": {"lang": "en"}}
    assert (await body(req(), model="IndexTeam/IndexTTS-2.5"))["model"] == "IndexTeam/IndexTTS-2.5"


async def test_version_2_gets_no_lang_and_an_unknown_version_gets_it_anyway():
    assert "extra_params" not in await body(req(), version="2")
    assert (await body(req(text="你好，世界"), version=None))["extra_params"] == {"lang": "zh"}


@pytest.mark.parametrize(("fmt", "asked"), [("wav", "wav"), ("pcm", "pcm"), ("flac", "flac"), ("mp3", "mp3"),
                                            ("opus", "wav"), ("aac", "wav")])
async def test_formats_the_node_writes_are_asked_as_is_and_the_others_as_wav(fmt, asked):
    plan = await node_request(req(response_format=fmt), model=None, version="2", allowed_media_path=None)
    assert plan.body["response_format"] == plan.format == asked
    assert "stream" not in plan.body


async def test_streaming_option_asks_raw_pcm_for_wav_and_pcm_only_and_not_with_a_stretched_speed():
    plan = await node_request(req(response_format="wav"), model=None, version="2", allowed_media_path=None,
                              stream=True)
    assert (plan.stream, plan.format) == (True, "pcm")
    assert plan.body["stream"] is True and plan.body["stream_format"] == "audio"
    mp3 = await node_request(req(response_format="mp3"), model=None, version="2", allowed_media_path=None, stream=True)
    assert not mp3.stream and "stream" not in mp3.body
    stretched = await node_request(req(speed=1.5), model=None, version="2", allowed_media_path=None, stream=True)
    assert not stretched.stream  # vllm-omni refuses to stream a time-stretched 2.0 answer
    native = await node_request(req(speed=1.5), model=None, version="2.5", allowed_media_path=None, stream=True)
    assert native.stream


async def test_emotion_methods_become_extra_params():
    vec = [0.1, 0, 0.5, 0, 0, 0, 0, 1.2]
    b = await body(req(emotion=Emotion(EmotionMethod.VECTOR, vector=vec, weight=0.6, random=True)))
    assert b["extra_params"] == {"emo_vector": vec, "emo_alpha": 0.6, "use_random": True, "lang": "en"}
    b = await body(req(emotion=Emotion(EmotionMethod.TEXT, text="furious")), version="2")
    assert b["extra_params"] == {"use_emo_text": True, "emo_text": "furious"}
    b = await body(req(emotion=Emotion(EmotionMethod.TEXT)), version="2")
    assert b["extra_params"] == {"use_emo_text": True}  # the engine reads the emotion from the text itself
    ref = Emotion(EmotionMethod.REFERENCE_AUDIO, ref_params={"ref_audio": "http://h/sad.wav"}, weight=0.8)
    assert (await body(req(emotion=ref), version="2"))["extra_params"] == {"emo_audio": "http://h/sad.wav",
                                                                           "emo_alpha": 0.8}


@pytest.mark.parametrize("vector", [[0.1] * 7, [0.1] * 9, [0, 0, 0, 0, 0, 0, 0, 1.3], [0, 0, 0, 0, 0, 0, 0, -0.1],
                                    [float("nan")] + [0.0] * 7])
async def test_emotion_vectors_vllm_omni_refuses_are_400s_naming_the_field(vector):
    with pytest.raises(RequestInvalid) as info:
        await body(req(emotion=Emotion(EmotionMethod.VECTOR, vector=vector)))
    assert info.value.param == "emotion.vector"


async def test_emotion_reference_without_a_usable_url_is_refused():
    emotion = Emotion(EmotionMethod.REFERENCE_AUDIO, ref_path="/data/sad.wav", ref_params={"uploaded_voice": "x"})
    with pytest.raises(RequestInvalid) as info:
        await body(req(emotion=emotion))
    assert info.value.param == "emotion.audio"
    b = await body(req(emotion=emotion), allowed="/data")
    assert b["extra_params"]["emo_audio"] == "file:///data/sad.wav"  # type: ignore[index]


async def test_speed_on_25_is_native_within_half_to_double_and_refused_outside():
    assert (await body(req(speed=2.0)))["speed"] == 2.0
    for speed in (0.25, 2.5, 4.0):
        with pytest.raises(RequestInvalid) as info:
            await body(req(speed=speed))
        assert info.value.param == "speed"
    assert (await body(req(speed=4.0), version="2"))["speed"] == 4.0  # 2.0: the node time-stretches
    assert "speed" not in await body(req(speed=1.0))


async def test_client_language_is_checked_and_lower_cased():
    assert (await body(req(lang="YUE")))["extra_params"] == {"lang": "yue"}
    with pytest.raises(RequestInvalid) as info:
        await body(req(lang="1; drop"))
    assert info.value.param == "lang"


@pytest.mark.parametrize(("text", "lang"), [("Hello, world.", "en"), ("你好，世界！", "zh"), ("今日はいい天気ですね。", "ja"),
                                            ("我们用 GPU 跑 IndexTTS 模型", "zh"), ("Use the API 接口 today please", "en"),
                                            ("1234 5678", "en")])
def test_language_guess(text, lang):
    assert guess_lang(text) == lang
    assert request_lang(None, text) == lang


async def test_voice_forms_in_order_of_preference(tmp_path):
    data = write_wav(tmp_path / "a.wav", 2.0)
    both = {"ref_audio_file": str(tmp_path / "a.wav"), "uploaded_voice": "alice", "ref_audio": "http://h/x.wav"}
    b = await body(req(voice_params=both))
    assert b["ref_audio"] == "data:audio/wav;base64," + base64.b64encode(data).decode()
    assert "voice" not in b
    assert (await body(req(voice_params={"uploaded_voice": "alice"})))["voice"] == "alice"
    shared = {"spk_audio_path": "/srv/voices/bob.wav"}
    assert (await body(req(voice_params=shared), allowed="/srv/voices"))["ref_audio"] == "file:///srv/voices/bob.wav"
    with pytest.raises(ReferenceUnavailable):
        await body(req(voice_params=shared))  # no allowed_media_path: the node could not read it
    with pytest.raises(ReferenceUnavailable):
        await body(req(voice_params={"ref_audio": "/srv/voices/bob.wav"}))  # bare paths are refused by the node


def test_node_file_urls_stay_under_the_allowed_path():
    assert node_file_url("/srv/voices/a/../b.wav", "/srv/voices") == "file:///srv/voices/b.wav"
    assert node_file_url("/srv/voices/../etc/passwd", "/srv/voices") is None
    assert node_file_url("/srv/voicesX/a.wav", "/srv/voices/") is None
    assert node_file_url("relative.wav", "/srv") is None


async def test_reference_files_are_read_once_and_again_when_they_change(tmp_path):
    files = ReferenceFiles()
    path = tmp_path / "v.wav"
    first = write_wav(path, 2.0)
    url = await files.data_url(str(path))
    assert base64.b64decode(url.split(",", 1)[1]) == first
    os.utime(path, ns=(1, 1))  # same size and time as before would not count as a change...
    second = write_wav(path, 3.0)  # ...but a rewrite changes both
    assert base64.b64decode((await files.data_url(str(path))).split(",", 1)[1]) == second


@pytest.mark.parametrize("seconds", [0.5, 31.0])
async def test_reference_files_outside_1_to_30_seconds_are_refused(tmp_path, seconds):
    write_wav(tmp_path / "v.wav", seconds, rate=8000)
    with pytest.raises(ValueError, match="s long"):
        await ReferenceFiles().data_url(str(tmp_path / "v.wav"))


async def test_reference_files_that_are_not_audio_or_missing_are_refused(tmp_path):
    (tmp_path / "x.wav").write_text("not audio")
    with pytest.raises(ValueError, match="not audio"):
        await ReferenceFiles().data_url(str(tmp_path / "x.wav"))
    with pytest.raises(ValueError):
        await ReferenceFiles().data_url(str(tmp_path / "missing.wav"))


def test_the_config_loader_knows_the_pool_options_and_voice_keys(registry):
    from speech_router.config.loader import settings_from_dict
    from speech_router.errors import ConfigError

    good = {"pools": {"o": {"type": "vllm-omni", "endpoints": [{"url": "http://gpu:8091"}], "model": "IndexTTS-2.5",
                            "version": 2.5, "allowed_media_path": "/data/voices", "stream": False}},
            "models": {"m": ["o"]},
            "voices": {"a": {"ref_audio_file": "/v/a.wav"}, "b": {"ref_audio": "https://v/b.wav"},
                       "c": {"uploaded_voice": "c"}}}
    settings = settings_from_dict(good, registry=registry, env={})
    assert settings.pools["o"].options["version"] == 2.5  # YAML's number: the backend reads it as "2.5"
    bad = {**good, "pools": {"o": {"type": "vllm-omni", "endpoints": [{"url": "http://gpu:8091/v1"}],
                                   "versoin": "2"}},
           "voices": {"a": {"ref_audio_fil": "/v/a.wav"}}}
    with pytest.raises(ConfigError) as info:
        settings_from_dict(bad, registry=registry, env={})
    locs = {issue.loc for issue in info.value.issues}
    assert {"pools.o.versoin", "pools.o.endpoints[0].url", "voices.a.ref_audio_fil"} <= locs


def test_version_option_takes_yaml_numbers():
    from speech_router.backends.vllm_omni import VllmOmniBackend

    assert VllmOmniBackend.Options.model_validate({"version": 2.5}).version == "2.5"
    assert VllmOmniBackend.Options.model_validate({"version": 2}).version == "2"
    with pytest.raises(ValueError):
        VllmOmniBackend.Options.model_validate({"version": 3})
