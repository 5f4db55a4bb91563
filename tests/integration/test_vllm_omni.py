"""A pool of ``type: vllm-omni`` over real HTTP: emulated vllm-omni nodes behind a real router.

Every request mapping is checked on what the node received; audio is checked from what the client got
(the emulator's pitch names the reference file it was given, its length follows the text and speed).
"""

from __future__ import annotations

import base64
import json

import pytest

from speech_router.emulator import audio
from tests.client import call
from tests.conftest import openai_client
from tests.integration.omni import data_url, omni_config, reference_wav, spoken_hz, sse_events, wav_seconds

RATE = audio.INDEX_TTS_RATE


@pytest.fixture
def voice_files(tmp_path):
    """Two reference files on the router's host: ``alloy`` speaks, ``sad`` carries an emotion."""
    return {"alloy": reference_wav(tmp_path / "alloy.wav", hz=180), "sad": reference_wav(tmp_path / "sad.wav", hz=90),
            "dir": tmp_path}


def voices(files) -> dict:
    d = files["dir"]
    return {"alloy": {"ref_audio_file": str(d / "alloy.wav")}, "sad": {"ref_audio_file": str(d / "sad.wav")},
            "shared": {"spk_audio_path": str(d / "alloy.wav")}, "stored": {"uploaded_voice": "Narrator"},
            "broken": {"ref_audio_file": str(d / "missing.wav")}}


def breaker_of(url: str, node) -> tuple[str, float | None]:
    """The router's view of ``node``: breaker state and the share of its recent tries that failed (if shown)."""
    ep = next(e for e in call(url + "/health").json()["endpoints"] if e["name"] == node.name)
    breaker = ep["breaker"]
    if isinstance(breaker, str):  # the older /health shape: the state alone
        return breaker, None
    return breaker["state"], breaker.get("failure_ratio")


def speech(url: str, **body) -> object:
    return call(url + "/v1/audio/speech", {"model": "indextts", "voice": "alloy", "input": "Hello there.", **body})


def test_openai_request_sends_the_reference_inline_and_speaks_with_it(omni_nodes, router, voice_files):
    node = omni_nodes(name="a", version="2.5", model="IndexTeam/IndexTTS-2.5")
    srv = router(omni_config(node.url, voices=voices(voice_files), model="IndexTeam/IndexTTS-2.5"))
    resp = openai_client(srv.url).audio.speech.with_raw_response.create(
        model="indextts", voice="alloy", input="Hello from the fleet.", response_format="wav")
    rate, seconds = wav_seconds(resp.content)
    assert rate == RATE and seconds == pytest.approx(audio.duration_s("Hello from the fleet."), abs=0.01)
    body = node.bodies[-1]
    assert body["model"] == "IndexTeam/IndexTTS-2.5"
    assert base64.b64decode(body["ref_audio"].split(",", 1)[1]) == voice_files["alloy"]
    assert body["extra_params"] == {"lang": "en"}  # no language in OpenAI's API: guessed from the text
    assert body["response_format"] == "wav" and "stream" not in body
    assert resp.headers["x-speech-router-endpoint"] == node.name
    import numpy as np
    pcm = np.frombuffer(resp.content[44:], dtype="<i2")
    assert audio.dominant_hz(pcm, RATE) == pytest.approx(spoken_hz(voice_files["alloy"]), abs=2)


@pytest.mark.parametrize(("fmt", "asked"), [("wav", "wav"), ("flac", "flac"), ("mp3", "mp3"), ("pcm", "pcm"),
                                            ("opus", "wav"), ("aac", "wav")])
def test_formats_the_node_writes_pass_through_untouched(omni_nodes, router, voice_files, fmt, asked):
    node = omni_nodes(name="a")
    srv = router(omni_config(node.url, voices=voices(voice_files)))
    resp = speech(srv.url, response_format=fmt)
    assert resp.status == 200, resp.body
    assert node.bodies[-1]["response_format"] == asked
    direct = call(node.url + "/v1/audio/speech", node.bodies[-1])  # the same body straight to the node
    assert direct.status == 200
    if fmt in ("wav", "flac", "mp3"):
        assert resp.body == direct.body  # byte for byte: the router did not transcode
    elif fmt == "pcm":  # OpenAI's pcm is 24 kHz: the node's 22,050 Hz samples are resampled, nothing else
        assert len(resp.body) == pytest.approx(len(direct.body) * 24000 / RATE, abs=64)
    else:
        assert resp.headers["content-type"] == {"opus": "audio/ogg", "aac": "audio/aac"}[fmt]
        assert resp.body[:4] != b"RIFF" and len(resp.body) > 100


def test_native_emotion_controls_become_extra_params(omni_nodes, router, voice_files):
    node = omni_nodes(name="a")
    srv = router(omni_config(node.url, voices=voices(voice_files)))
    vec = [0, 0, 0.6, 0, 0, 0.3, 0, 0]
    r = call(srv.url + "/synthesize", {"text": "还是会想你", "voice": "alloy",
                                       "emotion": {"vector": vec, "weight": 0.7, "random": True}})
    assert r.status == 200, r.body
    assert node.bodies[-1]["extra_params"] == {"emo_vector": vec, "emo_alpha": 0.7, "use_random": True}
    assert call(srv.url + "/synthesize", {"text": "hi", "voice": "alloy", "emotion": {"text": "angry"}}).status == 200
    assert node.bodies[-1]["extra_params"] == {"use_emo_text": True, "emo_text": "angry"}
    assert call(srv.url + "/synthesize", {"text": "hi", "voice": "alloy", "emotion": {"audio": "sad"}}).status == 200
    emo = node.bodies[-1]["extra_params"]["emo_audio"]
    assert base64.b64decode(emo.split(",", 1)[1]) == voice_files["sad"]
    assert speech(srv.url, instructions="whisper sadly").status == 200  # OpenAI's instructions: emotion text
    assert node.bodies[-1]["extra_params"] == {"use_emo_text": True, "emo_text": "whisper sadly"}


def test_speed_on_25_is_native_and_refused_outside_its_range_before_any_node_sees_it(omni_nodes, router, voice_files):
    node = omni_nodes(name="a", version="2.5")
    srv = router(omni_config(node.url, voices=voices(voice_files), version="2.5"))
    resp = speech(srv.url, speed=2.0, response_format="wav")
    assert resp.status == 200 and node.bodies[-1]["speed"] == 2.0
    assert wav_seconds(resp.body)[1] == pytest.approx(audio.duration_s("Hello there.", 2.0), abs=0.01)
    sent = len(node.bodies)
    for speed in (0.25, 3.0):
        bad = speech(srv.url, speed=speed)
        assert bad.status == 400 and bad.json()["error"]["param"] == "speed"
    assert len(node.bodies) == sent


def test_speed_on_20_is_stretched_by_the_node_over_openais_whole_range(omni_nodes, router, voice_files):
    node = omni_nodes(name="a", version="2")
    srv = router(omni_config(node.url, voices=voices(voice_files), version="2"))
    resp = speech(srv.url, speed=4.0, response_format="wav")
    assert resp.status == 200 and node.bodies[-1]["speed"] == 4.0
    assert "extra_params" not in node.bodies[-1]  # 2.0 takes no language


def test_version_detected_from_the_served_name_sets_the_speed_range(omni_nodes, router, voice_files):
    node = omni_nodes(name="a", version="2.5", model="IndexTeam/IndexTTS-2.5")
    srv = router(omni_config(node.url, voices=voices(voice_files)))  # version: auto
    assert call(srv.url + "/health").json()["endpoints"][0]  # started, health-checked once
    bad = speech(srv.url, speed=3.0)
    assert bad.status == 400 and bad.json()["error"]["param"] == "speed"
    assert "(0.5-2)" in bad.json()["error"]["message"]  # refused from the pool's capabilities, before dispatch
    assert node.bodies == []


def test_native_route_language_reaches_25_nodes_and_a_bad_one_is_a_400(omni_nodes, router, voice_files):
    node = omni_nodes(name="a", version="2.5")
    srv = router(omni_config(node.url, voices=voices(voice_files), version="2.5"))
    assert call(srv.url + "/synthesize", {"text": "早晨", "voice": "alloy", "lang": "yue"}).status == 200
    assert node.bodies[-1]["extra_params"]["lang"] == "yue"
    assert call(srv.url + "/synthesize", {"text": "Hola", "voice": "alloy", "language": "Spanish"}).status == 200
    assert node.bodies[-1]["extra_params"]["lang"] == "spanish"  # vllm-omni maps language names itself
    assert call(srv.url + "/synthesize", {"text": "你好", "voice": "alloy"}).status == 200
    assert node.bodies[-1]["extra_params"]["lang"] == "zh"
    bad = call(srv.url + "/synthesize", {"text": "hi", "voice": "alloy", "lang": "1=1"})
    assert bad.status == 400 and bad.json()["error"]["param"] == "lang"


def test_node_400s_are_the_clients_and_never_trip_the_breaker(omni_nodes, router, voice_files):
    node = omni_nodes(name="a", version="2.5")
    srv = router(omni_config(node.url, voices=voices(voice_files), version="2.5"))
    for _ in range(6):  # a language this node does not know: its 400, passed on
        r = call(srv.url + "/synthesize", {"text": "hi", "voice": "alloy", "lang": "klingon"})
        assert r.status == 400
        error = r.json()["error"]
        assert error["code"] == "backend_rejected" and "Unsupported IndexTTS 2.5 language" in error["message"]
    assert len(node.bodies) == 6  # not retried: another node would refuse it too
    assert breaker_of(srv.url, node) in (("closed", 0.0), ("closed", None))
    assert speech(srv.url).status == 200


def test_an_uploaded_voice_is_named_and_one_the_node_lacks_is_a_400(omni_nodes, router, voice_files):
    node = omni_nodes(name="a")
    srv = router(omni_config(node.url, voices=voices(voice_files)))
    r = speech(srv.url, voice="stored")
    assert r.status == 400 and "uploaded audio voice" in r.json()["error"]["message"]
    assert node.bodies[-1]["voice"] == "Narrator" and "ref_audio" not in node.bodies[-1]
    node.app.state.voices.add("narrator", "ok", voice_files["sad"], "sad.wav", "audio/wav")  # case-insensitive
    r = speech(srv.url, voice="stored", response_format="wav")
    assert r.status == 200
    import numpy as np
    assert audio.dominant_hz(np.frombuffer(r.body[44:], dtype="<i2"), RATE) == pytest.approx(
        spoken_hz(voice_files["sad"]), abs=2)


def test_a_shared_voice_directory_is_read_by_the_node_as_file_urls(omni_nodes, router, voice_files):
    node = omni_nodes(name="a", allowed_media_path=str(voice_files["dir"]))
    srv = router(omni_config(node.url, voices=voices(voice_files), allowed_media_path=str(voice_files["dir"])))
    assert speech(srv.url, voice="shared").status == 200
    assert node.bodies[-1]["ref_audio"] == f"file://{voice_files['dir']}/alloy.wav"
    without = router(omni_config(node.url, voices=voices(voice_files)))  # the pool does not know the shared path
    r = speech(without.url, voice="shared")
    assert r.status == 400 and r.json()["error"]["param"] == "voice"


def test_an_unusable_reference_file_is_the_operators_problem_not_the_nodes(omni_nodes, router, voice_files):
    node = omni_nodes(name="a")
    srv = router(omni_config(node.url, voices=voices(voice_files)))
    for _ in range(6):
        r = speech(srv.url, voice="broken")
        assert r.status == 503 and r.json()["error"]["code"] == "voice_reference_unavailable"
        assert str(voice_files["dir"]) not in r.body.decode()  # the router's paths stay private
    assert node.bodies == []
    assert breaker_of(srv.url, node) in (("closed", 0.0), ("closed", None))


def test_a_failing_node_is_retried_elsewhere_and_counted(omni_nodes, router, voice_files):
    bad, good = omni_nodes(name="bad", fail=True), omni_nodes(name="good")
    srv = router(omni_config(bad.url, good.url, voices=voices(voice_files), balancer={"policy": "round_robin"}))
    for _ in range(4):
        r = speech(srv.url)
        assert r.status == 200 and r.headers["x-speech-router-endpoint"] == good.name
    assert bad.bodies  # it was tried, answered 500, and the request went on
    ratio = breaker_of(srv.url, bad)[1]
    assert ratio is None or ratio > 0  # ...and its failures count against it (unlike a 400)


def test_a_model_mismatch_is_a_configuration_failure_with_a_clear_message(omni_nodes, router, voice_files):
    node = omni_nodes(name="a", model="IndexTeam/IndexTTS-2")
    srv = router(omni_config(node.url, voices=voices(voice_files), model="IndexTTS-2.5",
                             health_check={"enabled": False}, retry={"max_attempts": 1}))
    r = speech(srv.url)
    assert r.status == 502 and "served name" in r.json()["error"]["message"]
    checked = router(omni_config(node.url, voices=voices(voice_files), model="IndexTTS-2.5"))
    ep = call(checked.url + "/health").json()["endpoints"][0]
    assert "not 'IndexTTS-2.5'" in json.dumps(ep)


@pytest.mark.parametrize("knob", ["truncate", "garbage"])
def test_broken_bodies_are_failures_retried_on_another_node(omni_nodes, router, voice_files, knob):
    bad, good = omni_nodes(name="bad", **{knob: True}), omni_nodes(name="good")
    srv = router(omni_config(bad.url, good.url, voices=voices(voice_files), balancer={"policy": "round_robin"}))
    for _ in range(3):
        r = speech(srv.url, response_format="wav")
        assert r.status == 200 and wav_seconds(r.body)[1] > 0.3


def test_streaming_pools_ask_raw_pcm_and_frame_wav_themselves(omni_nodes, router, voice_files):
    node = omni_nodes(name="a")
    srv = router(omni_config(node.url, voices=voices(voice_files), stream=True))
    r = speech(srv.url, response_format="wav")
    assert r.status == 200
    assert {k: node.bodies[-1][k] for k in ("stream", "stream_format", "response_format")} == \
        {"stream": True, "stream_format": "audio", "response_format": "pcm"}
    whole = call(srv.url + "/synthesize", {"text": "Hello there.", "voice": "alloy", "format": "wav"})
    assert whole.status == 200
    size = int.from_bytes(whole.body[40:44], "little")
    assert size == len(whole.body) - 44  # a whole file has its real sizes, not the stream's "unknown"
    sse = speech(srv.url, response_format="wav", stream_format="sse")
    events = sse_events(sse.body)
    assert events[-1]["type"] == "speech.audio.done" and len(events) >= 2


def test_a_stream_cut_before_any_audio_is_retried_on_another_node(omni_nodes, router, voice_files):
    bad, good = omni_nodes(name="bad", fail=True), omni_nodes(name="good")
    srv = router(omni_config(bad.url, good.url, voices=voices(voice_files), stream=True,
                             balancer={"policy": "round_robin"}))
    for _ in range(3):
        r = speech(srv.url, response_format="wav")
        assert r.status == 200 and r.headers["x-speech-router-endpoint"] == good.name
    assert bad.bodies and bad.bodies[-1]["stream"] is True


def test_long_text_fans_out_across_a_vllm_omni_pool_and_keeps_its_full_length(omni_nodes, router, voice_files):
    text = ("The first sentence is here. The second one follows it closely. A third sentence ends the story, "
            "and a fourth brings it home.")
    a, b = omni_nodes(name="a", version="2.5", mel_cap_s=2.0), omni_nodes(name="b", version="2.5", mel_cap_s=2.0)
    srv = router(omni_config(a.url, b.url, voices=voices(voice_files), version="2.5", fanout=True))
    r = call(srv.url + "/synthesize", {"text": text, "voice": "alloy", "format": "wav"})
    assert r.status == 200
    segments = int(r.headers["x-speech-router-segments"])
    assert segments > 1 and len(a.bodies) + len(b.bodies) == segments
    assert a.bodies and b.bodies  # spread over both nodes
    spoken = wav_seconds(r.body)[1]
    direct = call(a.url + "/v1/audio/speech", {"input": text, "ref_audio": data_url(voice_files["alloy"])})
    assert wav_seconds(direct.body)[1] == pytest.approx(2.0, abs=0.01)  # one long request: squeezed (#7378)
    assert spoken > audio.duration_s(text) * 0.9  # fanned out: every sentence at its own length


def test_api_key_env_is_sent_as_bearer(omni_nodes, router, voice_files, monkeypatch):
    node = omni_nodes(name="a", api_key="s3cret")
    srv = router(omni_config(node.url, voices=voices(voice_files), api_key_env="OMNI_KEY"), env={"OMNI_KEY": "s3cret"})
    monkeypatch.setenv("OMNI_KEY", "s3cret")
    assert speech(srv.url).status == 200
    assert node.app.state.emulator.headers[-1]["authorization"] == "Bearer s3cret"
