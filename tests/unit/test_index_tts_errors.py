"""Which index-tts-vllm 500s are a client's mistake: read from real tracebacks (made by the emulator's engine)."""

from __future__ import annotations

import json
import traceback

import pytest

from speech_router.backends.index_tts_errors import EMO_VEC_SUM_ERROR, client_mistake, last_exception
from speech_router.emulator.engine import OOM_MESSAGE, OutOfMemoryError
from speech_router.types import Emotion, EmotionMethod, SynthesisRequest


def node_answer(exc: BaseException) -> str:
    """The body api_server_v2.py sends for an exception: {"status": "error", "error": <traceback>}."""
    try:
        raise exc
    except BaseException as caught:
        text = "".join(traceback.format_exception(type(caught), caught, caught.__traceback__))
    return json.dumps({"status": "error", "error": text})


def voice_request(**kw) -> SynthesisRequest:
    return SynthesisRequest(text="hello", model="m", voice="alloy", voice_params={"spk_audio_path": "/v/alloy.wav"},
                            **kw)


def test_a_missing_speaker_reference_is_the_voices_problem_without_the_nodes_path():
    body = node_answer(FileNotFoundError(2, "No such file or directory", "/v/alloy.wav"))
    rejected = client_mistake(500, body, voice_request(), "gpu-1")
    assert rejected is not None and rejected.param == "voice" and rejected.try_elsewhere
    assert "voice 'alloy'" in rejected.message and "gpu-1" in rejected.message and "/v/" not in rejected.message


def test_a_missing_emotion_reference_names_the_emotion():
    emotion = Emotion(method=EmotionMethod.REFERENCE_AUDIO, ref_path="/v/sad.wav")
    body = node_answer(FileNotFoundError(2, "No such file or directory", "/v/sad.wav"))
    rejected = client_mistake(500, body, voice_request(emotion=emotion), "gpu-1")
    assert rejected is not None and rejected.param == "emotion"


def test_tts_url_bodies_name_the_path_the_client_sent():
    request = SynthesisRequest(text="hi", model="m", passthrough={"text": "hi", "spk_audio_path": "/mine.wav"})
    body = node_answer(FileNotFoundError(2, "No such file or directory", "/mine.wav"))
    rejected = client_mistake(500, body, request, "gpu-1")
    assert rejected is not None and rejected.param == "spk_audio_path" and "/mine.wav" in rejected.message


ODD = ["it's.wav", 'say "hi".wav', "back\\slash.wav", "tab\there.wav", "new\nline.wav", "zero\u200bwidth.wav",
       "'\"\\both.wav", "ünï 😀.wav", "bell\x07.wav"]


@pytest.mark.parametrize("name", ODD)
def test_a_missing_reference_is_recognised_whatever_characters_its_path_holds(name):
    """The node quotes the path with Python's repr: escapes and the other quote must not hide it."""
    path = "/v/" + name
    request = SynthesisRequest(text="hi", model="m", passthrough={"text": "hi", "spk_audio_path": path})
    rejected = client_mistake(500, node_answer(FileNotFoundError(2, "No such file or directory", path)), request, "g")
    assert rejected is not None and rejected.param == "spk_audio_path"
    voiced = SynthesisRequest(text="hi", model="m", voice="v", voice_params={"spk_audio_path": path})
    assert client_mistake(500, node_answer(FileNotFoundError(2, "x", path)), voiced, "g").param == "voice"
    other = SynthesisRequest(text="hi", model="m", passthrough={"text": "hi", "spk_audio_path": path + "x"})
    assert client_mistake(500, node_answer(FileNotFoundError(2, "x", path)), other, "g") is None


def test_a_missing_file_the_request_did_not_name_is_the_nodes_problem():
    body = node_answer(FileNotFoundError(2, "No such file or directory", "/models/gpt.pth"))
    assert client_mistake(500, body, voice_request(), "gpu-1") is None


@pytest.mark.parametrize("body,param", [
    (node_answer(KeyError("spk_audio_path")), "spk_audio_path"),
    (json.dumps({"status": "error", "error": EMO_VEC_SUM_ERROR + "请调整后重试。"}), "emotion"),
    (node_answer(ValueError("text is empty after normalization")), "input"),
])
def test_missing_fields_emotion_vectors_and_refused_text_are_400s_tried_nowhere_else(body, param):
    rejected = client_mistake(500, body, voice_request(), "gpu-1")
    assert rejected is not None and rejected.param == param and not rejected.try_elsewhere


def test_out_of_memory_and_other_failures_stay_the_nodes():
    assert client_mistake(500, node_answer(OutOfMemoryError(OOM_MESSAGE)), voice_request(), "gpu-1") is None
    assert client_mistake(500, node_answer(RuntimeError("CUDA error")), voice_request(), "gpu-1") is None
    assert client_mistake(502, "Bad Gateway", voice_request(), "gpu-1") is None


def test_the_last_line_of_a_traceback_is_read_with_the_module_left_out():
    assert last_exception("Traceback ...\n  File x\ntorch.OutOfMemoryError: CUDA out of memory") == \
        ("OutOfMemoryError", "CUDA out of memory")
    assert last_exception("not a traceback") == ("", "not a traceback")
